"""Every answer the local endpoint gives - the function's and API Gateway's own - is one that
docs/openapi.yaml declares for that operation: status, body schema, stable code, headers.

schemathesis (test_local_schemathesis.py) explores inputs; this drives each gateway error on
purpose, including those no fuzzer reaches (throttling, quota, a failing or slow function).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from openapi_schema_validator import OAS31Validator
from serve_helpers import REPO_ROOT, ServedEndpoint

import local_mode.gateway as gateway_module
from local_mode.apispec import ApiSpec, load_spec
from local_mode.gateway import LocalGateway, serve_gateway

SPEC = yaml.safe_load((REPO_ROOT / "docs" / "openapi.yaml").read_text(encoding="utf-8"))
KEY = "contract-test-key-0123456789"


def _deref(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = SPEC
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def assert_declared(method: str, path: str, resp: requests.Response) -> dict[str, Any]:
    """The response is one docs/openapi.yaml declares for the operation; returns its body."""
    responses = SPEC["paths"][path][method.lower()]["responses"]
    status = str(resp.status_code)
    assert status in responses, f"{method} {path} -> {status} is not declared"
    declared = _deref(responses[status])
    content_type = resp.headers["Content-Type"].split(";")[0]
    assert content_type in declared["content"], f"{status} as {content_type} is not declared"
    schema = declared["content"][content_type]["schema"]
    body = resp.json()
    OAS31Validator({**schema, "components": SPEC["components"]}).validate(body)
    for name, header in declared.get("headers", {}).items():
        if _deref(header).get("required"):
            assert resp.headers.get(name), f"required header {name} missing"
    return dict(body)


class Stub:
    """Stands in for the function: a fixed proxy response, an exception, or a slow answer."""

    def __init__(self, *, error: Exception | None = None, delay_s: float = 0.0) -> None:
        self.error, self.delay_s = error, delay_s

    def invoke(self, event: dict[str, Any], request_id: str) -> Any:
        import time

        time.sleep(self.delay_s)
        if self.error:
            raise self.error
        return {"statusCode": 200, "body": json.dumps({"ok": True})}


@pytest.fixture(scope="module")
def spec(stack_template: Path) -> ApiSpec:
    return load_spec(stack_template)


def _call(
    spec: ApiSpec, stub: Stub, request: Callable[[str], requests.Response], **kwargs: Any
) -> requests.Response:
    gateway = LocalGateway(spec, stub, KEY, **kwargs)  # type: ignore[arg-type]
    with serve_gateway(gateway) as running:
        return request(running.endpoint)


@pytest.mark.parametrize(("method", "path"), [("POST", "/predict"), ("GET", "/health")])
def test_api_gateways_own_answers_are_declared_for_each_operation(
    spec: ApiSpec, method: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def call(headers: dict[str, str], body: bytes = b"") -> Callable[[str], requests.Response]:
        return lambda base: requests.request(
            method, base + path.lstrip("/"), headers=headers, data=body, timeout=10
        )

    ok = {"x-api-key": KEY, "Content-Type": "image/png"}
    codes = {}
    codes["key"] = _call(spec, Stub(), call({"x-api-key": "nope"}), throttle=False)
    codes["failed"] = _call(spec, Stub(error=RuntimeError("boom")), call(ok), throttle=False)
    throttled = replace(spec, throttle_rate_rps=0.01, throttle_burst=1)
    codes["throttled"] = _call(
        throttled, Stub(), lambda base: [call(ok)(base), call(ok)(base)][-1], throttle=True
    )
    over_quota = replace(spec, throttle_rate_rps=None, quota=(1, "DAY"))
    codes["quota"] = _call(
        over_quota, Stub(), lambda base: [call(ok)(base), call(ok)(base)][-1], throttle=True
    )
    codes["too_large"] = _call(spec, Stub(), call(ok, b"\0" * (5 * 1024 * 1024)), throttle=False)
    monkeypatch.setattr(gateway_module, "INTEGRATION_TIMEOUT_S", 0.05)
    codes["timeout"] = _call(spec, Stub(delay_s=0.2), call(ok), throttle=False)

    found = {
        name: (resp.status_code, assert_declared(method, path, resp)["error"]["code"])
        for name, resp in codes.items()
    }
    assert found == {
        "key": (403, "invalid_api_key"),
        "failed": (502, "function_error"),
        "throttled": (429, "throttled"),
        "quota": (429, "quota_exceeded"),
        "too_large": (413, "payload_too_large"),
        "timeout": (504, "integration_timeout"),
    }


def test_missing_content_type_is_a_declared_400(spec: ApiSpec) -> None:
    resp = _call(
        spec,
        Stub(),
        lambda base: requests.post(base + "predict", data=b"x", headers={"x-api-key": KEY}),
        throttle=False,
    )
    body = assert_declared("POST", "/predict", resp)
    assert (resp.status_code, body["error"]["code"]) == (400, "missing_parameter")


def test_the_real_functions_answers_through_the_gateway_are_declared(
    served: ServedEndpoint,
) -> None:
    auth = {"x-api-key": served.api_key}
    examples = SPEC["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    json_type = {"Content-Type": "application/json"}
    cases = [
        ("GET", "/health", {}, None, 200),
        ("POST", "/predict", json_type, json.dumps(examples["examples"]["single"]["value"]), 200),
        ("POST", "/predict", json_type, json.dumps(examples["examples"]["batch"]["value"]), 200),
        ("POST", "/predict", {"Content-Type": "application/json"}, b'{"image": "aGk="}', 400),
        ("POST", "/predict", {"Content-Type": "text/plain"}, b"hello", 415),
        ("POST", "/predict", {"Content-Type": "application/json"}, b"{not json", 400),
        ("POST", "/predict", {"Content-Type": "application/json"}, b'{"images": []}', 400),
        (
            "POST",
            "/predict",
            {"Content-Type": "application/json"},
            json.dumps({"images": ["aGk="] * 9}).encode(),
            413,
        ),
    ]
    for method, path, headers, body, status in cases:
        resp = requests.request(
            method,
            served.endpoint + path.lstrip("/"),
            headers={**auth, **headers},
            data=body,
            timeout=60,
        )
        assert resp.status_code == status, (path, body, resp.text)
        assert_declared(method, path, resp)
