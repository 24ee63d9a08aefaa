"""Handler test helpers: request events built from the recorded API Gateway events in
tests/events (only body/headers/path/method swapped), a small fake LambdaContext, S3 helpers.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

EVENTS = Path(__file__).resolve().parent.parent / "events"
BUCKET = "handler-test-models"
PREFIX = "models"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_SERVICE_NAME": "resnet-handler-test",
    "POWERTOOLS_METRICS_NAMESPACE": "ResnetServingTest",
}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- events and context


def load_event(name: str) -> dict[str, Any]:
    return copy.deepcopy(json.loads((EVENTS / name).read_text()))


def _set_header(event: dict[str, Any], name: str, value: str | None) -> None:
    for key in ("headers", "multiValueHeaders"):
        event[key] = {k: v for k, v in (event.get(key) or {}).items() if k.lower() != name.lower()}
    if value is not None:
        event["headers"][name] = value
        event["multiValueHeaders"][name] = [value]


def predict_event(
    body: bytes | str | dict[str, Any] | None,
    content_type: str | None = "image/jpeg",
    *,
    base64_encoded: bool | None = None,
    query: dict[str, str] | None = None,
    header_name: str = "Content-Type",
) -> dict[str, Any]:
    """POST /predict from the recorded SAM event with body, Content-Type and query swapped.

    bytes are sent like API Gateway sends binary media types (base64, isBase64Encoded true);
    str and dict (JSON) go as text, as API Gateway passes application/json.
    """
    event = load_event("predict_post.json")
    _set_header(event, "Content-Type", None)
    if content_type is not None:
        _set_header(event, header_name, content_type)
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, bytes):
        event["body"] = base64.b64encode(body).decode("ascii")
        event["isBase64Encoded"] = True if base64_encoded is None else base64_encoded
    else:
        event["body"] = body
        event["isBase64Encoded"] = False if base64_encoded is None else base64_encoded
    event["queryStringParameters"] = dict(query) if query else None
    event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()} if query else None
    return event


def route_event(method: str, path: str) -> dict[str, Any]:
    """The recorded GET /health event re-aimed at another method/path."""
    event = load_event("health_get.json")
    event["httpMethod"] = method
    event["path"] = path
    event["resource"] = path
    event["requestContext"]["httpMethod"] = method
    event["requestContext"]["resourcePath"] = path
    event["requestContext"]["path"] = f"/{event['requestContext']['stage']}{path}"
    event["queryStringParameters"] = None
    event["multiValueQueryStringParameters"] = None
    return event


@dataclass
class FakeContext:
    aws_request_id: str = "0f1e2d3c-aaaa-bbbb-cccc-000000000001"
    function_name: str = "PredictFunction"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 3008
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:PredictFunction"
    log_group_name: str = "/aws/lambda/PredictFunction"
    log_stream_name: str = "2026/11/23/[$LATEST]abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


def body_of(response: dict[str, Any]) -> dict[str, Any]:
    assert response["headers"]["Content-Type"] == "application/json"
    return json.loads(response["body"])


# ---------------------------------------------------------------- S3


def s3_client() -> Any:
    return boto3.client("s3")


@dataclass(frozen=True)
class PublishedModel:
    bucket: str
    key: str
    sha256: str
    model_dir: Path
    manifest: dict[str, Any]


def ensure_published(model_dir: Path) -> PublishedModel:
    """Publish with model_export.publish (idempotent; survives another suite resetting moto)."""
    from model_export import publish

    client = s3_client()
    sha = sha256_of(model_dir / "model.onnx")
    key = f"{PREFIX}/{sha}/model.onnx"
    try:
        client.head_object(Bucket=BUCKET, Key=key)
    except client.exceptions.ClientError:
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=BUCKET)
        bucket, key = publish(model_dir, f"s3://{BUCKET}/{PREFIX}", log=lambda _m: None)
        assert (bucket, key) == (BUCKET, f"{PREFIX}/{sha}/model.onnx")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    return PublishedModel(BUCKET, key, sha, model_dir, manifest)


class CountingS3:
    """A real boto3 S3 client factory that counts the GetObject calls it makes.

    ``inner`` builds the client (the handler's own factory when set by make_runtime).
    """

    def __init__(self, inner: Any = None) -> None:
        self.inner = inner
        self.get_object_calls = 0
        self.clients_created = 0

    def _count(self, **_kwargs: Any) -> None:
        self.get_object_calls += 1

    def __call__(self) -> Any:
        client = self.inner() if self.inner else boto3.client("s3")
        client.meta.events.register("before-call.s3.GetObject", self._count)
        self.clients_created += 1
        return client


def init_deployed(module_name: str, moto_endpoint: str, model_dir: Path, cache: Path) -> Any:
    """Import (INIT) a lambda_src entry module with the environment a deployment gives it: the
    model published to the S3 server, the cache in ``cache``. Always a fresh INIT, even if
    another area's tests imported the module with their environment."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in AWS_ENV.items():
            mp.setenv(name, value)
        mp.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
        published = ensure_published(model_dir)
        mp.setenv("MODEL_BUCKET", published.bucket)
        mp.setenv("MODEL_KEY", published.key)
        mp.setenv("MODEL_SHA256", published.sha256)
        mp.setenv("MODEL_CACHE_DIR", str(cache))
        sys.modules.pop(module_name, None)
        return importlib.import_module(module_name)
