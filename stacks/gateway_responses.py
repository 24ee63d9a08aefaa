"""API Gateway's own errors in the function's error shape: one Gateway Response per type.

Whatever answers - API Gateway before the function runs, API Gateway after it failed, or the
function itself - a client gets ``{"error": {"code": "...", "message": "..."}}`` with a stable
``code``. The function builds its errors in lambda_src/api.py; this table is the gateway's half
of the contract (docs/inference.md "Error contract", docs/openapi.yaml).

Checked against AWS's "Gateway response types for API Gateway" (supported-gateway-response-types)
and "Set up gateway responses" (api-gateway-gatewayResponse-definition):

- No ``StatusCode`` is set, so each answer keeps the status API Gateway chose: the documented
  default of its type, or the real one where a type covers several (INTEGRATION_FAILURE's default
  is 504, yet a failed function answers 502, and a rejected invocation 500; DEFAULT_4XX/5XX keep
  whatever 4xx/5xx occurred). Setting a status on DEFAULT_4XX would rewrite every 4xx.
- Gateway response templates are not VTL: only simple ``$context`` substitution. Messages are
  static except ``$context.error.message`` for BAD_REQUEST_PARAMETERS, whose text
  ("Missing required request parameters: [Content-Type]") names only parameters this API
  declares, so it can never break the JSON; other types' AWS messages may carry quotes or
  newlines from the request (a malformed Authorization header) and are not substituted.
- Types this API cannot produce (authorizers, request models, RESOURCE_NOT_FOUND,
  UNSUPPORTED_MEDIA_TYPE, UNAUTHORIZED, API_CONFIGURATION_ERROR) fall back to DEFAULT_4XX or
  DEFAULT_5XX, which carry the shape too.
- Every response, from the gateway or the function, carries API Gateway's ``x-amzn-RequestId``
  header (``$context.requestId``): quote it when reporting a problem.

The local emulator (local_mode/) reads these resources from the synthesized template and answers
with them, so local and deployed errors cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

# Added to every gateway response (static values are quoted, as API Gateway requires): errors
# must never be cached by a proxy, as the function's own errors say too.
GATEWAY_RESPONSE_HEADERS = {"Cache-Control": "'no-store'"}


@dataclass(frozen=True)
class GatewayError:
    """One API Gateway response type and what the client reads in its body."""

    response_type: str  # API Gateway's ResponseType
    default_status: int | None  # its documented default status; None: keeps the real 4xx/5xx
    code: str  # stable, machine-readable
    message: str  # for humans; may change

    @property
    def construct_id(self) -> str:
        """``MISSING_AUTHENTICATION_TOKEN`` -> ``MissingAuthenticationTokenResponse``."""
        return "".join(part.capitalize() for part in self.response_type.split("_")) + "Response"

    @property
    def template(self) -> str:
        """The application/json body template."""
        body = {"error": {"code": self.code, "message": self.message}}
        return json.dumps(body, separators=(",", ":"))


def gateway_errors(*, routes: str, iam_auth: bool) -> tuple[GatewayError, ...]:
    """The API's gateway responses.

    Args:
        routes: The routes, for the unknown-route message (``POST /predict, GET /health``).
        iam_auth: The routes also require SigV4; API Gateway then answers an unsigned request to
            an existing route with MISSING_AUTHENTICATION_TOKEN too.
    """
    unknown_route = f"No route for this method and path; the API serves {routes} under its stage."
    if iam_auth:
        unknown_route += " Requests must also be signed with SigV4."
    return (
        GatewayError("MISSING_AUTHENTICATION_TOKEN", 403, "route_not_found", unknown_route),
        GatewayError(
            "INVALID_API_KEY",
            403,
            "invalid_api_key",
            "Missing or invalid API key: send a valid key in the x-api-key header.",
        ),
        GatewayError(
            "ACCESS_DENIED", 403, "access_denied", "The caller may not invoke this route."
        ),
        GatewayError(
            "INVALID_SIGNATURE",
            403,
            "invalid_signature",
            "The request's SigV4 signature does not match; check the credentials and signing.",
        ),
        GatewayError(
            "EXPIRED_TOKEN",
            403,
            "expired_token",
            "The AWS credentials that signed the request have expired.",
        ),
        GatewayError(
            "WAF_FILTERED",
            403,
            "request_blocked",
            "The request was blocked by the API's web application firewall.",
        ),
        GatewayError(
            "THROTTLED",
            429,
            "throttled",
            "Too many requests: retry after a short wait, with exponential backoff.",
        ),
        GatewayError(
            "QUOTA_EXCEEDED",
            429,
            "quota_exceeded",
            "This API key's request quota for the current period is used up.",
        ),
        GatewayError("BAD_REQUEST_PARAMETERS", 400, "missing_parameter", "$context.error.message"),
        GatewayError(
            "REQUEST_TOO_LARGE",
            413,
            "payload_too_large",
            "The request is too large: the function's invocation event, base64-encoded image "
            "included, is limited to 6 MB.",
        ),
        GatewayError(
            "INTEGRATION_TIMEOUT",
            504,
            "integration_timeout",
            "The function did not answer within API Gateway's integration timeout; retry later.",
        ),
        GatewayError(
            "INTEGRATION_FAILURE",
            504,
            "function_error",
            "The function failed or could not be invoked; retry later.",
        ),
        GatewayError("DEFAULT_4XX", None, "request_rejected", "API Gateway rejected the request."),
        GatewayError(
            "DEFAULT_5XX",
            None,
            "gateway_error",
            "API Gateway could not process the request; retry later.",
        ),
    )
