"""The BeforeAllowTraffic hook's decisions: one status reported to CodeDeploy, always."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import replace
from typing import Any

import pytest
from botocore.stub import ANY
from hook_testkit import (
    EVENT,
    IMAGE,
    MODEL_SHA256,
    REPO,
    VERSION_ARN,
    HookContext,
    Stubbed,
    streaming,
)

import api
from rollout_hook import hook

TOP1 = 238


def settings(**changes: Any) -> hook.Settings:
    base = hook.Settings(
        target_function_arn=VERSION_ARN,
        expected_sha256=MODEL_SHA256,
        image=IMAGE.read_bytes(),
        image_name=IMAGE.name,
        top1_index=TOP1,
        top1_label="Greater Swiss Mountain dog",
        invoke_timeout_s=75,
    )
    return replace(base, **changes)


def served(*, sha256: str = MODEL_SHA256, top1: int = TOP1) -> dict[str, Any]:
    """A 200 as the handler formats it (lambda_src/api.py), for the reference photograph."""
    predictions = [
        {"label": f"class {i}", "index": i, "probability": 0.1} for i in (top1, 381, 58, 590, 76)
    ]
    return api.json_response(
        200,
        {
            "predictions": predictions,
            "model": {"name": "resnet18", "sha256": sha256},
            "timings_ms": {"decode_preprocess": 4.0, "inference": 20.0, "total": 25.0},
        },
    )


def expect_invoke(stubbed: Stubbed, payload: Any, **response: Any) -> None:
    stubbed.lambda_stub.add_response(
        "invoke",
        {"StatusCode": 200, "ExecutedVersion": "7", "Payload": streaming(payload), **response},
        {"FunctionName": VERSION_ARN, "InvocationType": "RequestResponse", "Payload": ANY},
    )


def run(stubbed: Stubbed, config: hook.Settings | None = None, **kwargs: Any) -> dict[str, str]:
    sleeps: list[float] = []
    outcome = hook.handle(
        EVENT,
        HookContext(),
        lambda_client=stubbed.lambda_client,
        codedeploy_client=stubbed.codedeploy_client,
        load_settings=lambda: config or settings(),
        sleep=sleeps.append,
        **kwargs,
    )
    outcome["sleeps"] = str(sleeps)
    return outcome


def test_right_model_and_top1_succeeds(stubbed: Stubbed, caplog: pytest.LogCaptureFixture) -> None:
    expect_invoke(stubbed, served())
    stubbed.expect_report("Succeeded")
    with caplog.at_level(logging.INFO):
        outcome = run(stubbed)
    assert outcome["status"] == "Succeeded"
    lines = [r.getMessage() for r in caplog.records if "BeforeAllowTraffic" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].startswith("BeforeAllowTraffic Succeeded: HTTP 200")
    assert "\n" not in lines[0]


def test_the_invocation_is_a_rest_proxy_post_of_the_shipped_photo(stubbed: Stubbed) -> None:
    expect_invoke(stubbed, served())
    stubbed.expect_report("Succeeded")
    run(stubbed)
    (event,) = stubbed.sent_payloads
    recorded = json.loads((REPO / "tests" / "events" / "predict_post.json").read_text())
    assert set(event) == set(recorded)  # the fields of a real API Gateway REST proxy event
    assert (event["httpMethod"], event["path"], event["isBase64Encoded"]) == (
        "POST",
        "/predict",
        True,
    )
    assert base64.b64decode(event["body"]) == IMAGE.read_bytes()
    # The handler's own parser accepts it as one raw JPEG, like a client's upload.
    request = api.parse_predict(event)
    assert request.images == [IMAGE.read_bytes()]
    assert api.route(event) == "/predict"


def test_another_model_sha256_fails(stubbed: Stubbed, caplog: pytest.LogCaptureFixture) -> None:
    expect_invoke(stubbed, served(sha256="cd" * 32))
    stubbed.expect_report("Failed")
    outcome = run(stubbed)
    assert outcome["status"] == "Failed"
    assert "cd" * 32 in outcome["reason"]
    assert MODEL_SHA256 in outcome["reason"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage().split(":")[0] for r in errors] == ["BeforeAllowTraffic Failed"]


def test_another_top1_fails(stubbed: Stubbed) -> None:
    expect_invoke(stubbed, served(top1=281))
    stubbed.expect_report("Failed")
    outcome = run(stubbed)
    assert outcome["status"] == "Failed"
    assert "281" in outcome["reason"]
    assert "238 (Greater Swiss Mountain dog)" in outcome["reason"]


def test_http_500_from_the_function_fails(stubbed: Stubbed) -> None:
    from errors import ApiError

    expect_invoke(
        stubbed,
        api.error_response(ApiError(500, "internal_error", "Internal error; request id x.")),
    )
    stubbed.expect_report("Failed")
    outcome = run(stubbed)
    assert outcome["status"] == "Failed"
    assert "HTTP 500 (internal_error: Internal error; request id x.)" in outcome["reason"]


def test_503_model_unavailable_fails(stubbed: Stubbed) -> None:
    from errors import ApiError

    unavailable = ApiError(503, "model_unavailable", "The model is not available right now.")
    expect_invoke(stubbed, api.error_response(unavailable))
    stubbed.expect_report("Failed")
    assert run(stubbed)["status"] == "Failed"


def test_function_error_fails(stubbed: Stubbed) -> None:
    crash = {"errorMessage": "Task timed out after 20.00 seconds", "errorType": "Sandbox.Timedout"}
    expect_invoke(stubbed, crash, FunctionError="Unhandled")
    stubbed.expect_report("Failed")
    outcome = run(stubbed)
    assert outcome["status"] == "Failed"
    assert "Unhandled function error" in outcome["reason"]
    assert "Task timed out" in outcome["reason"]


def test_invoke_raising_fails(stubbed: Stubbed) -> None:
    stubbed.lambda_stub.add_client_error(
        "invoke", service_error_code="AccessDeniedException", service_message="not allowed"
    )
    stubbed.expect_report("Failed")
    outcome = run(stubbed)
    assert outcome["status"] == "Failed"
    assert outcome["reason"].startswith("ClientError: ")
    assert "AccessDenied" in outcome["reason"]


def test_a_pending_version_is_retried_then_judged(stubbed: Stubbed) -> None:
    stubbed.lambda_stub.add_client_error(
        "invoke",
        service_error_code="ResourceConflictException",
        service_message="The operation cannot be performed at this time. State: Pending",
        http_status_code=409,
    )
    expect_invoke(stubbed, served())
    stubbed.expect_report("Succeeded")
    outcome = run(stubbed)
    assert outcome["status"] == "Succeeded"
    assert outcome["sleeps"] == str([hook.RETRY_DELAY_S])


def test_retries_stop_when_the_time_budget_is_spent(stubbed: Stubbed) -> None:
    stubbed.lambda_stub.add_client_error(
        "invoke", service_error_code="TooManyRequestsException", http_status_code=429
    )
    stubbed.expect_report("Failed")
    # 120 s left, 15 s kept for the report, 75 s for one invocation: 30 s of retries at most.
    outcome = hook.handle(
        EVENT,
        HookContext(remaining_ms=95_000),
        lambda_client=stubbed.lambda_client,
        codedeploy_client=stubbed.codedeploy_client,
        load_settings=settings,
        sleep=lambda _s: None,
    )
    assert outcome["status"] == "Failed"
    assert "TooManyRequests" in outcome["reason"]


def test_without_a_reference_only_status_and_sha256_are_checked(
    stubbed: Stubbed, caplog: pytest.LogCaptureFixture
) -> None:
    expect_invoke(stubbed, served(top1=281))
    stubbed.expect_report("Succeeded")
    outcome = run(stubbed, settings(top1_index=None, top1_label=None))
    assert outcome["status"] == "Succeeded"
    assert any("top-1 not checked" in r.getMessage() for r in caplog.records)


def test_broken_configuration_is_reported_failed(stubbed: Stubbed) -> None:
    stubbed.expect_report("Failed")

    def broken() -> hook.Settings:
        raise hook.HookConfigError("environment variable 'TARGET_FUNCTION_ARN' is not set")

    outcome = hook.handle(
        EVENT,
        HookContext(),
        lambda_client=stubbed.lambda_client,
        codedeploy_client=stubbed.codedeploy_client,
        load_settings=broken,
    )
    assert outcome == {
        "status": "Failed",
        "reason": "HookConfigError: environment variable 'TARGET_FUNCTION_ARN' is not set",
    }


def test_a_failed_report_raises_so_lambda_retries_the_hook(stubbed: Stubbed) -> None:
    expect_invoke(stubbed, served())
    stubbed.codedeploy_stub.add_client_error(
        "put_lifecycle_event_hook_execution_status", service_error_code="ThrottlingException"
    )
    with pytest.raises(stubbed.codedeploy_client.exceptions.ClientError, match="Throttling"):
        run(stubbed)


def test_an_event_without_ids_reports_nothing(stubbed: Stubbed) -> None:
    with pytest.raises(ValueError, match="DeploymentId"):
        hook.handle(
            {"LifecycleEvent": "BeforeAllowTraffic"},
            HookContext(),
            lambda_client=stubbed.lambda_client,
            codedeploy_client=stubbed.codedeploy_client,
            load_settings=settings,
        )


# ---------------------------------------------------------------- configuration from the stack


def env(**changes: str) -> dict[str, str]:
    base = {
        "TARGET_FUNCTION_ARN": VERSION_ARN,
        "EXPECTED_MODEL_SHA256": MODEL_SHA256,
        "REFERENCE_IMAGE": "reference.jpg",
        "REFERENCE_IMAGE_SHA256": hashlib.sha256(IMAGE.read_bytes()).hexdigest(),
        "REFERENCE_TOP1_INDEX": "238",
        "REFERENCE_TOP1_LABEL": "Greater Swiss Mountain dog",
        "INVOKE_TIMEOUT_SECONDS": "75",
    }
    return {k: v for k, v in {**base, **changes}.items() if v != ""}


def test_settings_read_the_stack_environment_and_the_shipped_photo() -> None:
    loaded = hook.Settings.from_env(env(), IMAGE.parent)
    assert loaded == settings()


def test_settings_without_reference_top1() -> None:
    loaded = hook.Settings.from_env(env(REFERENCE_TOP1_INDEX="", REFERENCE_TOP1_LABEL=""))
    assert (loaded.top1_index, loaded.top1_label) == (None, None)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"TARGET_FUNCTION_ARN": ""}, "'TARGET_FUNCTION_ARN' is not set"),
        ({"REFERENCE_IMAGE_SHA256": "00" * 32}, "not the one the stack expects"),
        ({"REFERENCE_IMAGE": "missing.jpg"}, "cannot read missing.jpg"),
        ({"REFERENCE_IMAGE": "../README.md"}, "must be a file name"),
        ({"REFERENCE_TOP1_INDEX": "tabby"}, "bad number"),
    ],
)
def test_settings_refuse_a_broken_environment(changes: dict[str, str], message: str) -> None:
    with pytest.raises(hook.HookConfigError, match=message):
        hook.Settings.from_env(env(**changes), IMAGE.parent)
