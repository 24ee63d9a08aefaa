"""Session fixtures for the CDK tests: each stage synthesized once, against a fake model.

The fake artifact dir holds a few bytes as ``model.onnx`` and a manifest carrying their
real sha256, so these tests need neither torch nor an exported model.
"""

from __future__ import annotations

import os
from typing import Any

# Node 20 banners from jsii on every synth; must be set before aws_cdk is imported.
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import pytest
from aws_cdk.assertions import Template
from infra_helpers import FakeModel, Synthesized, synthesize_all, write_fake_model

from stacks.config import STAGES


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
