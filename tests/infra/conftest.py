"""Session fixtures for the CDK tests: each stage synthesized once, against a fake model.

The fake artifact dir holds a few bytes as ``model.onnx`` and a manifest carrying their
real sha256, so these tests need neither torch nor an exported model.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Node 20 banners from jsii on every synth; must be set before aws_cdk is imported.
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import pytest
from aws_cdk.assertions import Template

from stacks.app_builder import add_stages, new_app
from stacks.config import STAGES
from stacks.model_source import ModelSource
from stacks.serving_stack import ServingStack

FAKE_MODEL_BYTES = b"not an onnx graph, just bytes with a known digest\n" * 64


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


@pytest.fixture(scope="session")
def fake_model(tmp_path_factory: pytest.TempPathFactory) -> FakeModel:
    return write_fake_model(tmp_path_factory.mktemp("fake-model"))


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory: pytest.TempPathFactory, fake_model: FakeModel) -> Synthesized:
    return synthesize_all(tmp_path_factory.mktemp("cdk-out"), fake_model.directory)


@pytest.fixture(scope="session")
def templates(synthesized: Synthesized) -> dict[str, Template]:
    return {name: Template.from_json(raw) for name, raw in synthesized.raw.items()}


@pytest.fixture(scope="session")
def dev(templates: dict[str, Template]) -> Template:
    return templates["dev"]


@pytest.fixture(scope="session")
def prod(templates: dict[str, Template]) -> Template:
    return templates["prod"]


@pytest.fixture(params=sorted(STAGES))
def stage(request: pytest.FixtureRequest) -> str:
    """Runs a test once per stage."""
    return str(request.param)


@pytest.fixture
def template(stage: str, templates: dict[str, Template]) -> Template:
    return templates[stage]


@pytest.fixture
def raw(stage: str, synthesized: Synthesized) -> dict[str, Any]:
    return synthesized.raw[stage]
