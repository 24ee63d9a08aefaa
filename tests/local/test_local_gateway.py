"""The API Gateway emulator: linkage to the synthesized template, event format, gateway errors."""

from __future__ import annotations

import base64
import calendar
import http.client
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from local_mode.apispec import LOCAL_OVERRIDES, ApiSpec, TemplateError, load_spec, parse_template
from local_mode.gateway import (
    AccessRecord,
    FunctionRuntime,
    LocalGateway,
    QuotaCounter,
    render_access_log,
    serve_gateway,
)

EVENTS = Path(__file__).resolve().parents[1] / "events"
KEY = "test-api-key-0123456789abcdef"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


@pytest.fixture(scope="module")
def template(stack_template: Path) -> dict[str, Any]:
    return json.loads(stack_template.read_text())


@pytest.fixture(scope="module")
def spec(stack_template: Path) -> ApiSpec:
    return load_spec(stack_template)


def gateway_body(template: dict[str, Any], response_type: str, message: str = "") -> Any:
    """The body the stack's gateway response of this type words, read from the raw template."""
    (props,) = [
        r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::ApiGateway::GatewayResponse"
        and r["Properties"]["ResponseType"] == response_type
    ]
    text = props["ResponseTemplates"]["application/json"]
    return json.loads(text.replace("$context.error.message", message))


class Recorder:
    """Stands in for the function: records each event and answers with a fixed proxy response."""

    def __init__(self, response: Any = None, error: Exception | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.response = response or {
            "statusCode": 200,
            "headers": {"Content-Type": "application/json"},
            "body": json.dumps({"ok": True}),
            "isBase64Encoded": False,
        }
        self.error = error
        self.lock = threading.Lock()

    def invoke(self, event: dict[str, Any], request_id: str) -> Any:
        with self.lock:
            self.events.append(event)
        if self.error:
            raise self.error
        return self.response


@pytest.fixture
def gateway(spec: ApiSpec) -> Iterator[tuple[str, Recorder, LocalGateway]]:
    recorder = Recorder()
    gw = LocalGateway(spec, recorder, KEY, throttle=False)  # type: ignore[arg-type]
    with serve_gateway(gw) as running:
        yield running.endpoint, recorder, gw


# -- linkage: the emulator is configured by the committed template ----------------------------


def _paths_from_template(template: dict[str, Any]) -> set[tuple[str, str, bool]]:
    """Each proxy method as (HTTP method, full path, API key required), walked independently."""
    res = template["Resources"]

    def path(ref: Any) -> str:
        if "Fn::GetAtt" in ref:
            return ""
        props = res[ref["Ref"]]["Properties"]
        return path(props["ParentId"]) + "/" + props["PathPart"]

    return {
        (p["HttpMethod"], path(p["ResourceId"]) or "/", bool(p.get("ApiKeyRequired")))
        for r in res.values()
        if r["Type"] == "AWS::ApiGateway::Method"
        and (p := r["Properties"]).get("Integration", {}).get("Type") == "AWS_PROXY"
    }


def test_route_table_equals_the_templates_methods(spec, template):
    ours = {(r.method, r.path, r.api_key_required) for r in spec.routes}
    assert ours == _paths_from_template(template)
    assert ("POST", "/predict", True) in ours
    assert ("GET", "/health", True) in ours


def test_binary_media_types_stage_and_throttle_come_from_the_template(spec, template):
    res = template["Resources"].values()
    (api,) = [r for r in res if r["Type"] == "AWS::ApiGateway::RestApi"]
    assert list(spec.binary_media_types) == api["Properties"]["BinaryMediaTypes"]
    stages = {r["Properties"]["StageName"] for r in res if r["Type"] == "AWS::ApiGateway::Stage"}
    assert stages == {spec.stage}
    (plan,) = [r for r in res if r["Type"] == "AWS::ApiGateway::UsagePlan"]
    assert spec.throttle_rate_rps == plan["Properties"]["Throttle"]["RateLimit"]
    assert spec.throttle_burst == plan["Properties"]["Throttle"]["BurstLimit"]


def test_function_environment_memory_and_timeout_come_from_the_template(spec, template):
    function = template["Resources"][spec.function_logical_id]
    assert function["Type"] == "AWS::Lambda::Function"
    variables = function["Properties"]["Environment"]["Variables"]
    assert spec.environment == {k: v for k, v in variables.items() if k not in LOCAL_OVERRIDES}
    assert {"MODEL_BUCKET", "MODEL_KEY", "MODEL_SHA256"} <= set(variables)
    assert spec.memory_mb == function["Properties"]["MemorySize"]
    assert spec.timeout_s == function["Properties"]["Timeout"]


# -- events: the same shape as API Gateway's own ----------------------------------------------

# Keys real REST proxy events carry that the recorded sample happens to omit (AWS's "Lambda
# proxy integration input format": identity.apiKey/apiKeyId with an API key; the domain fields).
DOCUMENTED_EXTRAS = {
    "requestContext": {"domainName", "domainPrefix", "extendedRequestId"},
    "identity": {"apiKey", "apiKeyId", "principalOrgId"},
}
# Null in real events when the request has none of them (the sample's values are non-null).
NULLABLE = {
    "queryStringParameters",
    "multiValueQueryStringParameters",
    "pathParameters",
    "stageVariables",
    "body",
    "userAgent",
    "apiKey",
    "apiKeyId",
}
STRING_MAPS = {"headers", "queryStringParameters", "pathParameters", "stageVariables"}
LIST_MAPS = {"multiValueHeaders", "multiValueQueryStringParameters"}


def assert_same_shape(ours: dict[str, Any], recorded: dict[str, Any], where: str = "event"):
    assert set(recorded) <= set(ours), f"{where} lacks {set(recorded) - set(ours)}"
    extra = set(ours) - set(recorded)
    assert extra <= DOCUMENTED_EXTRAS.get(where, set()), f"{where} has unexpected keys {extra}"
    for key, expected in recorded.items():
        value = ours[key]
        if value is None or expected is None:
            assert key in NULLABLE or value == expected, f"{where}.{key} is null"
            continue
        assert type(value) is type(expected), f"{where}.{key}: {type(value)} != {type(expected)}"
        if key in STRING_MAPS:
            assert all(isinstance(v, str) for v in value.values()), f"{where}.{key}"
        elif key in LIST_MAPS:
            assert all(
                isinstance(v, list) and all(isinstance(i, str) for i in v) for v in value.values()
            ), f"{where}.{key}"
        elif isinstance(expected, dict):
            assert_same_shape(value, expected, key)


def test_binary_post_event_matches_recorded_api_gateway_event(gateway):
    url, recorder, _ = gateway
    resp = requests.post(
        url + "predict?top_k=3&top_k=4",
        data=PNG,
        headers={"x-api-key": KEY, "Content-Type": "image/png", "X-Repeat": "a"},
        timeout=10,
    )
    assert resp.status_code == 200
    (event,) = recorder.events
    assert_same_shape(event, json.loads((EVENTS / "predict_post.json").read_text()))
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == PNG
    assert (event["resource"], event["path"], event["httpMethod"]) == (
        "/predict",
        "/predict",
        "POST",
    )
    assert event["queryStringParameters"] == {"top_k": "4"}
    assert event["multiValueQueryStringParameters"] == {"top_k": ["3", "4"]}
    assert event["pathParameters"] is None
    ctx = event["requestContext"]
    assert ctx["path"] == f"/{ctx['stage']}/predict"
    assert ctx["resourcePath"] == "/predict"
    assert ctx["identity"]["apiKey"] == KEY
    assert ctx["identity"]["sourceIp"] == "127.0.0.1"
    assert resp.headers["x-amzn-RequestId"] == ctx["requestId"]


def test_health_event_matches_recorded_api_gateway_event(gateway):
    url, recorder, _ = gateway
    assert requests.get(url + "health", headers={"x-api-key": KEY}, timeout=10).ok
    (event,) = recorder.events
    assert_same_shape(event, json.loads((EVENTS / "health_get.json").read_text()))
    assert event["body"] is None
    assert event["isBase64Encoded"] is False
    assert event["queryStringParameters"] is None


def test_repeated_headers_appear_in_both_views(gateway):
    url, recorder, _ = gateway
    # requests folds duplicate header names; send two X-Repeat lines through http.client.
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.putrequest("GET", parts.path + "health")
    conn.putheader("x-api-key", KEY)
    conn.putheader("X-Repeat", "a")
    conn.putheader("X-Repeat", "b")
    conn.endheaders()
    assert conn.getresponse().status == 200
    conn.close()
    (event,) = recorder.events
    assert event["multiValueHeaders"]["X-Repeat"] == ["a", "b"]
    assert event["headers"]["X-Repeat"] == "b"


def test_json_body_is_passed_as_text(gateway):
    url, recorder, _ = gateway
    requests.post(url + "predict", json={"image": "aGk="}, headers={"x-api-key": KEY}, timeout=10)
    (event,) = recorder.events
    assert event["isBase64Encoded"] is False
    assert json.loads(event["body"]) == {"image": "aGk="}


def test_the_handlers_parser_accepts_the_emulated_event(gateway):
    import api  # lambda_src/api.py: the function's own request parsing

    url, recorder, _ = gateway
    requests.post(
        url + "predict?top_k=2",
        data=PNG,
        headers={"x-api-key": KEY, "Content-Type": "image/png"},
        timeout=10,
    )
    parsed = api.parse_predict(recorder.events[0])
    assert parsed.images == [PNG]
    assert parsed.top_k == 2


# -- what API Gateway answers itself ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "labels"), ("GET", "predict"), ("DELETE", "health"), ("POST", "")],
)
def test_unknown_route_is_missing_authentication_token(gateway, template, method, path):
    url, recorder, _ = gateway
    resp = requests.request(method, url + path, headers={"x-api-key": KEY}, timeout=10)
    assert resp.status_code == 403
    assert resp.json() == gateway_body(template, "MISSING_AUTHENTICATION_TOKEN")
    assert resp.json()["error"]["code"] == "route_not_found"
    assert resp.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
    assert recorder.events == []


@pytest.mark.parametrize("method", ["TRACE", "PROPFIND", "CONNECT", "BREW"])
def test_a_method_no_route_declares_is_answered_like_an_unknown_route(gateway, template, method):
    # http.server alone answers these with an HTML 501; API Gateway routes any method token.
    url, recorder, _ = gateway
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request(method, parts.path + "health", headers={"x-api-key": KEY})
    resp = conn.getresponse()
    body, status, content_type = resp.read(), resp.status, resp.getheader("Content-Type")
    conn.close()
    assert (status, content_type) == (403, "application/json")
    assert json.loads(body) == gateway_body(template, "MISSING_AUTHENTICATION_TOKEN")
    assert recorder.events == []


def test_head_on_a_get_route_is_an_unknown_route_without_a_body(gateway):
    url, recorder, _ = gateway
    resp = requests.head(url + "health", headers={"x-api-key": KEY}, timeout=10)
    assert resp.status_code == 403
    assert resp.content == b""
    assert int(resp.headers["Content-Length"]) > 0
    assert recorder.events == []


def test_path_without_the_stage_is_missing_authentication_token(gateway, template):
    url, _, _ = gateway
    base = url.rsplit("/", 2)[0]
    resp = requests.get(base + "/health", headers={"x-api-key": KEY}, timeout=10)
    assert resp.status_code == 403
    assert resp.json() == gateway_body(template, "MISSING_AUTHENTICATION_TOKEN")


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}, {"x-api-key": ""}])
def test_missing_or_wrong_api_key_is_forbidden(gateway, template, headers):
    url, recorder, _ = gateway
    resp = requests.get(url + "health", headers=headers, timeout=10)
    assert resp.status_code == 403
    assert resp.json() == gateway_body(template, "INVALID_API_KEY")
    assert resp.json()["error"]["code"] == "invalid_api_key"
    assert recorder.events == []


def test_api_key_header_name_is_case_insensitive(gateway):
    url, _, _ = gateway
    assert requests.get(url + "health", headers={"X-API-Key": KEY}, timeout=10).status_code == 200


def test_required_content_type_is_validated_before_the_function(gateway, spec, template):
    url, recorder, _ = gateway
    predict = spec.route("POST", "/predict")
    assert predict is not None
    assert predict.required_headers == ("Content-Type",)
    # requests adds no Content-Type for a bytes body.
    resp = requests.post(url + "predict", data=b"abc", headers={"x-api-key": KEY}, timeout=10)
    assert resp.status_code == 400
    assert resp.json() == {
        "error": {
            "code": "missing_parameter",
            "message": "Missing required request parameters: [Content-Type]",
        }
    }
    assert resp.json() == gateway_body(
        template, "BAD_REQUEST_PARAMETERS", "Missing required request parameters: [Content-Type]"
    )
    assert recorder.events == []


def test_body_over_10_mb_is_refused_by_api_gateways_front_end_in_plain_text(gateway):
    # Before any gateway response applies, as observed on AWS (local_mode/gateway.py cites it).
    url, recorder, _ = gateway
    resp = requests.post(
        url + "predict",
        data=b"\0" * (10 * 1024 * 1024 + 1),
        headers={"x-api-key": KEY, "Content-Type": "image/jpeg"},
        timeout=30,
    )
    assert resp.status_code == 413
    assert resp.headers["Content-Type"] == "text; charset=utf-8"
    assert resp.text == "HTTP content length exceeded 10485760 bytes."
    assert "x-amzn-RequestId" not in resp.headers
    assert recorder.events == []


def test_event_over_lambdas_6_mb_invoke_limit_is_refused(gateway, template):
    url, recorder, _ = gateway
    # 5 MB of image bytes becomes ~6.7 MB of base64 in the event.
    resp = requests.post(
        url + "predict",
        data=b"\0" * (5 * 1024 * 1024),
        headers={"x-api-key": KEY, "Content-Type": "image/jpeg"},
        timeout=30,
    )
    assert resp.status_code == 413
    assert resp.json() == gateway_body(template, "REQUEST_TOO_LARGE")
    assert resp.json()["error"]["code"] == "payload_too_large"
    assert recorder.events == []


def _serve_with(spec: ApiSpec, recorder: Recorder, **kwargs: Any):
    return serve_gateway(LocalGateway(spec, recorder, KEY, **kwargs))  # type: ignore[arg-type]


def test_function_exception_is_a_502_internal_server_error(spec, template):
    recorder = Recorder(error=RuntimeError("boom"))
    errors: list[str] = []
    with _serve_with(
        spec, recorder, throttle=False, on_function_error=lambda rid, exc: errors.append(str(exc))
    ) as running:
        resp = requests.get(running.endpoint + "health", headers={"x-api-key": KEY}, timeout=10)
    assert resp.status_code == 502
    assert resp.json() == gateway_body(template, "INTEGRATION_FAILURE")
    assert resp.json()["error"]["code"] == "function_error"
    assert errors == ["boom"]


@pytest.mark.parametrize(
    "response",
    [
        {"body": "no status"},
        {"statusCode": "200", "body": "status is a string"},
        {"statusCode": 200, "body": {"not": "a string"}},
        {"statusCode": 200, "body": "", "unexpected": 1},
        "just a string",
    ],
)
def test_malformed_proxy_response_is_a_502(spec, template, response):
    with _serve_with(spec, Recorder(response=response), throttle=False) as running:
        resp = requests.get(running.endpoint + "health", headers={"x-api-key": KEY}, timeout=10)
    assert resp.status_code == 502
    assert resp.json() == gateway_body(template, "INTEGRATION_FAILURE")


def test_base64_response_is_decoded_only_for_a_binary_accept(spec):
    response = {
        "statusCode": 200,
        "headers": {"Content-Type": "image/png"},
        "body": base64.b64encode(PNG).decode(),
        "isBase64Encoded": True,
    }
    with _serve_with(spec, Recorder(response=response), throttle=False) as running:
        url = running.endpoint + "health"
        binary = requests.get(url, headers={"x-api-key": KEY, "Accept": "image/png"}, timeout=10)
        text = requests.get(url, headers={"x-api-key": KEY, "Accept": "text/plain"}, timeout=10)
    assert binary.content == PNG
    assert text.content == response["body"].encode()


def test_usage_plan_rate_is_enforced_with_429(spec, template):
    recorder = Recorder()
    slow = replace(spec, throttle_rate_rps=0.5, throttle_burst=3)
    with _serve_with(slow, recorder, throttle=True) as running:
        codes = [
            requests.get(running.endpoint + "health", headers={"x-api-key": KEY}, timeout=10)
            for _ in range(6)
        ]
    assert [c.status_code for c in codes[:3]] == [200, 200, 200]
    assert all(c.status_code == 429 for c in codes[3:])
    assert codes[-1].json() == gateway_body(template, "THROTTLED")
    assert len(recorder.events) == 3


def test_usage_plan_quota_is_enforced_with_429_quota_exceeded(spec, template):
    recorder = Recorder()
    small = replace(spec, throttle_rate_rps=None, quota=(2, "DAY"))
    with _serve_with(small, recorder, throttle=True) as running:
        codes = [
            requests.get(running.endpoint + "health", headers={"x-api-key": KEY}, timeout=10)
            for _ in range(3)
        ]
    assert [c.status_code for c in codes] == [200, 200, 429]
    assert codes[-1].json() == gateway_body(template, "QUOTA_EXCEEDED")
    assert codes[-1].json()["error"]["code"] == "quota_exceeded"
    assert len(recorder.events) == 2


def test_quota_counts_per_calendar_period():
    now = [float(calendar.timegm((2026, 3, 9, 23, 59, 0)))]  # a Monday, 23:59 UTC
    daily = QuotaCounter(1, "DAY", clock=lambda: now[0])
    weekly = QuotaCounter(1, "WEEK", clock=lambda: now[0])
    assert [daily.take(), weekly.take()] == [True, True]
    assert [daily.take(), weekly.take()] == [False, False]
    now[0] += 120  # Tuesday: a new day, the same ISO week
    assert daily.take()
    assert not weekly.take()


def test_a_function_slower_than_the_integration_timeout_is_a_504(spec, template, monkeypatch):
    import local_mode.gateway as gateway_module

    class Slow(Recorder):
        def invoke(self, event: dict[str, Any], request_id: str) -> Any:
            time.sleep(0.2)
            return super().invoke(event, request_id)

    monkeypatch.setattr(gateway_module, "INTEGRATION_TIMEOUT_S", 0.05)
    with _serve_with(spec, Slow(), throttle=False) as running:
        resp = requests.get(running.endpoint + "health", headers={"x-api-key": KEY}, timeout=10)
    assert resp.status_code == 504
    assert resp.json() == gateway_body(template, "INTEGRATION_TIMEOUT")
    assert resp.json()["error"]["code"] == "integration_timeout"


def test_gateway_errors_carry_the_gateway_responses_headers(gateway, template):
    url, _, _ = gateway
    (props,) = [
        r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::ApiGateway::GatewayResponse"
        and r["Properties"]["ResponseType"] == "INVALID_API_KEY"
    ]
    static = {
        name.removeprefix("gatewayresponse.header."): value.strip("'")
        for name, value in props["ResponseParameters"].items()
    }
    assert static == {"Cache-Control": "no-store"}
    resp = requests.get(url + "health", headers={"x-api-key": "wrong"}, timeout=10)
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers["x-amzn-ErrorType"] == "ForbiddenException"
    assert resp.headers["x-amzn-RequestId"]


def _without_gateway_responses(template: dict[str, Any]) -> dict[str, Any]:
    changed = json.loads(json.dumps(template))
    resources = changed["Resources"]
    for logical in [
        k for k, r in resources.items() if r["Type"] == "AWS::ApiGateway::GatewayResponse"
    ]:
        del resources[logical]
    return changed


def test_a_template_without_gateway_responses_gets_api_gateways_defaults(template):
    bare = parse_template(_without_gateway_responses(template), stack="Bare")
    assert bare.gateway_responses == {}
    with _serve_with(bare, Recorder(), throttle=False) as running:
        resp = requests.get(running.endpoint + "health", headers={"x-api-key": "x"}, timeout=10)
        unknown = requests.get(running.endpoint + "nope", headers={"x-api-key": KEY}, timeout=10)
    assert (resp.status_code, resp.json()) == (403, {"message": "Forbidden"})
    assert (unknown.status_code, unknown.json()) == (
        403,
        {"message": "Missing Authentication Token"},
    )


def test_default_4xx_words_a_type_the_template_does_not_customize(template):
    changed = json.loads(json.dumps(template))
    for logical, r in list(changed["Resources"].items()):
        if r["Type"] == "AWS::ApiGateway::GatewayResponse":
            if r["Properties"]["ResponseType"] == "INVALID_API_KEY":
                del changed["Resources"][logical]
            elif r["Properties"]["ResponseType"] == "DEFAULT_4XX":
                r["Properties"]["StatusCode"] = "418"
    spec = parse_template(changed, stack="Changed")
    with _serve_with(spec, Recorder(), throttle=False) as running:
        resp = requests.get(running.endpoint + "health", headers={"x-api-key": "x"}, timeout=10)
        unknown = requests.get(running.endpoint + "nope", headers={"x-api-key": KEY}, timeout=10)
    # DEFAULT_4XX's body, and its status for every 4xx type that sets none (AWS documents both).
    assert (resp.status_code, resp.json()) == (418, gateway_body(template, "DEFAULT_4XX"))
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (418, "route_not_found")


@pytest.mark.parametrize(
    ("template_text", "problem"),
    [
        ('{"id": "$context.identity.sourceIp"}', r"\$context.identity.sourceIp"),
        ('{"s": "$stageVariables.name"}', r"\$stageVariables"),
    ],
)
def test_a_gateway_response_local_mode_cannot_render_stops_it(template, template_text, problem):
    changed = json.loads(json.dumps(template))
    for r in changed["Resources"].values():
        if r["Type"] == "AWS::ApiGateway::GatewayResponse":
            r["Properties"]["ResponseTemplates"]["application/json"] = template_text
    with pytest.raises(TemplateError, match=problem):
        parse_template(changed, stack="Changed")


def test_a_dynamic_gateway_response_header_stops_local_mode(template):
    changed = json.loads(json.dumps(template))
    for r in changed["Resources"].values():
        if r["Type"] == "AWS::ApiGateway::GatewayResponse":
            r["Properties"]["ResponseParameters"] = {
                "gatewayresponse.header.X-Origin": "method.request.header.Origin"
            }
    with pytest.raises(TemplateError, match="only static headers"):
        parse_template(changed, stack="Changed")


def test_failed_init_is_a_502_and_the_next_request_retries_it(spec, tmp_path):
    marker = tmp_path / "fail-once"
    marker.write_text("")
    (tmp_path / "flaky_handler.py").write_text(
        "import os, pathlib\n"
        f"_m = pathlib.Path({str(marker)!r})\n"
        "if _m.exists():\n"
        "    _m.unlink()\n"
        "    raise RuntimeError('INIT failed')\n"
        "def handler(event, context):\n"
        "    return {'statusCode': 200, 'body': context.function_name + ' '\n"
        "            + str(context.memory_limit_in_mb) + ' ' + os.environ['FLAKY_VAR']}\n"
    )
    runtime = FunctionRuntime(
        environment={"FLAKY_VAR": "from-env"},
        function_name="Flaky",
        memory_mb=1024,
        timeout_s=3,
        handler="flaky_handler.handler",
        code_dir=tmp_path,
    )
    try:
        with serve_gateway(LocalGateway(spec, runtime, KEY, throttle=False)) as running:
            get = lambda: requests.get(  # noqa: E731
                running.endpoint + "health", headers={"x-api-key": KEY}, timeout=10
            )
            first, second = get(), get()
    finally:
        runtime.close()
    assert first.status_code == 502
    assert second.status_code == 200
    assert second.text == "Flaky 1024 from-env"
    assert runtime.init_ms is not None


def test_access_log_lines_follow_the_stages_format(spec):
    assert spec.access_log_format, "the stage declares a JSON access log format"
    records: list[AccessRecord] = []
    with _serve_with(spec, Recorder(), throttle=False, on_access=records.append) as running:
        ok = requests.get(running.endpoint + "health", headers={"x-api-key": KEY}, timeout=10)
        denied = requests.get(running.endpoint + "health", timeout=10)
    lines = [json.loads(render_access_log(spec.access_log_format, r.context)) for r in records]
    by_id = {line["requestId"]: line for line in lines}
    served = by_id[ok.headers["x-amzn-RequestId"]]
    refused = by_id[denied.headers["x-amzn-RequestId"]]
    assert (served["httpMethod"], served["resourcePath"], served["status"]) == (
        "GET",
        "/health",
        "200",
    )
    assert served["ip"] == "127.0.0.1"
    assert served["integrationStatus"] == "200"
    assert (refused["status"], refused["errorMessage"]) == ("403", "Forbidden")
    assert refused["errorType"] == "INVALID_API_KEY"
    assert refused["integrationStatus"] == "-"  # the function never ran


def test_an_unresolvable_function_variable_stops_local_mode(template, spec):
    changed = json.loads(json.dumps(template))
    function = changed["Resources"][spec.function_logical_id]["Properties"]
    function["Environment"]["Variables"]["TABLE_NAME"] = {"Ref": "SomeTable"}
    with pytest.raises(TemplateError, match=r"\['TABLE_NAME'\] are CloudFormation expressions"):
        parse_template(changed, stack="Changed")


def test_a_route_added_to_the_template_is_served(template, spec):
    changed = json.loads(json.dumps(template))
    resources = changed["Resources"]
    predict_method = next(
        r
        for r in resources.values()
        if r["Type"] == "AWS::ApiGateway::Method" and r["Properties"]["HttpMethod"] == "POST"
    )
    api_ref = predict_method["Properties"]["RestApiId"]
    resources["LabelsResource"] = {
        "Type": "AWS::ApiGateway::Resource",
        "Properties": {
            "ParentId": predict_method["Properties"]["ResourceId"],
            "PathPart": "labels",
            "RestApiId": api_ref,
        },
    }
    resources["LabelsGet"] = {
        "Type": "AWS::ApiGateway::Method",
        "Properties": {
            **predict_method["Properties"],
            "HttpMethod": "GET",
            "ApiKeyRequired": False,
            "ResourceId": {"Ref": "LabelsResource"},
        },
    }
    added = parse_template(changed, stack="Changed").route("GET", "/predict/labels")
    assert added is not None
    assert added.api_key_required is False
    assert spec.route("GET", "/predict/labels") is None


def test_the_runtime_calls_the_handler_named_by_the_images_cmd(tmp_path):
    from local_mode.endpoint import image_handler

    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text('FROM base\nCMD ["first.handler"]\nCMD ["app.main"]\n')
    assert image_handler(dockerfile) == "app.main"  # the last CMD wins, as in Docker
    dockerfile.write_text("FROM base\n")
    with pytest.raises(TemplateError, match="no CMD"):
        image_handler(dockerfile)
