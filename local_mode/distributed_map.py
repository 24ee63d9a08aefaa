"""What a Step Functions Distributed Map does around the batch worker, done locally.

No local tool runs a batched Distributed Map (moto's and LocalStack's interpreters reject
ItemBatcher), so `make batch-demo` plays the map's part itself, as AWS documents it:

* ItemReader ``arn:aws:states:::s3:listObjectsV2``: every object under the prefix becomes one item
  ``{"Etag", "Key", "LastModified", "Size", "StorageClass"}`` (LastModified in epoch seconds);
* ItemBatcher: items in order, at most MaxItemsPerBatch per batch and MaxInputBytesPerBatch of
  JSON per batch, each child input ``{"Items": [...], "BatchInput": {...}}``;
* ResultWriter: ``<Prefix>/<map run id>/manifest.json`` listing ``SUCCEEDED_<n>.json`` /
  ``FAILED_<n>.json`` (arrays of child executions with Input, Output, Status), and the map
  state's output ``{"MapRunArn", "ResultWriterDetails": {"Bucket", "Key"}}``.

The settings (batch size, BatchInput, result prefix) and the batch function's environment are
read from the synthesized stack (templates/ResnetServingDev.template.json), like the local
gateway mirrors the API from it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .apispec import DEFAULT_STACK, LOCAL_OVERRIDES, TemplateError, template_path

BATCH_COMMAND = ["batch.handler"]


@dataclass(frozen=True)
class BatchSpec:
    """The batch part of the stack, as the template deploys it."""

    max_items_per_batch: int
    max_input_bytes_per_batch: int
    batch_input: dict[str, str]  # BatchInput as written in the ASL ("run_id.$": "$$...")
    results_prefix: str  # ResultWriter Prefix
    environment: dict[str, str]  # the batch function's variables, minus LOCAL_OVERRIDES
    memory_mb: int
    timeout_s: int
    source: str


def _join(value: Any) -> str:
    """A Fn::Join of the definition string, tokens shown as <Ref:X> / <GetAtt:X.Y>."""
    parts = value["Fn::Join"][1] if isinstance(value, dict) else [value]
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        elif "Ref" in part:
            out.append(f"<Ref:{part['Ref']}>")
        else:
            out.append(f"<GetAtt:{'.'.join(part['Fn::GetAtt'])}>")
    return "".join(out)


def load_batch_spec(path: Path | None = None, stack: str = DEFAULT_STACK) -> BatchSpec:
    path = path or template_path(stack)
    try:
        template = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise TemplateError(f"{path} not found (`make templates` writes it)") from exc
    resources = template.get("Resources", {})
    functions = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::Lambda::Function"
        and r["Properties"].get("ImageConfig", {}).get("Command") == BATCH_COMMAND
    ]
    machines = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::StepFunctions::StateMachine"
    ]
    if len(functions) != 1 or len(machines) != 1:
        raise TemplateError(f"{path} has no batch predictions (is batch_enabled on?)")
    function = functions[0]
    definition = json.loads(_join(machines[0]["DefinitionString"]))
    listed = definition["States"].get("ListedObjects")
    if listed is None or "ItemBatcher" not in listed or "ResultWriter" not in listed:
        raise TemplateError(f"{path}: the ListedObjects map lacks ItemBatcher or ResultWriter")
    variables = function.get("Environment", {}).get("Variables", {})
    return BatchSpec(
        max_items_per_batch=int(listed["ItemBatcher"]["MaxItemsPerBatch"]),
        max_input_bytes_per_batch=int(listed["ItemBatcher"].get("MaxInputBytesPerBatch", 262144)),
        batch_input=dict(listed["ItemBatcher"]["BatchInput"]),
        results_prefix=str(listed["ResultWriter"]["Parameters"]["Prefix"]),
        environment={
            k: v for k, v in variables.items() if isinstance(v, str) and k not in LOCAL_OVERRIDES
        },
        memory_mb=int(function["MemorySize"]),
        timeout_s=int(function["Timeout"]),
        source=str(path),
    )


def list_items(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """The items S3ObjectsItemReader produces: one per object, in ListObjectsV2 order."""
    items = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            items.append(
                {
                    "Etag": obj["ETag"],
                    "Key": obj["Key"],
                    "LastModified": int(obj["LastModified"].timestamp()),
                    "Size": obj["Size"],
                    "StorageClass": obj.get("StorageClass", "STANDARD"),
                }
            )
    return items


def batches(
    items: list[dict[str, Any]], *, max_items: int, max_bytes: int
) -> Iterator[list[dict[str, Any]]]:
    """ItemBatcher: consecutive items, bounded in count and in serialized bytes."""
    batch: list[dict[str, Any]] = []
    size = 2  # "[]"
    for item in items:
        item_bytes = len(json.dumps(item, separators=(",", ":")).encode()) + 1
        if batch and (len(batch) >= max_items or size + item_bytes > max_bytes):
            yield batch
            batch, size = [], 2
        batch.append(item)
        size += item_bytes
    if batch:
        yield batch


def resolve_batch_input(template_input: dict[str, str], values: dict[str, str]) -> dict[str, str]:
    """BatchInput with the template's tokens and paths replaced by this run's values.

    ``values`` maps what the template refers to ("<Ref:BatchInputBucket>", "$$.Execution.Name")
    to the local value.
    """
    resolved = {}
    for key, value in template_input.items():
        name = key.removesuffix(".$")
        if value not in values and (key.endswith(".$") or value.startswith("<")):
            raise TemplateError(f"BatchInput {key}: no local value for {value}")
        resolved[name] = values.get(value, value)
    return resolved


@dataclass(frozen=True)
class ChildRun:
    """One child workflow: its input (the batch), its output or error, when it ran."""

    name: str
    input: dict[str, Any]
    output: dict[str, Any] | None
    error: str | None
    started: datetime
    stopped: datetime


def write_results(
    s3: Any,
    *,
    bucket: str,
    prefix: str,
    map_run_arn: str,
    state_machine_arn: str,
    children: list[ChildRun],
) -> dict[str, Any]:
    """ResultWriter's layout; returns the map state's output."""
    map_run_id = map_run_arn.rsplit(":", 1)[-1]
    base = f"{prefix}/{map_run_id}"
    files: dict[str, list[dict[str, Any]]] = {"FAILED": [], "PENDING": [], "SUCCEEDED": []}
    for status in ("SUCCEEDED", "FAILED"):
        runs = [c for c in children if (c.error is None) == (status == "SUCCEEDED")]
        if not runs:
            continue
        body = json.dumps(
            [
                {
                    "ExecutionArn": f"{map_run_arn}:{c.name}",
                    "Input": json.dumps(c.input),
                    "InputDetails": {"Included": True},
                    "Name": c.name,
                    "Output": json.dumps(c.output) if c.output is not None else None,
                    "OutputDetails": {"Included": True},
                    "RedriveCount": 0,
                    "RedriveStatus": "NOT_REDRIVABLE",
                    "StartDate": c.started.isoformat(),
                    "StateMachineArn": state_machine_arn,
                    "Status": status,
                    "StopDate": c.stopped.isoformat(),
                    **({"Error": c.error} if c.error else {}),
                }
                for c in runs
            ]
        ).encode()
        key = f"{base}/{status}_0.json"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        files[status].append({"Key": key, "Size": len(body)})
    manifest_key = f"{base}/manifest.json"
    manifest = {"DestinationBucket": bucket, "MapRunArn": map_run_arn, "ResultFiles": files}
    s3.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(manifest).encode())
    return {
        "MapRunArn": map_run_arn,
        "ResultWriterDetails": {"Bucket": bucket, "Key": manifest_key},
    }


def local_arns(run_id: str, label: str = "ListedObjects") -> tuple[str, str, str]:
    """Look-alike ARNs (account 000000000000) for the state machine, execution and Map Run."""
    machine = "arn:aws:states:us-east-1:000000000000:stateMachine:LocalBatch"
    execution = f"arn:aws:states:us-east-1:000000000000:execution:LocalBatch:{run_id}"
    map_run = f"arn:aws:states:us-east-1:000000000000:mapRun:LocalBatch/{label}:{uuid.uuid4()}"
    return machine, execution, map_run


def now() -> datetime:
    return datetime.now(UTC)
