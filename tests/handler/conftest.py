"""Handler fixtures: a moto S3 server on 127.0.0.1 holding models made by model_export, the
handler module imported (INIT) with a deployment-like environment, and fresh Runtime objects
(one per simulated execution environment, each with its own /tmp cache).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from handler_testkit import (
    AWS_ENV,
    CountingS3,
    FakeContext,
    PublishedModel,
    ensure_published,
    init_deployed,
)
from moto_server import running_moto_server

# ---------------------------------------------------------------- S3 and models


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    with running_moto_server() as endpoint:
        yield endpoint


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> str:
    """Per test: boto3 reaches the moto server through the standard AWS_ENDPOINT_URL_S3."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    monkeypatch.delenv("AWS_LAMBDA_INITIALIZATION_TYPE", raising=False)
    return moto_endpoint


@pytest.fixture
def fp32_published(aws_env: str, fp32_model_dir: Path) -> PublishedModel:
    return ensure_published(fp32_model_dir)


@pytest.fixture
def int8_published(aws_env: str, int8_model_dir: Path) -> PublishedModel:
    return ensure_published(int8_model_dir)


# ---------------------------------------------------------------- handler module and runtimes


@pytest.fixture(scope="session")
def handler_module(
    moto_endpoint: str, fp32_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
):
    """The handler module, imported (INIT) with the environment a deployment would give it."""
    return init_deployed(
        "handler", moto_endpoint, fp32_model_dir, tmp_path_factory.mktemp("import-cache")
    )


@pytest.fixture
def make_runtime(handler_module, tmp_path: Path) -> Callable[..., Any]:
    """Build a fresh per-environment Runtime (empty cache unless cache_dir is given)."""

    def make(
        published: PublishedModel,
        *,
        sha256: str | None = None,
        cache_dir: Path | None = None,
        s3: CountingS3 | None = None,
        load: bool = True,
    ):
        from model_store import Config

        config = Config(
            bucket=published.bucket,
            key=published.key,
            sha256=sha256 or published.sha256,
            cache_dir=cache_dir or tmp_path / "model-cache",
        )
        s3 = s3 or CountingS3()
        if isinstance(s3, CountingS3) and s3.inner is None:
            s3.inner = handler_module._default_s3_client
        runtime = handler_module.Runtime(config, s3_client_factory=s3)
        if load:
            runtime.try_load()
        return runtime

    return make


@pytest.fixture(scope="session")
def shared_runtime(handler_module):
    """The runtime INIT created at import: ready, shared by the request/response tests."""
    assert handler_module.RUNTIME.model is not None, handler_module.RUNTIME.load_error
    return handler_module.RUNTIME


@pytest.fixture
def invoke(handler_module, monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, Any]]:
    """Call the real, decorated handler(event, context) against a chosen runtime."""

    imported = handler_module.RUNTIME

    def call(event: dict[str, Any], runtime=None, context: FakeContext | None = None):
        monkeypatch.setattr(handler_module, "RUNTIME", runtime or imported)
        return handler_module.handler(event, context or FakeContext())

    return call


@pytest.fixture
def log_records(handler_module, monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[dict]]:
    """The handler's structured (JSON) log lines written during the test."""
    stream = io.StringIO()
    monkeypatch.setattr(handler_module.logger.registered_handler, "stream", stream)
    return lambda: [json.loads(line) for line in stream.getvalue().splitlines() if line]
