"""Start and follow a batch run (Step Functions Distributed Map), then summarize its results.

    python -m classifier_client batch s3://<input bucket>/photos/ --stage dev
    python -m classifier_client batch s3://<input bucket>/manifests/list.jsonl --stage dev
    python -m classifier_client batch --follow <run id>   |   --redrive <run id>

Where things are comes from `cdk deploy --outputs-file cdk-outputs-<stage>.json` (the stack's
Batch* outputs). Progress is the Map Run's own counters (DescribeMapRun); the summary is read from
the run's JSON Lines results under s3://<output bucket>/results/<run id>/. See docs/batch.md.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from .client import ClassifierError

RESULTS_PREFIX = "results/"
MANIFESTS_DIR = "manifests/"
FINAL_STATUSES = ("SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED", "PENDING_REDRIVE")
_S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<key>.*))?$")
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
_STATES_ARN = re.compile(
    r"^arn:aws[a-z-]*:states:(?P<region>[a-z0-9-]+):\d{12}:stateMachine:(?P<name>[^:]+)$"
)


@dataclass(frozen=True)
class BatchTarget:
    """The deployed batch stack: state machine, buckets, the prefix runs may read."""

    state_machine_arn: str
    input_bucket: str
    input_prefix: str  # "" = the whole input bucket
    output_bucket: str
    stack: str = ""

    @property
    def region(self) -> str:
        match = _STATES_ARN.match(self.state_machine_arn)
        if not match:
            raise ClassifierError(f"not a state machine ARN: {self.state_machine_arn}")
        return match["region"]

    @property
    def name(self) -> str:
        match = _STATES_ARN.match(self.state_machine_arn)
        assert match
        return match["name"]

    def execution_arn(self, run_id: str) -> str:
        partition = self.state_machine_arn.split(":", 2)[1]
        account = self.state_machine_arn.split(":")[4]
        return f"arn:{partition}:states:{self.region}:{account}:execution:{self.name}:{run_id}"


def read_batch_outputs(path: str | Path, stack: str | None = None) -> BatchTarget:
    """The Batch* outputs of one stack in a `cdk deploy --outputs-file` JSON."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ClassifierError(
            f"outputs file not found: {path} (written by `make deploy STAGE=<stage>`)"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ClassifierError(f"cannot read outputs file {path}: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ClassifierError(f"{path} is not a `cdk deploy --outputs-file` JSON")
    candidates = {name: outs for name, outs in data.items() if "BatchStateMachineArn" in outs}
    if stack is not None:
        if stack not in candidates:
            raise ClassifierError(f"stack {stack!r} in {path} has no batch outputs")
        chosen = stack
    elif len(candidates) == 1:
        chosen = next(iter(candidates))
    elif not candidates:
        raise ClassifierError(
            f"no batch outputs (BatchStateMachineArn) in {path}: is batch enabled in the stage?"
        )
    else:
        raise ClassifierError(f"{path} has several batch stacks ({', '.join(candidates)}): --stack")
    outs = candidates[chosen]
    try:
        prefix = str(outs["BatchInputPrefix"])
        target = BatchTarget(
            state_machine_arn=str(outs["BatchStateMachineArn"]),
            input_bucket=str(outs["BatchInputBucketName"]),
            input_prefix="" if prefix == "/" else prefix,
            output_bucket=str(outs["BatchOutputBucketName"]),
            stack=chosen,
        )
    except KeyError as exc:
        raise ClassifierError(f"stack {chosen!r} in {path} lacks the output {exc}") from exc
    _ = target.region  # validates the ARN
    return target


def parse_s3_uri(uri: str) -> tuple[str, str]:
    match = _S3_URI.match(uri)
    if not match:
        raise ClassifierError(f"not an S3 URI: {uri!r} (expected s3://bucket/prefix/)")
    return match["bucket"], match["key"] or ""


def execution_input(uri: str, target: BatchTarget) -> dict[str, str]:
    """The state machine's input for an S3 prefix or a .jsonl/.csv manifest, checked against
    what the stack lets a run read (IAM would refuse anything else mid-run)."""
    bucket, key = parse_s3_uri(uri)
    if bucket != target.input_bucket:
        raise ClassifierError(
            f"the batch stack reads s3://{target.input_bucket}/ only (IAM); copy the images "
            f"there: aws s3 sync <dir> s3://{target.input_bucket}/{target.input_prefix}<name>/"
        )
    lowered = key.lower()
    if lowered.endswith((".jsonl", ".csv")):
        manifests = f"{target.input_prefix}{MANIFESTS_DIR}"
        if not key.startswith(manifests):
            raise ClassifierError(f"manifests must be under s3://{bucket}/{manifests}")
        return {"source": "jsonl" if lowered.endswith(".jsonl") else "csv", "manifest_key": key}
    if not key.startswith(target.input_prefix):
        raise ClassifierError(f"a run may only read s3://{bucket}/{target.input_prefix}...")
    if key and not key.endswith("/"):
        raise ClassifierError(f"{uri} is neither a prefix ending in '/' nor a .jsonl/.csv manifest")
    return {"source": "prefix", "prefix": key}


def new_run_id(now: datetime | None = None) -> str:
    """The execution name: sortable, unique, and usable in an S3 key."""
    now = now or datetime.now(UTC)
    return f"batch-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


# ---------------------------------------------------------------- following a run


@dataclass
class Progress:
    status: str
    map_run_status: str | None = None
    items: dict[str, int] = field(default_factory=dict)
    batches: dict[str, int] = field(default_factory=dict)

    def line(self, width: int = 30) -> str:
        if self.map_run_status is None:
            return f"  {self.status.lower()}: listing the input..."
        total = self.items.get("total", 0)
        done = sum(self.items.get(k, 0) for k in ("succeeded", "failed", "timedOut", "aborted"))
        filled = int(width * done / total) if total else 0
        bar = "#" * filled + "-" * (width - filled)
        b = self.batches
        failed = b.get("failed", 0) + b.get("timedOut", 0) + b.get("aborted", 0)
        return (
            f"  [{bar}] {done:,}/{total:,} images  batches: {b.get('succeeded', 0):,} done, "
            f"{b.get('running', 0):,} running, {failed:,} failed"
        )


def _counts(raw: Mapping[str, Any]) -> dict[str, int]:
    return {k: int(v) for k, v in raw.items() if isinstance(v, int)}


def progress(sfn: Any, execution_arn: str) -> tuple[Progress, dict[str, Any]]:
    """The execution's status and, once its Map Run started, the Map Run's counters."""
    execution = sfn.describe_execution(executionArn=execution_arn)
    runs = sfn.list_map_runs(executionArn=execution_arn).get("mapRuns", [])
    state = Progress(status=execution["status"])
    if runs:
        # One Map Run per execution (one map state runs); a redrive continues the same one.
        run = sfn.describe_map_run(mapRunArn=runs[0]["mapRunArn"])
        state.map_run_status = run["status"]
        state.items = _counts(run.get("itemCounts", {}))
        state.batches = _counts(run.get("executionCounts", {}))
    return state, execution


def follow(
    sfn: Any,
    execution_arn: str,
    *,
    poll_s: float = 5.0,
    on_progress: Callable[[Progress], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[Progress, dict[str, Any]]:
    """Poll until the execution ends; returns the last progress and DescribeExecution."""
    while True:
        state, execution = progress(sfn, execution_arn)
        if on_progress is not None:
            on_progress(state)
        if execution["status"] in FINAL_STATUSES:
            return state, execution
        sleep(poll_s)


# ---------------------------------------------------------------- results


@dataclass
class Summary:
    images: int = 0
    predicted: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    files: int = 0
    keys: Counter[str] = field(default_factory=Counter)

    def add(self, other: Summary) -> None:
        self.images += other.images
        self.predicted += other.predicted
        self.labels.update(other.labels)
        self.errors.update(other.errors)
        self.files += other.files
        self.keys.update(other.keys)

    @property
    def duplicate_keys(self) -> int:
        return sum(n - 1 for n in self.keys.values() if n > 1)


def _summarize_text(text: str) -> Summary:
    summary = Summary(files=1)
    for raw_line in text.splitlines():
        if not raw_line.strip():
            continue
        line = json.loads(raw_line)
        summary.images += 1
        summary.keys[str(line.get("key"))] += 1
        if "error" in line:
            summary.errors[str(line["error"].get("code"))] += 1
        elif line.get("predictions"):
            summary.predicted += 1
            summary.labels[str(line["predictions"][0]["label"])] += 1
    return summary


def result_keys(s3: Any, bucket: str, run_id: str) -> Iterator[str]:
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=f"{RESULTS_PREFIX}{run_id}/"):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith(".jsonl"):
                yield obj["Key"]


def summarize(s3: Any, bucket: str, run_id: str, *, threads: int = 8) -> Summary:
    """Counts by top-1 label and by error code over every result line of the run."""

    def one(key: str) -> Summary:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        return _summarize_text(body.read().decode("utf-8"))

    total = Summary()
    with ThreadPoolExecutor(threads) as pool:
        for part in pool.map(one, result_keys(s3, bucket, run_id)):
            total.add(part)
    return total


def map_results(s3: Any, execution: Mapping[str, Any]) -> dict[str, Any] | None:
    """Where Step Functions wrote the children's results (ResultWriter) and what it says."""
    try:
        output = json.loads(execution.get("output") or "{}")
        details = output["map"]["ResultWriterDetails"]
        bucket, key = details["Bucket"], details["Key"]
    except (ValueError, KeyError, TypeError):
        return None
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    files = manifest.get("ResultFiles", {})
    return {
        "manifest": f"s3://{bucket}/{key}",
        "failed_files": [f["Key"] for f in files.get("FAILED", [])],
        "pending_files": [f["Key"] for f in files.get("PENDING", [])],
    }


# ---------------------------------------------------------------- the command


@dataclass
class AwsClients:
    stepfunctions: Any
    s3: Any


def default_clients(region: str) -> AwsClients:
    try:
        import boto3
    except ImportError as exc:
        raise ClassifierError("batch needs boto3: pip install boto3") from exc
    return AwsClients(boto3.client("stepfunctions", region_name=region), boto3.client("s3"))


def _outputs_path(stage: str | None, outputs_file: Path | None) -> Path:
    if outputs_file is not None:
        return outputs_file
    if stage is None:
        raise ClassifierError(
            "pass --stage dev|prod (reads cdk-outputs-<stage>.json) or --outputs-file"
        )
    return Path(f"cdk-outputs-{stage}.json")


def run_command(
    args: Any,
    out: TextIO,
    err: TextIO | None = None,
    clients: Callable[[str], AwsClients] = default_clients,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """`batch`: start (or --follow/--redrive) a run, show progress, print results and summary."""
    err = err or sys.stderr
    target = read_batch_outputs(_outputs_path(args.stage, args.outputs_file), args.stack)
    aws = clients(target.region)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        if args.follow or args.redrive:
            run_id = args.follow or args.redrive
            if not _RUN_ID.match(run_id):
                raise ClassifierError(f"not a run id: {run_id!r}")
            execution_arn = target.execution_arn(run_id)
            if args.redrive:
                aws.stepfunctions.redrive_execution(executionArn=execution_arn)
                print(f"redriving {run_id}: only unsuccessful batches run again", file=err)
        else:
            if not args.uri:
                raise ClassifierError("pass an s3:// prefix or manifest, or --follow/--redrive RUN")
            payload = execution_input(args.uri, target)
            run_id = args.run_id or new_run_id()
            if not _RUN_ID.match(run_id):
                raise ClassifierError("--run-id must be 1-80 letters, digits, '-' or '_'")
            started = aws.stepfunctions.start_execution(
                stateMachineArn=target.state_machine_arn, name=run_id, input=json.dumps(payload)
            )
            execution_arn = started["executionArn"]
            print(f"started run {run_id} over {args.uri}", file=err)
        if args.no_wait:
            print(json.dumps({"run_id": run_id, "execution_arn": execution_arn}), file=out)
            return 0

        def show(state: Progress) -> None:
            if not args.quiet:
                print(state.line(), file=err, flush=True)

        state, execution = follow(
            aws.stepfunctions, execution_arn, poll_s=args.poll, on_progress=show, sleep=sleep
        )
        results = map_results(aws.s3, execution) if execution["status"] == "SUCCEEDED" else None
        summary = None if args.no_summary else summarize(aws.s3, target.output_bucket, run_id)
    except (BotoCoreError, ClientError) as exc:
        raise ClassifierError(f"AWS call failed: {exc}") from exc

    report = {
        "run_id": run_id,
        "status": execution["status"],
        "execution_arn": execution_arn,
        "predictions": f"s3://{target.output_bucket}/{RESULTS_PREFIX}{run_id}/",
        "map_results": results,
        "images": state.items,
        "batches": state.batches,
    }
    if summary is not None:
        report["summary"] = {
            "images": summary.images,
            "predicted": summary.predicted,
            "errors": dict(summary.errors.most_common()),
            "labels": dict(summary.labels.most_common()),
            "result_files": summary.files,
            "duplicate_keys": summary.duplicate_keys,
        }
    if execution["status"] != "SUCCEEDED":
        report["error"] = execution.get("error")
        report["cause"] = execution.get("cause")
    print(json.dumps(report, indent=2) if args.json else format_report(report, args.top), file=out)
    return 0 if execution["status"] == "SUCCEEDED" else 1


def format_report(report: dict[str, Any], top: int = 10) -> str:
    lines = [f"run {report['run_id']}: {report['status']}"]
    batches = report.get("batches") or {}
    if batches:
        lines.append(
            f"  batches: {batches.get('total', 0):,} total, {batches.get('succeeded', 0):,} "
            f"succeeded, {batches.get('failed', 0) + batches.get('timedOut', 0):,} failed"
        )
    lines.append(f"  predictions (JSON Lines): {report['predictions']}")
    results = report.get("map_results")
    if results:
        lines.append(f"  map run results: {results['manifest']}")
        if results["failed_files"]:
            lines.append(f"    failed batches listed in: {', '.join(results['failed_files'])}")
    summary = report.get("summary")
    if summary is not None:
        lines.append(
            f"  images: {summary['images']:,} in {summary['result_files']:,} files, "
            f"{summary['predicted']:,} predicted, {sum(summary['errors'].values()):,} errors"
        )
        if summary["errors"]:
            lines.append("  errors by code:")
            lines += [f"    {code:<28} {n:>10,}" for code, n in summary["errors"].items()]
        if summary["labels"]:
            shown = list(summary["labels"].items())[:top]
            lines.append(f"  top-1 labels (most frequent {len(shown)}):")
            lines += [f"    {label[:28]:<28} {n:>10,}" for label, n in shown]
    if report["status"] != "SUCCEEDED":
        lines.append(f"  {report.get('error')}: {report.get('cause')}")
        if report["status"] in ("FAILED", "TIMED_OUT", "ABORTED"):
            lines.append(
                f"  redrive (re-runs only unsuccessful batches): python -m classifier_client "
                f"batch --redrive {report['run_id']} --stage <stage>"
            )
            lines.append(
                f"    or: aws stepfunctions redrive-execution --execution-arn "
                f"{report['execution_arn']}"
            )
    return "\n".join(lines)
