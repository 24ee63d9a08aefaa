"""Preflight against a local AWS API (moto server) and a fake ``docker`` on PATH.

moto serves STS, SSM, CloudFormation, Lambda, IAM and API Gateway over HTTP; every client
preflight creates reaches it through AWS_ENDPOINT_URL. moto has no Lambda
GetAccountSettings, so that one call is answered by a botocore ``before-call`` hook with the
numbers a test wants (the same mechanism botocore's Stubber uses, for one operation only).
"""

from __future__ import annotations

import os

os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from moto_server import running_moto_server
from preflight_helpers import FakeAccount, FakeDocker, write_fake_docker

REGION = "eu-west-1"


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    with running_moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> FakeAccount:
    """An empty account at the moto server; each test seeds what it needs."""
    requests.post(f"{moto_endpoint}/moto-api/reset", timeout=10).raise_for_status()
    for name, value in {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    return FakeAccount(endpoint=moto_endpoint, region=REGION)


@pytest.fixture
def docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeDocker:
    """A fake ``docker`` first on PATH: a healthy engine with the default builder."""
    fake = write_fake_docker(tmp_path / "fake-docker")
    monkeypatch.setenv("PATH", f"{fake.bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CDK_DOCKER", raising=False)
    monkeypatch.delenv("BUILDX_NO_DEFAULT_ATTESTATIONS", raising=False)
    return fake
