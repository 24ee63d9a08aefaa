"""The hook's handler with botocore Stubbers: real clients, canned AWS answers, no network."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from hook_testkit import Stubbed


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stubbed]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    lambda_client = boto3.client("lambda")
    codedeploy_client = boto3.client("codedeploy")
    sent: list[dict[str, Any]] = []

    def capture(params: dict[str, Any], **_kwargs: Any) -> None:
        sent.append(json.loads(params["Payload"]))

    lambda_client.meta.events.register("provide-client-params.lambda.Invoke", capture)
    with Stubber(lambda_client) as lambda_stub, Stubber(codedeploy_client) as codedeploy_stub:
        yield Stubbed(lambda_client, codedeploy_client, lambda_stub, codedeploy_stub, sent)
        # Exactly once: every queued answer was used, and an extra call would have found none.
        lambda_stub.assert_no_pending_responses()
        codedeploy_stub.assert_no_pending_responses()
