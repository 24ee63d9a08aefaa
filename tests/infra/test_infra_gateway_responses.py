"""API Gateway's own errors answer in the API's error shape, through Gateway Responses."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from aws_cdk.assertions import Match, Template
from infra_helpers import only, resources_of

from stacks.gateway_responses import gateway_errors

ROOT = Path(__file__).resolve().parents[2]
# Written out by hand, not read from stacks/: the stable codes clients rely on (docs/openapi.yaml).
EXPECTED_CODES = {
    "MISSING_AUTHENTICATION_TOKEN": "route_not_found",
    "INVALID_API_KEY": "invalid_api_key",
    "ACCESS_DENIED": "access_denied",
    "INVALID_SIGNATURE": "invalid_signature",
    "EXPIRED_TOKEN": "expired_token",
    "WAF_FILTERED": "request_blocked",
    "THROTTLED": "throttled",
    "QUOTA_EXCEEDED": "quota_exceeded",
    "BAD_REQUEST_PARAMETERS": "missing_parameter",
    "REQUEST_TOO_LARGE": "payload_too_large",
    "INTEGRATION_TIMEOUT": "integration_timeout",
    "INTEGRATION_FAILURE": "function_error",
    "DEFAULT_4XX": "request_rejected",
    "DEFAULT_5XX": "gateway_error",
}


def gateway_responses(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Response type -> GatewayResponse properties."""
    found: dict[str, dict[str, Any]] = {}
    for resource in resources_of(raw, "AWS::ApiGateway::GatewayResponse").values():
        props = resource["Properties"]
        assert props["ResponseType"] not in found, f"two responses for {props['ResponseType']}"
        found[props["ResponseType"]] = props
    return found


def body_of(props: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(props["ResponseTemplates"]["application/json"]))


def test_every_gateway_error_answers_with_its_stable_code(raw: dict[str, Any]) -> None:
    found = gateway_responses(raw)
    assert {kind: body_of(props)["error"]["code"] for kind, props in found.items()} == (
        EXPECTED_CODES
    )


@pytest.mark.parametrize("response_type", sorted(EXPECTED_CODES))
def test_gateway_response_keeps_api_gateways_own_status(
    template: Template, response_type: str
) -> None:
    # A StatusCode would overwrite the real one: INTEGRATION_FAILURE is 502 for a failed
    # function though its default is 504, and one on DEFAULT_4XX would rewrite every 4xx.
    template.has_resource_properties(
        "AWS::ApiGateway::GatewayResponse",
        {
            "ResponseType": response_type,
            "StatusCode": Match.absent(),
            "ResponseParameters": {"gatewayresponse.header.Cache-Control": "'no-store'"},
            "ResponseTemplates": {"application/json": Match.any_value()},
        },
    )


def test_gateway_bodies_are_exactly_the_error_object(raw: dict[str, Any]) -> None:
    for kind, props in gateway_responses(raw).items():
        assert list(props["ResponseTemplates"]) == ["application/json"], kind
        body = body_of(props)
        assert list(body) == ["error"], kind
        assert sorted(body["error"]) == ["code", "message"], kind
        assert body["error"]["message"], kind


def test_only_the_parameter_error_substitutes_api_gateways_message(raw: dict[str, Any]) -> None:
    # Templates are plain substitution, not VTL: a message with quotes from the request would
    # break the JSON, so only the one built from this API's own parameter names is used.
    variables = {
        kind: re.findall(r"\$[A-Za-z.]+", props["ResponseTemplates"]["application/json"])
        for kind, props in gateway_responses(raw).items()
    }
    assert {kind: found for kind, found in variables.items() if found} == {
        "BAD_REQUEST_PARAMETERS": ["$context.error.message"]
    }


def test_gateway_responses_belong_to_the_api_and_redeploy_its_stage(raw: dict[str, Any]) -> None:
    api_id, _ = only(raw, "AWS::ApiGateway::RestApi")
    deployment_id, deployment = only(raw, "AWS::ApiGateway::Deployment")
    responses = resources_of(raw, "AWS::ApiGateway::GatewayResponse")
    for props in (r["Properties"] for r in responses.values()):
        assert props["RestApiId"] == {"Ref": api_id}
    # A gateway response takes effect only with a new deployment: CDK folds each one into the
    # deployment's logical id and orders it before the deployment.
    assert set(responses) <= set(deployment["DependsOn"]), deployment_id


def test_unknown_route_message_names_the_routes_and_sigv4_only_with_iam_auth(
    raw: dict[str, Any],
) -> None:
    message = body_of(gateway_responses(raw)["MISSING_AUTHENTICATION_TOKEN"])["error"]["message"]
    assert "POST /predict, GET /health" in message
    assert "SigV4" not in message
    (with_iam,) = [
        e
        for e in gateway_errors(routes="GET /x", iam_auth=True)
        if e.response_type == "MISSING_AUTHENTICATION_TOKEN"
    ]
    assert "SigV4" in with_iam.message


def test_every_gateway_code_is_declared_in_the_openapi_document(raw: dict[str, Any]) -> None:
    spec = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text(encoding="utf-8"))
    error = spec["components"]["schemas"]["Error"]["properties"]["error"]["properties"]
    declared = set(error["code"]["enum"])
    assert set(EXPECTED_CODES.values()) <= declared
