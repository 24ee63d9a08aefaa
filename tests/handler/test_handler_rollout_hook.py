"""The rollout hook against the real handler: its event, the real model, the export's reference.

The hook's Lambda client is a real botocore client whose Invoke request is answered, at the
HTTP layer, by the real handler (lambda_src/handler.py, real ONNX Runtime, model from the moto
S3 server): botocore serializes the hook's payload and parses the handler's answer exactly as
it would against AWS. Only CodeDeploy is stubbed (botocore Stubber).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.stub import Stubber

from rollout_hook import hook
from stacks.model_source import ModelSource

VERSION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:PredictFunction:7"
EVENT = {"DeploymentId": "d-HANDLER01", "LifecycleEventHookExecutionId": "exec-1"}


class _Raw:
    """The part of urllib3's response botocore reads a streaming payload from."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_kwargs: Any) -> Any:
        yield self._data

    def read(self, *_args: Any, **_kwargs: Any) -> bytes:
        data, self._data = self._data, b""
        return data


class LambdaContext:
    def get_remaining_time_in_millis(self) -> int:
        return 120_000


def settings_from_export(model_dir: Path) -> hook.Settings:
    """The hook's settings as the stack derives them from this export's manifest."""
    model = ModelSource.from_artifact_dir(model_dir)  # also checks the reference image digest
    assert model.reference is not None
    env = {
        "TARGET_FUNCTION_ARN": VERSION_ARN,
        "EXPECTED_MODEL_SHA256": model.sha256,
        "REFERENCE_IMAGE": model.reference.image,
        "REFERENCE_IMAGE_SHA256": model.reference.image_sha256,
        "REFERENCE_TOP1_INDEX": str(model.reference.top1_index),
        "REFERENCE_TOP1_LABEL": model.reference.top1_label or "",
    }
    return hook.Settings.from_env(env)


@pytest.fixture
def run_hook(invoke: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, str]]:
    def run(settings: hook.Settings, expected_status: str, runtime: Any = None) -> dict[str, str]:
        lambda_client = boto3.client("lambda")
        invocations: list[dict[str, Any]] = []

        def answer_with_the_handler(request: Any, **_kwargs: Any) -> AWSResponse:
            assert unquote(request.url).endswith(f"/functions/{VERSION_ARN}/invocations")
            event = json.loads(request.body)
            invocations.append(event)
            body = json.dumps(invoke(event, runtime)).encode()
            headers = {"Content-Length": str(len(body)), "X-Amz-Executed-Version": "7"}
            return AWSResponse(request.url, 200, headers, _Raw(body))

        lambda_client.meta.events.register("before-send.lambda.Invoke", answer_with_the_handler)
        codedeploy_client = boto3.client("codedeploy")
        with Stubber(codedeploy_client) as codedeploy:
            # One answer, for exactly the status expected: another status, or a second
            # report, makes the Stubber raise out of the hook.
            codedeploy.add_response(
                "put_lifecycle_event_hook_execution_status",
                {"lifecycleEventHookExecutionId": "exec-1"},
                {
                    "deploymentId": "d-HANDLER01",
                    "lifecycleEventHookExecutionId": "exec-1",
                    "status": expected_status,
                },
            )
            outcome = hook.handle(
                EVENT,
                LambdaContext(),
                lambda_client=lambda_client,
                codedeploy_client=codedeploy_client,
                load_settings=lambda: settings,
            )
            codedeploy.assert_no_pending_responses()
        assert len(invocations) == 1
        return outcome

    return run


def test_the_right_model_passes_the_hook(run_hook, shared_runtime, fp32_model_dir) -> None:
    outcome = run_hook(settings_from_export(fp32_model_dir), "Succeeded")
    assert outcome["status"] == "Succeeded", outcome["reason"]
    assert "matches the reference" in outcome["reason"]


def test_a_model_with_another_sha256_fails_the_hook(
    run_hook, shared_runtime, int8_model_dir
) -> None:
    # The function serves the FP32 model; the stack says it deployed the INT8 one.
    outcome = run_hook(settings_from_export(int8_model_dir), "Failed")
    assert outcome["status"] == "Failed"
    assert "serves model sha256" in outcome["reason"]


def test_a_model_with_another_reference_fails_the_hook(
    run_hook, shared_runtime, fp32_model_dir
) -> None:
    settings = settings_from_export(fp32_model_dir)
    assert settings.top1_index is not None
    other = replace(settings, top1_index=(settings.top1_index + 1) % 1000)
    outcome = run_hook(other, "Failed")
    assert outcome["status"] == "Failed"
    assert "the export recorded" in outcome["reason"]


def test_a_version_that_cannot_load_its_model_fails_the_hook(
    run_hook, make_runtime, fp32_published, fp32_model_dir
) -> None:
    # A version whose MODEL_SHA256 does not match the object: the handler refuses to serve it.
    broken = make_runtime(fp32_published, sha256="0" * 64)
    assert broken.model is None
    outcome = run_hook(settings_from_export(fp32_model_dir), "Failed", broken)
    assert outcome["status"] == "Failed"
    assert "HTTP 503 (model_unavailable" in outcome["reason"]
