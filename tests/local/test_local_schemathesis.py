"""schemathesis with --checks all against the local endpoint: docs/openapi.yaml holds.

The run is bounded (examples per operation, a fixed seed, a request rate under the dev usage
plan's throttle so every case reaches the function); tests/local/fuzz/ holds its settings and
the one check the built-in ones cannot express.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from serve_helpers import REPO_ROOT, ServedEndpoint

FUZZ_DIR = Path(__file__).resolve().parent / "fuzz"
CONFIG = FUZZ_DIR / "schemathesis.toml"
SPEC = REPO_ROOT / "docs" / "openapi.yaml"
MAX_EXAMPLES = 40  # per operation and phase; about 140 requests, ~40 s at 4 requests/s
SEED = 20261203


def run_schemathesis(
    served: ServedEndpoint, scratch: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    # Hypothesis keeps its caches in ./.hypothesis unless told otherwise.
    env = {**os.environ, "HYPOTHESIS_STORAGE_DIRECTORY": str(scratch / "hypothesis")}
    return subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "--no-color",
            "--config-file",
            str(CONFIG),
            "run",
            str(SPEC),
            "--url",
            served.endpoint.rstrip("/"),
            "--header",
            f"x-api-key: {served.api_key}",
            "--checks",
            "all",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--workers",
            "1",
            # Under the dev usage plan's 5 requests/s: cases reach the function, not a 429.
            "--rate-limit",
            "4/s",
            "--request-timeout",
            "30",
            *extra,
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_schemathesis_finds_no_contract_violation(served: ServedEndpoint, tmp_path: Path) -> None:
    done = run_schemathesis(served, tmp_path)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    summary = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert summary is not None, done.stdout[-3000:]
    generated, passed = int(summary[1]), int(summary[2])
    assert generated == passed
    assert generated >= 100, done.stdout[-3000:]
    for phase in ("Examples", "Coverage", "Fuzzing"):
        assert re.search(rf"✅ {phase}", done.stdout), phase


def _load_contract_checks() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "contract_checks", FUZZ_DIR / "contract_checks.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _case(positive: bool) -> Any:
    mode = SimpleNamespace(is_positive=positive)
    return SimpleNamespace(meta=SimpleNamespace(generation=SimpleNamespace(mode=mode)))


def _response(status: int, body: bytes) -> Any:
    return SimpleNamespace(status_code=status, content=body)


def test_the_contract_check_allows_refusing_valid_requests_only_for_image_content() -> None:
    check = _load_contract_checks().valid_requests_are_refused_only_for_image_content
    image = b'{"error":{"code":"not_an_image","message":"x"}}'
    top_k = b'{"error":{"code":"invalid_top_k","message":"x"}}'
    assert check(None, _response(400, image), _case(positive=True)) is None
    assert check(None, _response(200, b"{}"), _case(positive=True)) is None
    assert check(None, _response(400, top_k), _case(positive=False)) is None
    for refusal in (_response(400, top_k), _response(413, b"not json")):
        with pytest.raises(AssertionError, match="schema-valid request refused"):
            check(None, refusal, _case(positive=True))
