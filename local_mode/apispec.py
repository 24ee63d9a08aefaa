"""What the local gateway needs, read from the synthesized CloudFormation of a stage.

Routes, API key requirements, binary media types, the stage name, the usage plan's throttle and
quota, the API's gateway responses (its own error answers) and the function's environment, memory
and timeout all come from the template that `cdk deploy` would apply
(templates/<Stack>.template.json, kept current by `make templates`), so local and deployed
behaviour cannot drift apart silently: anything the emulator cannot honour is an error here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATES_DIR = REPO_ROOT / "templates"
DEFAULT_STACK = "ResnetServingDev"

# Set by local mode itself: where the model lives and how boto3 reaches S3 differ on one machine.
LOCAL_OVERRIDES = frozenset(
    {"MODEL_BUCKET", "MODEL_KEY", "MODEL_SHA256", "MODEL_CACHE_DIR", "AWS_ENDPOINT_URL_S3"}
)


class TemplateError(Exception):
    """The template lacks something the local gateway must mirror."""


# The $context variables a gateway response template may use locally; API Gateway knows more,
# and a template using one of those is refused here rather than rendered differently.
GATEWAY_TEMPLATE_VARIABLES = frozenset(
    {"requestId", "error.message", "error.messageString", "error.responseType"}
)
_TEMPLATE_VARIABLE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z_][A-Za-z0-9_]*)*)")


@dataclass(frozen=True)
class GatewayResponse:
    """An AWS::ApiGateway::GatewayResponse: how API Gateway words one type of its own errors."""

    response_type: str  # "MISSING_AUTHENTICATION_TOKEN", "DEFAULT_4XX", ...
    status_code: int | None  # None: the status API Gateway chose is kept
    templates: dict[str, str]  # content type -> body template (plain $context substitution)
    headers: dict[str, str]  # static response headers, unquoted


@dataclass(frozen=True)
class Route:
    method: str  # "POST"
    path: str  # "/predict"
    api_key_required: bool
    resource_id: str  # logical id of the AWS::ApiGateway::Resource (or "root")
    authorization: str = "NONE"  # "AWS_IAM" is not verified locally (no SigV4 check)
    # Enforced only when the method's request validator validates parameters, as in AWS.
    required_headers: tuple[str, ...] = ()
    required_query: tuple[str, ...] = ()


@dataclass(frozen=True)
class ApiSpec:
    stack: str
    stage: str
    routes: tuple[Route, ...]
    binary_media_types: tuple[str, ...]
    environment: dict[str, str]  # the function's variables, minus LOCAL_OVERRIDES
    function_logical_id: str
    memory_mb: int
    timeout_s: int
    throttle_rate_rps: float | None = None  # usage plan steady-state rate
    throttle_burst: int | None = None
    quota: tuple[int, str] | None = None  # (limit, DAY/WEEK/MONTH), enforced with the throttle
    access_log_format: str | None = None  # the stage's AccessLogSetting.Format
    gateway_responses: dict[str, GatewayResponse] = field(default_factory=dict)  # by type
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def route(self, method: str, path: str) -> Route | None:
        for r in self.routes:
            if r.path == path and r.method in (method, "ANY"):
                return r
        return None

    def has_path(self, path: str) -> bool:
        return any(r.path == path for r in self.routes)


def template_path(stack: str = DEFAULT_STACK) -> Path:
    return TEMPLATES_DIR / f"{stack}.template.json"


def load_spec(path: Path | None = None, stack: str = DEFAULT_STACK) -> ApiSpec:
    path = path or template_path(stack)
    try:
        template = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise TemplateError(
            f"{path} not found: the synthesized stack is committed by the infrastructure code "
            "(`make templates` writes it)"
        ) from exc
    return parse_template(template, stack=path.name.split(".")[0], source=str(path))


def _of_type(resources: dict[str, Any], cfn_type: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in resources.items() if v.get("Type") == cfn_type}


def _one(resources: dict[str, Any], cfn_type: str) -> tuple[str, dict[str, Any]]:
    found = _of_type(resources, cfn_type)
    if len(found) != 1:
        raise TemplateError(f"expected exactly one {cfn_type}, found {len(found)}")
    return next(iter(found.items()))


def _refs(value: Any) -> set[str]:
    """Logical ids referenced anywhere inside an intrinsic (Ref, Fn::GetAtt, Fn::Sub...)."""
    out: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "Ref" and isinstance(v, str):
                out.add(v)
            elif k == "Fn::GetAtt":
                target = v[0] if isinstance(v, list) else str(v).split(".")[0]
                out.add(target)
            else:
                out |= _refs(v)
    elif isinstance(value, list):
        for v in value:
            out |= _refs(v)
    return out


def parse_template(template: dict[str, Any], *, stack: str, source: str = "") -> ApiSpec:
    resources: dict[str, Any] = template.get("Resources", {})
    api_id, api = _one(resources, "AWS::ApiGateway::RestApi")
    api_props = api.get("Properties", {})
    # API Gateway's patch syntax escapes "/" as "~1"; the template may carry either spelling.
    binary = tuple(t.replace("~1", "/") for t in api_props.get("BinaryMediaTypes", []))

    api_resources = {
        k: v
        for k, v in _of_type(resources, "AWS::ApiGateway::Resource").items()
        if api_id in _refs(v.get("Properties", {}).get("RestApiId"))
    }

    def path_of(resource_ref: Any) -> tuple[str, str]:
        if isinstance(resource_ref, dict) and "Fn::GetAtt" in resource_ref:
            return "/", "root"
        refs = _refs(resource_ref)
        logical = next(iter(refs)) if len(refs) == 1 else None
        if logical is None or logical not in api_resources:
            raise TemplateError(f"method points at unknown resource {resource_ref!r}")
        props = api_resources[logical]["Properties"]
        parent_path, _ = path_of(props["ParentId"])
        return parent_path.rstrip("/") + "/" + props["PathPart"], logical

    routes: list[Route] = []
    integration_targets: set[str] = set()
    for _, method in sorted(_of_type(resources, "AWS::ApiGateway::Method").items()):
        props = method.get("Properties", {})
        if api_id not in _refs(props.get("RestApiId")):
            continue
        integration = props.get("Integration", {})
        if integration.get("Type") != "AWS_PROXY":
            # Only Lambda proxy routes are emulated (no MOCK/CORS preflight in this API).
            continue
        path, resource_logical = path_of(props["ResourceId"])
        validated = _validates_parameters(resources, props.get("RequestValidatorId"))
        required = [
            name
            for name, needed in sorted((props.get("RequestParameters") or {}).items())
            if needed is True and validated
        ]
        routes.append(
            Route(
                method=props["HttpMethod"],
                path=path,
                api_key_required=bool(props.get("ApiKeyRequired", False)),
                resource_id=resource_logical,
                authorization=str(props.get("AuthorizationType", "NONE")),
                required_headers=tuple(
                    n.removeprefix("method.request.header.")
                    for n in required
                    if n.startswith("method.request.header.")
                ),
                required_query=tuple(
                    n.removeprefix("method.request.querystring.")
                    for n in required
                    if n.startswith("method.request.querystring.")
                ),
            )
        )
        integration_targets |= _refs(integration.get("Uri"))
    if not routes:
        raise TemplateError("no Lambda proxy (AWS_PROXY) methods on the REST API")

    function_id = _integrated_function(resources, integration_targets)
    fn_props = resources[function_id].get("Properties", {})
    env_raw: dict[str, Any] = fn_props.get("Environment", {}).get("Variables", {})
    unresolvable = sorted(
        k for k, v in env_raw.items() if k not in LOCAL_OVERRIDES and not isinstance(v, str)
    )
    if unresolvable:
        raise TemplateError(
            f"function environment variables {unresolvable} are CloudFormation expressions; "
            "local mode only knows how to replace " + ", ".join(sorted(LOCAL_OVERRIDES))
        )
    environment = {k: v for k, v in env_raw.items() if k not in LOCAL_OVERRIDES}

    stage, access_log_format = _stage(resources, api_id)
    rate = burst = quota = None
    plans = _of_type(resources, "AWS::ApiGateway::UsagePlan")
    if plans:
        plan = next(iter(sorted(plans.items())))[1].get("Properties", {})
        throttle = plan.get("Throttle") or {}
        rate = float(throttle["RateLimit"]) if "RateLimit" in throttle else None
        burst = int(throttle["BurstLimit"]) if "BurstLimit" in throttle else None
        q = plan.get("Quota") or {}
        quota = (int(q["Limit"]), str(q.get("Period", ""))) if "Limit" in q else None

    return ApiSpec(
        stack=stack,
        stage=stage,
        routes=tuple(sorted(routes, key=lambda r: (r.path, r.method))),
        binary_media_types=binary,
        environment=environment,
        function_logical_id=function_id,
        memory_mb=int(fn_props.get("MemorySize", 128)),
        timeout_s=int(fn_props.get("Timeout", 3)),
        throttle_rate_rps=rate,
        throttle_burst=burst,
        quota=quota,
        access_log_format=access_log_format,
        gateway_responses=_gateway_responses(resources, api_id),
        source=source,
    )


def _gateway_responses(resources: dict[str, Any], api_id: str) -> dict[str, GatewayResponse]:
    found: dict[str, GatewayResponse] = {}
    for logical, res in sorted(_of_type(resources, "AWS::ApiGateway::GatewayResponse").items()):
        props = res.get("Properties", {})
        if api_id not in _refs(props.get("RestApiId")):
            continue
        kind = str(props.get("ResponseType", ""))
        templates = props.get("ResponseTemplates") or {}
        if not all(isinstance(t, str) for t in templates.values()):
            raise TemplateError(f"{logical}: response templates must be plain strings")
        for template in templates.values():
            for match in _TEMPLATE_VARIABLE.finditer(template):
                root, path = match.group(1), match.group(2).lstrip(".")
                if root != "context" or path not in GATEWAY_TEMPLATE_VARIABLES:
                    raise TemplateError(
                        f"{logical}: local mode cannot render {match.group(0)} in a gateway "
                        "response; it knows $context."
                        + ", $context.".join(sorted(GATEWAY_TEMPLATE_VARIABLES))
                    )
        headers: dict[str, str] = {}
        for name, value in (props.get("ResponseParameters") or {}).items():
            quoted = isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == "'"
            if not name.startswith("gatewayresponse.header.") or not quoted:
                raise TemplateError(
                    f"{logical}: only static headers ('value') are emulated, not {name}={value!r}"
                )
            headers[name.removeprefix("gatewayresponse.header.")] = value[1:-1]
        status = props.get("StatusCode")
        if kind in found:
            raise TemplateError(f"two gateway responses of type {kind}")
        found[kind] = GatewayResponse(
            response_type=kind,
            status_code=int(status) if status is not None else None,
            templates=dict(templates),
            headers=headers,
        )
    return found


def _validates_parameters(resources: dict[str, Any], validator_ref: Any) -> bool:
    for logical in _refs(validator_ref):
        validator = resources.get(logical, {})
        if validator.get("Type") == "AWS::ApiGateway::RequestValidator":
            return bool(validator.get("Properties", {}).get("ValidateRequestParameters", False))
    return False


def _integrated_function(resources: dict[str, Any], targets: set[str]) -> str:
    """Follow the integration URI through an alias or version to the AWS::Lambda::Function."""
    seen: set[str] = set()
    frontier = set(targets)
    functions: set[str] = set()
    while frontier:
        logical = frontier.pop()
        if logical in seen or logical not in resources:
            continue
        seen.add(logical)
        kind = resources[logical].get("Type")
        if kind == "AWS::Lambda::Function":
            functions.add(logical)
        elif kind in ("AWS::Lambda::Alias", "AWS::Lambda::Version"):
            frontier |= _refs(resources[logical].get("Properties", {}))
    if len(functions) != 1:
        raise TemplateError(
            f"the API's integrations reach {len(functions)} Lambda functions, expected one"
        )
    return functions.pop()


def _stage(resources: dict[str, Any], api_id: str) -> tuple[str, str | None]:
    """The stage name and its access log format."""
    for kind in ("AWS::ApiGateway::Stage", "AWS::ApiGateway::Deployment"):
        for _, res in sorted(_of_type(resources, kind).items()):
            props = res.get("Properties", {})
            if api_id in _refs(props.get("RestApiId")) and isinstance(props.get("StageName"), str):
                log_format = (props.get("AccessLogSetting") or {}).get("Format")
                return props["StageName"], log_format if isinstance(log_format, str) else None
    raise TemplateError("no stage (AWS::ApiGateway::Stage with a StageName) for the REST API")
