"""Small helpers over raw template JSON, shared by the infra tests."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stacks.app_builder import add_stages, new_app
from stacks.config import STAGES
from stacks.model_source import ModelSource
from stacks.serving_stack import ServingStack

FAKE_MODEL_BYTES = b"not an onnx graph, just bytes with a known digest\n" * 64
REFERENCE_IMAGE = Path(__file__).resolve().parents[2] / "rollout_hook" / "reference.jpg"
# What an export records for the rollout hook's photograph (model_export/reference.py).
FAKE_REFERENCE = {
    "image": "reference.jpg",
    "image_sha256": hashlib.sha256(REFERENCE_IMAGE.read_bytes()).hexdigest(),
    "top1": {"index": 281, "label": "tabby", "probability": 0.61},
}


@dataclass(frozen=True)
class FakeModel:
    directory: Path
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class Synthesized:
    outdir: Path
    stacks: dict[str, ServingStack]  # by stage name
    raw: dict[str, dict[str, Any]]  # template JSON by stage name


def write_fake_model(directory: Path, payload: bytes = FAKE_MODEL_BYTES) -> FakeModel:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.onnx").write_bytes(payload)
    sha256 = hashlib.sha256(payload).hexdigest()
    manifest = {
        "format_version": 1,
        "model_name": "resnet18",
        "file": "model.onnx",
        "sha256": sha256,
        "size_bytes": len(payload),
        "reference": FAKE_REFERENCE,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    # Something else the exporter might leave behind; it must not be uploaded.
    (directory / "export.log").write_text("exported\n", encoding="utf-8")
    return FakeModel(directory=directory, sha256=sha256, size_bytes=len(payload))


def synthesize_all(outdir: Path, model_dir: Path) -> Synthesized:
    app = new_app(outdir=outdir)
    stacks = add_stages(app, stages=STAGES.values(), model=ModelSource.from_artifact_dir(model_dir))
    assembly = app.synth()
    by_stage = {stack.config.name: stack for stack in stacks}
    raw = {
        name: assembly.get_stack_by_name(stack.stack_name).template
        for name, stack in by_stage.items()
    }
    return Synthesized(outdir=outdir, stacks=by_stage, raw=raw)


def resources_of(raw_template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource
        for logical_id, resource in raw_template["Resources"].items()
        if resource["Type"] == resource_type
    }


def only(raw_template: dict[str, Any], resource_type: str) -> tuple[str, dict[str, Any]]:
    found = resources_of(raw_template, resource_type)
    assert len(found) == 1, f"expected one {resource_type}, found {sorted(found)}"
    return next(iter(found.items()))


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def logical_id_of(ref_or_getatt: Any) -> str:
    """The logical ID in {"Ref": id} or {"Fn::GetAtt": [id, attr]}."""
    if "Ref" in ref_or_getatt:
        return str(ref_or_getatt["Ref"])
    return str(ref_or_getatt["Fn::GetAtt"][0])


# What each stage is meant to deploy, written out by hand (not read from stacks/config.py),
# so a config edit that changes behaviour has to be acknowledged here too.
EXPECTED: dict[str, dict[str, Any]] = {
    "dev": {
        "stack_id": "ResnetServingDev",
        "memory_mb": 1769,
        "timeout_s": 20,
        "ephemeral_mb": 1024,
        "reserved_concurrency": None,
        "pc_min": None,
        "pc_max": None,
        "deployment_config": "CodeDeployDefault.LambdaAllAtOnce",
        "throttle_rate": 5,
        "throttle_burst": 10,
        "quota_per_day": 5000,
        "latency_slo_ms": 2000,
        "api_5xx_rate": 0.05,
        "errors_per_minute": 10,
        "log_retention_days": 7,
        "noncurrent_days": 3,
        "deletion_policy": "Delete",
        "service": "resnet-serving-dev",
        "log_level": "DEBUG",
    },
    "prod": {
        "stack_id": "ResnetServingProd",
        "memory_mb": 3538,
        "timeout_s": 20,
        "ephemeral_mb": 1024,
        "reserved_concurrency": 50,
        "pc_min": 2,
        "pc_max": 20,
        "deployment_config": "CodeDeployDefault.LambdaCanary10Percent5Minutes",
        "throttle_rate": 50,
        "throttle_burst": 100,
        "quota_per_day": 1_000_000,
        "latency_slo_ms": 500,
        "api_5xx_rate": 0.01,
        "errors_per_minute": 5,
        "log_retention_days": 90,
        "noncurrent_days": 30,
        "deletion_policy": "Retain",
        "service": "resnet-serving-prod",
        "log_level": "INFO",
    },
}
