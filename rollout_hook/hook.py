"""CodeDeploy BeforeAllowTraffic hook: prove the new version classifies before it gets traffic.

CodeDeploy invokes this function with ``{"DeploymentId", "LifecycleEventHookExecutionId", ...}``
after CloudFormation published a new version of the predict function and before it moves any
of alias ``live``'s traffic. The hook invokes that version directly (its ARN is in
``TARGET_FUNCTION_ARN``) with the API Gateway REST proxy event a client's ``POST /predict`` of
``reference.jpg`` produces, and passes only if:

* the invocation succeeds and the handler answers HTTP 200;
* the answer names the deployed model (``model.sha256`` == ``EXPECTED_MODEL_SHA256``);
* its top-1 class is the one the exporter recorded for this photograph
  (``REFERENCE_TOP1_INDEX``; when the stack has no reference for the model, this check is
  skipped with a warning).

Then it reports ``Succeeded`` or ``Failed`` to CodeDeploy, exactly once. Every error ends as
``Failed`` with a one-line reason in the log: CodeDeploy would otherwise wait an hour for a
status and then fail the deployment anyway. A ``Failed`` stops the deployment and rolls alias
``live`` back; the new version never serves a request.

Python 3.12 runtime, standard library and the runtime's boto3 only (no dependencies).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

HERE = Path(__file__).resolve().parent
SUCCEEDED = "Succeeded"
FAILED = "Failed"
# Seconds kept back from the hook's own timeout to report the verdict after the invocation.
REPORT_RESERVE_S = 15.0
# Invocation errors that mean "not yet" rather than "broken": a version still being optimized
# (ResourceConflictException while Pending) or throttling. Retried until the budget runs out.
RETRYABLE_INVOKE_ERRORS = frozenset({"ResourceConflictException", "TooManyRequestsException"})
RETRY_DELAY_S = 5.0

logger = logging.getLogger()
logger.setLevel(logging.INFO)


class HookConfigError(Exception):
    """The hook's environment or asset is wrong: a deploy bug, reported as Failed."""


@dataclass(frozen=True)
class Settings:
    """What the stack put in the environment, plus the shipped photograph."""

    target_function_arn: str
    expected_sha256: str
    image: bytes
    image_name: str
    top1_index: int | None
    top1_label: str | None
    invoke_timeout_s: float

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, directory: Path = HERE) -> Settings:
        try:
            arn = env["TARGET_FUNCTION_ARN"]
            sha256 = env["EXPECTED_MODEL_SHA256"]
            name = env["REFERENCE_IMAGE"]
            image_sha256 = env["REFERENCE_IMAGE_SHA256"]
        except KeyError as missing:
            raise HookConfigError(f"environment variable {missing} is not set") from None
        if "/" in name:
            raise HookConfigError(f"REFERENCE_IMAGE must be a file name, got {name!r}")
        try:
            image = (directory / name).read_bytes()
        except OSError as exc:
            raise HookConfigError(f"cannot read {name} from the hook's code: {exc}") from None
        if hashlib.sha256(image).hexdigest() != image_sha256:
            raise HookConfigError(f"{name} in the hook's code is not the one the stack expects")
        raw_index = env.get("REFERENCE_TOP1_INDEX")
        try:
            index = int(raw_index) if raw_index else None
            timeout = float(env.get("INVOKE_TIMEOUT_SECONDS") or 60)
        except ValueError as exc:
            raise HookConfigError(f"bad number in the environment: {exc}") from None
        return cls(
            target_function_arn=arn,
            expected_sha256=sha256,
            image=image,
            image_name=name,
            top1_index=index,
            top1_label=env.get("REFERENCE_TOP1_LABEL") or None,
            invoke_timeout_s=timeout,
        )


def predict_event(image: bytes) -> dict[str, Any]:
    """The REST proxy event API Gateway delivers for ``POST /predict`` with a JPEG body.

    image/jpeg is one of the API's binary media types, so the body arrives base64-encoded with
    ``isBase64Encoded: true``, as in tests/events/predict_post.json.
    """
    headers = {"Content-Type": "image/jpeg", "User-Agent": "codedeploy-before-allow-traffic"}
    return {
        "resource": "/predict",
        "path": "/predict",
        "httpMethod": "POST",
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": "/predict",
            "httpMethod": "POST",
            "path": "/predict",
            "stage": "codedeploy-hook",
            "requestId": "codedeploy-before-allow-traffic",
            "identity": {"sourceIp": "127.0.0.1", "userAgent": headers["User-Agent"]},
        },
        "body": base64.b64encode(image).decode("ascii"),
        "isBase64Encoded": True,
    }


def _label(index: int | None, label: str | None) -> str:
    return f"{index} ({label})" if label else str(index)


def judge(proxy_response: Any, settings: Settings) -> tuple[str, str]:
    """The handler's proxy response -> (status, one-line reason). Pure: no AWS calls."""
    if not isinstance(proxy_response, dict) or "statusCode" not in proxy_response:
        return FAILED, f"the new version returned no proxy response: {proxy_response!r:.200}"
    status_code = proxy_response["statusCode"]
    try:
        body = json.loads(proxy_response.get("body") or "null")
    except (TypeError, ValueError):
        body = None
    if status_code != 200:
        error = body.get("error") if isinstance(body, dict) else None
        detail = (
            f"{error.get('code')}: {error.get('message')}"
            if isinstance(error, dict)
            else repr(proxy_response.get("body"))[:200]
        )
        return FAILED, f"the new version answered HTTP {status_code} ({detail})"
    if not isinstance(body, dict):
        return FAILED, "the new version answered 200 without a JSON object body"
    model = body.get("model")
    served = model.get("sha256") if isinstance(model, dict) else None
    if served != settings.expected_sha256:
        return FAILED, (
            f"the new version serves model sha256 {served}, the stack deployed "
            f"{settings.expected_sha256}"
        )
    predictions = body.get("predictions")
    if not isinstance(predictions, list) or not predictions or not isinstance(predictions[0], dict):
        return FAILED, "the new version answered 200 without predictions"
    top1 = predictions[0].get("index")
    got = _label(top1, predictions[0].get("label"))
    if settings.top1_index is None:
        logger.warning(
            "No reference prediction for this model (deployed by key without "
            "model_reference_top1): top-1 not checked"
        )
        return SUCCEEDED, f"HTTP 200, model sha256 {served}, top-1 {got} (no reference)"
    if top1 != settings.top1_index:
        return FAILED, (
            f"top-1 for {settings.image_name} is {got}, the export recorded "
            f"{_label(settings.top1_index, settings.top1_label)}"
        )
    return SUCCEEDED, f"HTTP 200, model sha256 {served}, top-1 {got} matches the reference"


def invoke_new_version(
    lambda_client: Any,
    settings: Settings,
    *,
    budget_s: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Any:
    """Invoke the version synchronously with the reference event; the decoded proxy response.

    Raises on an invocation error; a function error (the handler crashed or timed out) is a
    RuntimeError naming it.
    """
    payload = json.dumps(predict_event(settings.image)).encode("utf-8")
    deadline = clock() + budget_s
    while True:
        try:
            response = lambda_client.invoke(
                FunctionName=settings.target_function_arn,
                InvocationType="RequestResponse",
                Payload=payload,
            )
            break
        except lambda_client.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code not in RETRYABLE_INVOKE_ERRORS or clock() + RETRY_DELAY_S > deadline:
                raise
            logger.info("Invoke got %s; retrying in %.0f s", code, RETRY_DELAY_S)
            sleep(RETRY_DELAY_S)
    raw = response["Payload"].read()
    if response.get("FunctionError"):
        raise RuntimeError(
            f"the new version failed with a {response['FunctionError']} function error: "
            f"{raw[:300].decode('utf-8', 'replace')}"
        )
    return json.loads(raw)


def handle(
    event: Mapping[str, Any],
    context: Any,
    *,
    lambda_client: Any,
    codedeploy_client: Any,
    load_settings: Callable[[], Settings] = Settings.from_env,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """Validate, then report exactly one status to CodeDeploy; returns what was reported."""
    deployment_id = event.get("DeploymentId")
    execution_id = event.get("LifecycleEventHookExecutionId")
    if not deployment_id or not execution_id:
        # Nothing to report to: this was not a CodeDeploy lifecycle event.
        raise ValueError("event lacks DeploymentId/LifecycleEventHookExecutionId")
    try:
        settings = load_settings()
        remaining_s = context.get_remaining_time_in_millis() / 1000.0
        budget_s = max(0.0, remaining_s - REPORT_RESERVE_S - settings.invoke_timeout_s)
        response = invoke_new_version(lambda_client, settings, budget_s=budget_s, sleep=sleep)
        status, reason = judge(response, settings)
    except Exception as exc:  # anything at all: CodeDeploy must hear Failed, not silence
        status, reason = FAILED, f"{type(exc).__name__}: {exc}"
    line = f"BeforeAllowTraffic {status}: {reason}"
    extra = {"deployment_id": deployment_id, "status": status}
    if status == SUCCEEDED:
        logger.info(line, extra=extra)
    else:
        logger.error(line, extra=extra)
    # Not caught: if the report itself fails, the error makes Lambda retry this asynchronous
    # invocation, which reports again.
    codedeploy_client.put_lifecycle_event_hook_execution_status(
        deploymentId=deployment_id,
        lifecycleEventHookExecutionId=execution_id,
        status=status,
    )
    return {"status": status, "reason": reason}


def _clients() -> tuple[Any, Any]:
    invoke_timeout = float(os.environ.get("INVOKE_TIMEOUT_SECONDS") or 60)
    lambda_client = boto3.client(
        "lambda",
        config=BotoConfig(
            connect_timeout=5,
            read_timeout=invoke_timeout,
            # One attempt per call: a retried invocation after a read timeout would run the
            # new version twice and overrun the budget; retryable errors are handled above.
            retries={"total_max_attempts": 1},
        ),
    )
    codedeploy_client = boto3.client(
        "codedeploy",
        config=BotoConfig(
            connect_timeout=5, read_timeout=10, retries={"mode": "standard", "max_attempts": 5}
        ),
    )
    return lambda_client, codedeploy_client


_CLIENTS: tuple[Any, Any] | None = None


def handler(event: dict[str, Any], context: Any) -> dict[str, str]:
    global _CLIENTS
    if _CLIENTS is None:  # once per execution environment, reused by warm invocations
        _CLIENTS = _clients()
    lambda_client, codedeploy_client = _CLIENTS
    return handle(event, context, lambda_client=lambda_client, codedeploy_client=codedeploy_client)
