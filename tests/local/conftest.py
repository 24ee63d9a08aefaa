"""Fixtures for local mode: the synthesized template and a running `local_mode.serve`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_helpers import REPO_ROOT, ServedEndpoint, start_serve, stop_serve

TEMPLATE = REPO_ROOT / "templates" / "ResnetServingDev.template.json"


@pytest.fixture(scope="session")
def stack_template() -> Path:
    """The committed dev template the gateway mirrors (LOCAL_MODE_TEST_TEMPLATE overrides it)."""
    path = Path(os.environ.get("LOCAL_MODE_TEST_TEMPLATE") or TEMPLATE)
    if not path.is_file():
        pytest.fail(f"{path} is missing: local mode mirrors the committed synthesized stack")
    return path


@pytest.fixture(scope="session")
def served(
    fp32_model_dir: Path, stack_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedEndpoint]:
    """`python -m local_mode.serve` in a subprocess: S3 server, gateway and the real handler."""
    workdir = tmp_path_factory.mktemp("serve")
    process, ready, out = start_serve(fp32_model_dir, stack_template, workdir)
    info = json.loads(ready.read_text())
    endpoint = ServedEndpoint(
        endpoint=info["endpoint"],
        api_key=info["api_key"],
        s3_endpoint=info["s3_endpoint"],
        process=process,
        log=out,
        outputs_file=workdir / "cdk-outputs-local.json",
    )
    yield endpoint
    if process.poll() is None:
        stop_serve(process)
