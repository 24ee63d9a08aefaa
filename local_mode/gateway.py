"""A local stand-in for API Gateway (REST API, Lambda proxy integration) in front of the handler.

Each HTTP request on 127.0.0.1 becomes the event API Gateway would send (resource, path, headers and
multiValueHeaders, query strings, requestContext with the API key identity, body base64-encoded
with isBase64Encoded=true for the API's binary media types), and the function's proxy response
becomes the HTTP response. Routes, API key requirements, binary media types, the stage and the
usage plan's throttle and quota come from the synthesized template (see apispec.py).

Answers that API Gateway itself gives, before or after the function, use the API's gateway
responses from the template (stacks/gateway_responses.py puts every one in the
{"error": {"code", "message"}} shape), with API Gateway's status for each: 403 for an unknown
resource or method (MISSING_AUTHENTICATION_TOKEN) and for a missing or wrong API key
(INVALID_API_KEY), 429 over the usage plan's rate (THROTTLED) or quota (QUOTA_EXCEEDED), 400 for a
missing required header (BAD_REQUEST_PARAMETERS), 413 over Lambda's 6 MB invoke limit
(REQUEST_TOO_LARGE), 502 when the function fails or returns a malformed response
(INTEGRATION_FAILURE) and 504 past the 29 s integration timeout (INTEGRATION_TIMEOUT). A template
without gateway responses gets API Gateway's defaults ({"message": "Forbidden"}, ...). A body over
API Gateway's 10 MB limit is refused by its front end before any of that, in plain text.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import importlib
import json
import re
import secrets
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from .apispec import ApiSpec, Route
from .s3 import apply_env, restore_env

LAMBDA_SRC = Path(__file__).resolve().parents[1] / "lambda_src"

API_PAYLOAD_LIMIT = 10 * 1024 * 1024  # API Gateway REST: 10 MB request body
LAMBDA_INVOKE_LIMIT = 6 * 1024 * 1024  # synchronous Invoke request payload (the whole event)
LAMBDA_RESPONSE_LIMIT = 6 * 1024 * 1024 + 100  # synchronous Invoke response payload
INTEGRATION_TIMEOUT_S = 29.0  # API Gateway REST default integration timeout

LOCAL_ACCOUNT_ID = "123456789012"
LOCAL_API_ID = "local0api0"
LOCAL_API_KEY_ID = "local0key0"

# Hop-by-hop headers are consumed by API Gateway's front end and never reach the integration.
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "trailer"}


# -- the function ---------------------------------------------------------------------------


@dataclass
class LambdaContext:
    """The attributes of the Lambda Python runtime's context object that handlers use."""

    aws_request_id: str
    function_name: str
    memory_limit_in_mb: int
    timeout_s: int
    function_version: str = "$LATEST"
    invoked_function_arn: str = ""
    log_group_name: str = ""
    log_stream_name: str = ""
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_s
        region = "us-east-1"
        self.invoked_function_arn = self.invoked_function_arn or (
            f"arn:aws:lambda:{region}:{LOCAL_ACCOUNT_ID}:function:{self.function_name}:live"
        )
        self.log_group_name = self.log_group_name or f"/aws/lambda/{self.function_name}"
        self.log_stream_name = self.log_stream_name or "local/[$LATEST]" + uuid.uuid4().hex

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class FunctionRuntime:
    """One execution environment for lambda_src/handler.py, in this process.

    Like Lambda, INIT (importing the module, which loads the model) happens on the first
    invocation, and a failed INIT is retried by the next one. Invocations are serialised: an
    execution environment handles one event at a time.
    """

    def __init__(
        self,
        *,
        environment: dict[str, str],
        function_name: str,
        memory_mb: int,
        timeout_s: int,
        handler: str = "handler.handler",
        code_dir: Path = LAMBDA_SRC,
    ) -> None:
        self.environment = environment
        self.function_name = function_name
        self.memory_mb = memory_mb
        self.timeout_s = timeout_s
        self.module_name, self.function_attr = handler.rsplit(".", 1)
        self.code_dir = code_dir
        self._fn: Callable[[dict[str, Any], Any], Any] | None = None
        self._lock = threading.Lock()
        self._previous_env: dict[str, str | None] | None = None
        self.init_ms: float | None = None
        self.invocations = 0

    def _init(self) -> Callable[[dict[str, Any], Any], Any]:
        if self._previous_env is None:
            self._previous_env = apply_env(self.environment)
        if str(self.code_dir) not in sys.path:
            sys.path.insert(0, str(self.code_dir))
        start = time.perf_counter()
        # A fresh execution environment: INIT runs again even if an earlier runtime imported it.
        sys.modules.pop(self.module_name, None)
        module = importlib.import_module(self.module_name)
        fn = getattr(module, self.function_attr)
        self.init_ms = (time.perf_counter() - start) * 1000
        return fn

    def invoke(self, event: dict[str, Any], request_id: str) -> Any:
        """Run the handler; exceptions propagate (the gateway turns them into a 502)."""
        with self._lock:
            if self._fn is None:
                self._fn = self._init()
            context = LambdaContext(
                aws_request_id=request_id,
                function_name=self.function_name,
                memory_limit_in_mb=self.memory_mb,
                timeout_s=self.timeout_s,
            )
            self.invocations += 1
            return self._fn(event, context)

    def close(self) -> None:
        if self._previous_env is not None:
            restore_env(self._previous_env)
            self._previous_env = None


class FunctionInvoker(Protocol):
    """What the gateway invokes: FunctionRuntime here, or environments.EnvironmentPool."""

    def invoke(self, event: dict[str, Any], request_id: str) -> Any: ...


# -- events -----------------------------------------------------------------------------------


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_binary(content_type: str | None, binary_media_types: tuple[str, ...]) -> bool:
    """API Gateway's match of a Content-Type (or Accept) value against binaryMediaTypes."""
    mt = media_type(content_type)
    if not mt:
        return False
    for pattern in binary_media_types:
        p = pattern.lower()
        if p == mt or p == "*/*":
            return True
        if p.endswith("/*") and mt.startswith(p[:-1]):
            return True
    return False


def _multi(
    pairs: list[tuple[str, str]],
) -> tuple[dict[str, str] | None, dict[str, list[str]] | None]:
    """API Gateway's two views of repeated names: last value wins, and every value in order."""
    if not pairs:
        return None, None
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for k, v in pairs:
        single[k] = v
        multi.setdefault(k, []).append(v)
    return single, multi


def build_event(
    *,
    spec: ApiSpec,
    method: str,
    resource_path: str,
    query: str,
    headers: list[tuple[str, str]],
    body: bytes,
    source_ip: str,
    request_id: str,
    api_key: str | None,
    now: float | None = None,
    resource_id: str = "local0res0",
) -> dict[str, Any]:
    """The REST API Lambda proxy event for one request (the `resource` equals the path: this API
    has no path parameters)."""
    now = time.time() if now is None else now
    trace = f"Root=1-{int(now):08x}-{secrets.token_hex(12)}"
    pairs = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP]
    # Headers API Gateway adds on its way in.
    pairs += [
        ("X-Amzn-Trace-Id", trace),
        ("X-Forwarded-For", source_ip),
        ("X-Forwarded-Port", str(_local_port(headers))),
        ("X-Forwarded-Proto", "http"),
    ]
    header_map, multi_headers = _multi(pairs)
    query_map, multi_query = _multi(parse_qsl(query, keep_blank_values=True))
    content_type = next((v for k, v in headers if k.lower() == "content-type"), None)
    user_agent = next((v for k, v in headers if k.lower() == "user-agent"), None)
    if not body:
        event_body, b64 = None, False
    elif is_binary(content_type, spec.binary_media_types):
        event_body, b64 = base64.b64encode(body).decode("ascii"), True
    else:
        # Text media types travel as a string; undecodable bytes arrive replaced, as in AWS.
        event_body, b64 = body.decode("utf-8", errors="replace"), False
    host = next((v for k, v in headers if k.lower() == "host"), "127.0.0.1")
    return {
        "resource": resource_path,
        "path": resource_path,
        "httpMethod": method,
        "headers": header_map,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": query_map,
        "multiValueQueryStringParameters": multi_query,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": resource_id,
            "resourcePath": resource_path,
            "httpMethod": method,
            "extendedRequestId": base64.b64encode(uuid.uuid4().bytes[:9]).decode("ascii"),
            "requestTime": _request_time(now),
            "path": f"/{spec.stage}{resource_path}",
            "accountId": LOCAL_ACCOUNT_ID,
            "protocol": "HTTP/1.1",
            "stage": spec.stage,
            "domainPrefix": host.split(".")[0].split(":")[0],
            "requestTimeEpoch": int(now * 1000),
            "requestId": request_id,
            "identity": {
                "cognitoIdentityPoolId": None,
                "accountId": None,
                "cognitoIdentityId": None,
                "caller": None,
                "apiKey": api_key,
                "principalOrgId": None,
                "sourceIp": source_ip,
                "cognitoAuthenticationType": None,
                "cognitoAuthenticationProvider": None,
                "userArn": None,
                "userAgent": user_agent,
                "user": None,
                "accessKey": None,
                "apiKeyId": LOCAL_API_KEY_ID if api_key else None,
            },
            "domainName": host,
            "apiId": LOCAL_API_ID,
        },
        "body": event_body,
        "isBase64Encoded": b64,
    }


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _request_time(now: float) -> str:
    # API Gateway's CLF timestamp uses English month names whatever the locale.
    t = time.gmtime(now)
    month = _MONTHS[t.tm_mon - 1]
    return (
        f"{t.tm_mday:02d}/{month}/{t.tm_year}:{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
    )


def _local_port(headers: list[tuple[str, str]]) -> int:
    host = next((v for k, v in headers if k.lower() == "host"), "")
    _, _, port = host.rpartition(":")
    return int(port) if port.isdigit() else 80


# -- the gateway ------------------------------------------------------------------------------


class TokenBucket:
    """The usage plan's throttle: `rate` requests per second steady state, `burst` at once."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.capacity, self._clock = rate, float(max(burst, 1)), clock
        self._tokens, self._last = self.capacity, clock()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False


@dataclass(frozen=True)
class GatewayFailure:
    """One of API Gateway's own answers (a gateway response with its default status/message)."""

    status: int
    message: str
    error_type: str  # the x-amzn-ErrorType header
    response_type: str  # $context.error.responseType in access logs


MISSING_TOKEN = GatewayFailure(
    403,
    "Missing Authentication Token",
    "MissingAuthenticationTokenException",
    "MISSING_AUTHENTICATION_TOKEN",
)
FORBIDDEN = GatewayFailure(403, "Forbidden", "ForbiddenException", "INVALID_API_KEY")
THROTTLED = GatewayFailure(429, "Too Many Requests", "TooManyRequestsException", "THROTTLED")
QUOTA_EXCEEDED = GatewayFailure(429, "Limit Exceeded", "LimitExceededException", "QUOTA_EXCEEDED")
# An event over Lambda's invoke limit, as observed: 413 {"message": "Request Too Long"} with
# x-amzn-ErrorType BadRequestException (github.com/koki-develop/lgtm-generator/issues/10).
TOO_LARGE = GatewayFailure(413, "Request Too Long", "BadRequestException", "REQUEST_TOO_LARGE")
# A function error or malformed/oversized proxy response: 502, logged as INTEGRATION_FAILURE
# (Lambda guide "Handling Lambda errors with an API Gateway API"; access logs quoted in
# github.com/DataBiosphere/azul/issues/8258 and /7470).
INTERNAL = GatewayFailure(
    502, "Internal server error", "InternalServerErrorException", "INTEGRATION_FAILURE"
)
TIMED_OUT = GatewayFailure(
    504, "Endpoint request timed out", "IntegrationTimeoutException", "INTEGRATION_TIMEOUT"
)


class IntegrationFailure(Exception):
    """Raised by a function invoker when Lambda itself rejects the invoke (no function ran, e.g.
    throttled); API Gateway then answers with `failure` instead of its function-error 502."""

    def __init__(self, failure: GatewayFailure, reason: str) -> None:
        super().__init__(reason)
        self.failure = failure


@dataclass
class Outcome:
    """What the gateway answers for one request, and what its access log would record."""

    status: int
    headers: dict[str, str]
    body: bytes
    failure: GatewayFailure | None = None
    front_end: bool = False  # refused before API Gateway proper: no request id, no access log
    resource_path: str | None = None
    event: dict[str, Any] | None = None
    integration_latency_ms: float | None = None
    integration_status: int | None = None  # Lambda's Invoke status: 200 once it ran


def gateway_error(failure: GatewayFailure, **details: Any) -> Outcome:
    body = json.dumps({"message": failure.message}).encode()
    headers = {"Content-Type": "application/json", "x-amzn-ErrorType": failure.error_type}
    return Outcome(failure.status, headers, body, failure=failure, **details)


def front_end_too_large() -> Outcome:
    """A body over 10 MB, refused by API Gateway's front end before gateway responses apply.

    As observed (github.com/koki-develop/lgtm-generator/issues/10; a REQUEST_TOO_LARGE gateway
    response did not change it, as also reported in github.com/reapit/foundations/issues/4338).
    """
    body = f"HTTP content length exceeded {API_PAYLOAD_LIMIT} bytes.".encode()
    return Outcome(413, {"Content-Type": "text; charset=utf-8"}, body, front_end=True)


# -- gateway responses: API Gateway's own errors, as the template words them ----------------

_CONTEXT_IN_TEMPLATE = re.compile(
    r"\$context\.([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)"
)


def render_gateway_response(
    spec: ApiSpec, failure: GatewayFailure, request_id: str
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one of API Gateway's own answers.

    The response of the failure's type, else DEFAULT_4XX/DEFAULT_5XX, else API Gateway's default
    {"message": ...}. A status set on the DEFAULT type applies to every type of its class that
    sets none ("Gateway response types for API Gateway").
    """
    fallback = spec.gateway_responses.get("DEFAULT_4XX" if failure.status < 500 else "DEFAULT_5XX")
    response = spec.gateway_responses.get(failure.response_type) or fallback
    status = (
        (response.status_code if response else None)
        or (fallback.status_code if fallback else None)
        or failure.status
    )
    headers = {"x-amzn-ErrorType": failure.error_type}
    if response is None or not response.templates:
        headers["Content-Type"] = "application/json"
        return status, headers, json.dumps({"message": failure.message}).encode()
    content_type = "application/json" if "application/json" in response.templates else ""
    content_type = content_type or next(iter(response.templates))
    values = {
        "requestId": request_id,
        "error.message": failure.message,
        "error.messageString": json.dumps(failure.message),
        "error.responseType": failure.response_type,
    }
    body = _CONTEXT_IN_TEMPLATE.sub(lambda m: values[m.group(1)], response.templates[content_type])
    return status, {"Content-Type": content_type, **headers, **response.headers}, body.encode()


class QuotaCounter:
    """The usage plan's quota: `limit` requests per calendar DAY, WEEK or MONTH (UTC)."""

    def __init__(self, limit: int, period: str, clock: Callable[[], float] = time.time) -> None:
        if period not in ("DAY", "WEEK", "MONTH"):
            raise ValueError(f"unknown quota period {period!r}")
        self.limit, self.period, self._clock = limit, period, clock
        self._window: tuple[int, ...] = ()
        self._used = 0
        self._lock = threading.Lock()

    def _current_window(self) -> tuple[int, ...]:
        t = time.gmtime(self._clock())
        if self.period == "DAY":
            return (t.tm_year, t.tm_yday)
        if self.period == "WEEK":
            year, week, _ = datetime.date(t.tm_year, t.tm_mon, t.tm_mday).isocalendar()
            return (year, week)
        return (t.tm_year, t.tm_mon)

    def take(self) -> bool:
        with self._lock:
            window = self._current_window()
            if window != self._window:
                self._window, self._used = window, 0
            if self._used >= self.limit:
                return False
            self._used += 1
            return True


@dataclass(frozen=True)
class AccessRecord:
    """One request as API Gateway's access log sees it; `context` holds $context values."""

    request_id: str
    method: str
    path: str
    status: int
    response_latency_ms: float
    integration_latency_ms: float | None
    context: dict[str, str] = field(default_factory=dict)


_CONTEXT_VARIABLE = re.compile(r"\$context\.([A-Za-z0-9_.]+)")


def render_access_log(log_format: str, context: dict[str, str]) -> str:
    """Fill the stage's access log format; API Gateway writes "-" for values it does not have."""
    return _CONTEXT_VARIABLE.sub(lambda m: context.get(m.group(1), "-"), log_format)


class LocalGateway:
    """Routes HTTP requests to a FunctionRuntime the way the stack's REST API does."""

    def __init__(
        self,
        spec: ApiSpec,
        runtime: FunctionInvoker,
        api_key: str,
        *,
        throttle: bool = True,
        on_access: Callable[[AccessRecord], None] | None = None,
        on_function_error: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.spec = spec
        self.runtime = runtime
        self.api_key = api_key
        self.on_access = on_access
        self.on_function_error = on_function_error
        self.bucket = (
            TokenBucket(spec.throttle_rate_rps, spec.throttle_burst or 1)
            if throttle and spec.throttle_rate_rps
            else None
        )
        self.quota = QuotaCounter(*spec.quota) if throttle and spec.quota else None
        self.events_seen = 0

    def finish(self, outcome: Outcome, request_id: str) -> Outcome:
        """Word API Gateway's own answers with the API's gateway responses."""
        if outcome.failure is None:
            return outcome
        outcome.status, outcome.headers, outcome.body = render_gateway_response(
            self.spec, outcome.failure, request_id
        )
        return outcome

    def handle(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
        source_ip: str,
        request_id: str,
    ) -> Outcome:
        """One request -> the response API Gateway would send (checks in API Gateway's order)."""
        url = urlsplit(target)
        path = unquote(url.path)
        prefix = f"/{self.spec.stage}"
        if path != prefix and not path.startswith(prefix + "/"):
            return gateway_error(MISSING_TOKEN)
        resource_path = path[len(prefix) :] or "/"
        if len(resource_path) > 1:
            resource_path = resource_path.rstrip("/") or "/"
        route = self.spec.route(method, resource_path)
        if route is None:
            return gateway_error(MISSING_TOKEN)
        known = {"resource_path": resource_path}
        sent_key = next((v for k, v in headers if k.lower() == "x-api-key"), None)
        if route.api_key_required and not (
            sent_key and secrets.compare_digest(sent_key, self.api_key)
        ):
            return gateway_error(FORBIDDEN, **known)
        if self.bucket is not None and not self.bucket.take():
            return gateway_error(THROTTLED, **known)
        if self.quota is not None and not self.quota.take():
            return gateway_error(QUOTA_EXCEEDED, **known)
        missing = self._missing_parameters(route, headers, url.query)
        if missing:
            message = f"Missing required request parameters: [{', '.join(missing)}]"
            failure = GatewayFailure(400, message, "BadRequestException", "BAD_REQUEST_PARAMETERS")
            return gateway_error(failure, **known)
        if len(body) > API_PAYLOAD_LIMIT:
            return gateway_error(TOO_LARGE, **known)
        event = build_event(
            spec=self.spec,
            method=method,
            resource_path=resource_path,
            query=url.query,
            headers=headers,
            body=body,
            source_ip=source_ip,
            request_id=request_id,
            api_key=sent_key if route.api_key_required else None,
        )
        if len(json.dumps(event)) > LAMBDA_INVOKE_LIMIT:
            return gateway_error(TOO_LARGE, event=event, **known)
        self.events_seen += 1
        start = time.perf_counter()
        try:
            result = self.runtime.invoke(event, request_id)
        except IntegrationFailure as exc:
            latency_ms = (time.perf_counter() - start) * 1000
            return gateway_error(
                exc.failure, event=event, integration_latency_ms=latency_ms, **known
            )
        except Exception as exc:  # any function failure is a 502, as in AWS
            if self.on_function_error:
                self.on_function_error(request_id, exc)
            latency_ms = (time.perf_counter() - start) * 1000
            return gateway_error(INTERNAL, event=event, integration_latency_ms=latency_ms, **known)
        latency_ms = (time.perf_counter() - start) * 1000
        ran = {"event": event, "integration_latency_ms": latency_ms, "integration_status": 200}
        if latency_ms > INTEGRATION_TIMEOUT_S * 1000:
            return gateway_error(TIMED_OUT, **ran, **known)
        accept = next((v for k, v in headers if k.lower() == "accept"), None)
        response = self._proxy_response(result, accept)
        if response is None:
            if self.on_function_error:
                self.on_function_error(request_id, ValueError("malformed Lambda proxy response"))
            return gateway_error(INTERNAL, **ran, **known)
        status, response_headers, payload = response
        return Outcome(status, response_headers, payload, **ran, **known)  # type: ignore[arg-type]

    @staticmethod
    def _missing_parameters(route: Route, headers: list[tuple[str, str]], query: str) -> list[str]:
        present = {k.lower() for k, v in headers if v}
        names = {k for k, _ in parse_qsl(query, keep_blank_values=True)}
        return [h for h in route.required_headers if h.lower() not in present] + [
            q for q in route.required_query if q not in names
        ]

    def _proxy_response(
        self, result: Any, accept: str | None
    ) -> tuple[int, dict[str, str], bytes] | None:
        """Validate and translate a Lambda proxy response; None when API Gateway would 502."""
        try:
            if len(json.dumps(result)) > LAMBDA_RESPONSE_LIMIT:
                return None
        except (TypeError, ValueError):
            return None
        if not isinstance(result, dict) or not isinstance(result.get("statusCode"), int):
            return None
        allowed = {"statusCode", "headers", "multiValueHeaders", "body", "isBase64Encoded"}
        if set(result) - allowed:
            return None
        headers: dict[str, str] = {}
        for k, v in (result.get("headers") or {}).items():
            headers[str(k)] = str(v)
        for k, values in (result.get("multiValueHeaders") or {}).items():
            headers[str(k)] = ", ".join(str(v) for v in values)
        body_value = result.get("body")
        if body_value is None:
            body = b""
        elif not isinstance(body_value, str):
            return None
        elif result.get("isBase64Encoded") and is_binary(accept, self.spec.binary_media_types):
            # REST APIs only decode a base64 body when the client's Accept is a binary type.
            try:
                body = base64.b64decode(body_value, validate=True)
            except ValueError:
                return None
        else:
            body = body_value.encode("utf-8")
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json"
        return result["statusCode"], headers, body


class _HTTPHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LocalApiGateway/1.0"
    timeout = 5  # idle keep-alive connections end, so shutdown never waits long
    server: _Server

    def _serve(self) -> None:
        gateway = self.server.gateway
        request_id = str(uuid.uuid4())
        received = time.time()
        start = time.perf_counter()
        body = self._read_body()
        if body is None:
            outcome = front_end_too_large()
            self.close_connection = True
        else:
            try:
                outcome = gateway.handle(
                    self.command,
                    self.path,
                    list(self.headers.items()),
                    body,
                    self.client_address[0],
                    request_id,
                )
            except Exception as exc:  # the emulator must answer, never hang
                outcome = gateway_error(INTERNAL)
                if gateway.on_function_error:
                    gateway.on_function_error(request_id, exc)
            outcome = gateway.finish(outcome, request_id)
        self.send_response(outcome.status)
        for k, v in outcome.headers.items():
            self.send_header(k, v)
        if not outcome.front_end:
            self.send_header("x-amzn-RequestId", request_id)
            self.send_header("x-amz-apigw-id", base64.b64encode(uuid.uuid4().bytes[:6]).decode())
        self.send_header("Content-Length", str(len(outcome.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(outcome.body)
        if gateway.on_access and not outcome.front_end:
            latency_ms = (time.perf_counter() - start) * 1000
            gateway.on_access(
                AccessRecord(
                    request_id=request_id,
                    method=self.command,
                    path=self.path,
                    status=outcome.status,
                    response_latency_ms=latency_ms,
                    integration_latency_ms=outcome.integration_latency_ms,
                    context=self._access_context(outcome, request_id, received, latency_ms),
                )
            )

    def _access_context(
        self, outcome: Outcome, request_id: str, received: float, latency_ms: float
    ) -> dict[str, str]:
        event = outcome.event or {}
        ctx = event.get("requestContext", {})
        trace = (event.get("headers") or {}).get("X-Amzn-Trace-Id", "")
        values: dict[str, Any] = {
            "requestId": request_id,
            "extendedRequestId": ctx.get("extendedRequestId"),
            "xrayTraceId": trace.removeprefix("Root=") or None,
            "requestTime": _request_time(received),
            "requestTimeEpoch": int(received * 1000),
            "identity.sourceIp": self.client_address[0],
            "identity.userAgent": self.headers.get("User-Agent"),
            "identity.apiKeyId": ctx.get("identity", {}).get("apiKeyId"),
            "httpMethod": self.command,
            "resourcePath": outcome.resource_path,
            "path": self.path.split("?", 1)[0],
            "protocol": self.request_version,
            "stage": self.server.gateway.spec.stage,
            "status": outcome.status,
            "responseLength": len(outcome.body),
            "responseLatency": round(latency_ms),
            "integration.status": outcome.integration_status,
            "integration.latency": (
                round(outcome.integration_latency_ms)
                if outcome.integration_latency_ms is not None
                else None
            ),
            "integrationLatency": (
                round(outcome.integration_latency_ms)
                if outcome.integration_latency_ms is not None
                else None
            ),
            "error.message": outcome.failure.message if outcome.failure else None,
            "error.responseType": outcome.failure.response_type if outcome.failure else None,
        }
        return {k: str(v) for k, v in values.items() if v is not None}

    def _read_body(self) -> bytes | None:
        """The request body, or None when it exceeds API Gateway's payload limit."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                total += size
                if total > API_PAYLOAD_LIMIT:
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > API_PAYLOAD_LIMIT:
            return None
        return self.rfile.read(length) if length else b""

    def __getattr__(self, name: str) -> Any:
        # http.server answers a method without a do_<METHOD> with an HTML 501; API Gateway routes
        # every method token, and one the resource does not declare (TRACE, PROPFIND, ...) gets
        # MISSING_AUTHENTICATION_TOKEN like an unknown path.
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # access records go to LocalGateway.on_access instead of stderr


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins request threads: nothing is left running
    gateway: LocalGateway

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-response (Ctrl-C, a timeout) is not the gateway's error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def end_keep_alives(self) -> None:
        """Let idle keep-alive connections see EOF now; a response in flight still completes."""
        with self._connections_lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RD)


@dataclass
class RunningGateway:
    gateway: LocalGateway
    host: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        """What the stack's endpoint URL output looks like: base URL plus the stage."""
        return f"{self.base_url}/{self.gateway.spec.stage}/"


@contextmanager
def serve_gateway(gateway: LocalGateway, port: int = 0) -> Iterator[RunningGateway]:
    """Serve on 127.0.0.1 (port 0: a free one) in a background thread; stop cleanly on exit."""
    server = _Server(("127.0.0.1", port), _HTTPHandler)
    server.gateway = gateway
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="local-gateway", daemon=True
    )
    thread.start()
    try:
        host, bound_port = server.server_address[:2]
        yield RunningGateway(gateway=gateway, host=str(host), port=int(bound_port))
    finally:
        server.shutdown()
        server.end_keep_alives()
        server.server_close()
        thread.join(timeout=10)
