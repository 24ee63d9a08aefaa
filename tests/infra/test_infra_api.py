"""API Gateway in front of alias ``live``."""

from __future__ import annotations

import json
from typing import Any

from aws_cdk.assertions import Match, Template
from infra_helpers import EXPECTED, logical_id_of, only, resources_of


def methods(raw: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(HTTP method, path part) -> method properties."""
    found = {}
    for method in resources_of(raw, "AWS::ApiGateway::Method").values():
        props = method["Properties"]
        resource = raw["Resources"][props["ResourceId"]["Ref"]]["Properties"]
        found[(props["HttpMethod"], resource["PathPart"])] = props
    return found


def stage_props(raw: dict[str, Any]) -> dict[str, Any]:
    return dict(only(raw, "AWS::ApiGateway::Stage")[1]["Properties"])


def test_api_exposes_exactly_post_predict_and_get_health(raw: dict[str, Any]) -> None:
    assert sorted(methods(raw)) == [("GET", "health"), ("POST", "predict")]


def test_every_route_requires_an_api_key(raw: dict[str, Any]) -> None:
    assert all(props["ApiKeyRequired"] is True for props in methods(raw).values())


def test_every_route_proxies_to_alias_live(raw: dict[str, Any]) -> None:
    alias_id, _ = only(raw, "AWS::Lambda::Alias")
    for props in methods(raw).values():
        integration = props["Integration"]
        assert integration["Type"] == "AWS_PROXY"
        assert {"Ref": alias_id} in integration["Uri"]["Fn::Join"][1]


def test_api_gateway_may_invoke_only_the_alias_from_its_own_routes(raw: dict[str, Any]) -> None:
    alias_id, _ = only(raw, "AWS::Lambda::Alias")
    permissions = [
        p["Properties"]
        for p in resources_of(raw, "AWS::Lambda::Permission").values()
        if p["Properties"]["Principal"] == "apigateway.amazonaws.com"
    ]
    # The deployed stage plus the console's test-invoke stage, per route.
    assert len(permissions) == 4
    for permission in permissions:
        assert permission["FunctionName"] == {"Ref": alias_id}
        route = permission["SourceArn"]["Fn::Join"][1][-1]
        assert route.endswith(("/GET/health", "/POST/predict"))


def test_api_declares_the_image_binary_media_types(template: Template) -> None:
    template.has_resource_properties(
        "AWS::ApiGateway::RestApi",
        {"BinaryMediaTypes": ["image/jpeg", "image/png", "image/webp"]},
    )


def test_api_name_is_unique_per_stage(stage: str, template: Template) -> None:
    # ApiName is the dimension of every API Gateway metric the dashboard and alarms read.
    template.has_resource_properties(
        "AWS::ApiGateway::RestApi", {"Name": f"{EXPECTED[stage]['stack_id']}-api"}
    )


def test_predict_rejects_requests_without_content_type_at_the_gateway(
    raw: dict[str, Any],
) -> None:
    predict = methods(raw)[("POST", "predict")]
    assert predict["RequestParameters"] == {"method.request.header.Content-Type": True}
    validator = raw["Resources"][predict["RequestValidatorId"]["Ref"]]["Properties"]
    assert validator["ValidateRequestParameters"] is True


def test_usage_plan_throttles_and_caps_each_key_per_stage(stage: str, raw: dict[str, Any]) -> None:
    _, plan = only(raw, "AWS::ApiGateway::UsagePlan")
    props = plan["Properties"]
    expected = EXPECTED[stage]
    assert props["Throttle"] == {
        "RateLimit": expected["throttle_rate"],
        "BurstLimit": expected["throttle_burst"],
    }
    assert props["Quota"] == {"Limit": expected["quota_per_day"], "Period": "DAY"}
    stage_id, _ = only(raw, "AWS::ApiGateway::Stage")
    assert props["ApiStages"][0]["Stage"] == {"Ref": stage_id}


def test_api_key_is_bound_to_the_usage_plan(raw: dict[str, Any]) -> None:
    key_id, _ = only(raw, "AWS::ApiGateway::ApiKey")
    plan_id, _ = only(raw, "AWS::ApiGateway::UsagePlan")
    _, binding = only(raw, "AWS::ApiGateway::UsagePlanKey")
    assert binding["Properties"] == {
        "KeyId": {"Ref": key_id},
        "KeyType": "API_KEY",
        "UsagePlanId": {"Ref": plan_id},
    }


def test_api_stage_writes_json_access_logs_to_a_retained_log_group(
    stage: str, raw: dict[str, Any]
) -> None:
    access = stage_props(raw)["AccessLogSetting"]
    fields = json.loads(access["Format"])
    assert fields["requestId"] == "$context.requestId"
    assert fields["status"] == "$context.status"
    assert fields["integrationLatency"] == "$context.integration.latency"
    group_ids = [
        part["Ref"]
        for part in access["DestinationArn"]["Fn::Join"][1]
        if isinstance(part, dict) and part.get("Ref") in raw["Resources"]
    ]
    assert len(group_ids) == 1
    group = raw["Resources"][group_ids[0]]
    assert group["Type"] == "AWS::Logs::LogGroup"
    assert group["Properties"]["RetentionInDays"] == EXPECTED[stage]["log_retention_days"]


def test_api_stage_has_execution_metrics_error_logs_and_tracing(raw: dict[str, Any]) -> None:
    props = stage_props(raw)
    assert props["TracingEnabled"] is True
    assert props["MethodSettings"] == [
        {
            "DataTraceEnabled": False,
            "HttpMethod": "*",
            "LoggingLevel": "ERROR",
            "MetricsEnabled": True,
            "ResourcePath": "/*",
        }
    ]


def test_execution_log_group_is_created_by_the_stack_before_the_stage(
    stage: str, raw: dict[str, Any]
) -> None:
    # API Gateway would otherwise create this exact name itself: never expiring, and left
    # behind by `cdk destroy`.
    api_id, _ = only(raw, "AWS::ApiGateway::RestApi")
    expected_name = {"Fn::Join": ["", ["API-Gateway-Execution-Logs_", {"Ref": api_id}, "/v1"]]}
    groups = {
        logical_id: group
        for logical_id, group in resources_of(raw, "AWS::Logs::LogGroup").items()
        if group["Properties"].get("LogGroupName") == expected_name
    }
    assert len(groups) == 1, groups
    ((group_id, group),) = groups.items()
    assert group["Properties"]["RetentionInDays"] == EXPECTED[stage]["log_retention_days"]
    assert group["DeletionPolicy"] == EXPECTED[stage]["deletion_policy"]
    _, stage_resource = only(raw, "AWS::ApiGateway::Stage")
    assert stage_resource["Properties"]["StageName"] == "v1"
    assert group_id in stage_resource["DependsOn"]


def test_serving_stacks_leave_the_account_wide_api_gateway_logging_role_alone(
    raw: dict[str, Any],
) -> None:
    # AWS::ApiGateway::Account is one setting per account/region: a stage that declared it
    # would overwrite every other API's logging role. ResnetServingAccount owns it.
    assert resources_of(raw, "AWS::ApiGateway::Account") == {}
    assert "apigateway.amazonaws.com" not in json.dumps(
        [
            role["Properties"]["AssumeRolePolicyDocument"]
            for role in resources_of(raw, "AWS::IAM::Role").values()
        ]
    )


def test_outputs_give_endpoint_url_and_api_key_id_but_never_the_key_value(
    raw: dict[str, Any],
) -> None:
    outputs = raw["Outputs"]
    key_id, _ = only(raw, "AWS::ApiGateway::ApiKey")
    assert outputs["ApiKeyId"]["Value"] == {"Ref": key_id}
    stage_id, _ = only(raw, "AWS::ApiGateway::Stage")
    url_parts = outputs["EndpointUrl"]["Value"]["Fn::Join"][1]
    assert url_parts[0] == "https://"
    assert {"Ref": stage_id} in url_parts
    assert "Value" not in json.dumps([o["Value"] for o in outputs.values()])
    assert all(
        logical_id_of(v) != key_id
        for o in outputs.values()
        if isinstance(v := o["Value"], dict) and "Fn::GetAtt" in v
    )


def test_api_key_is_generated_not_written_in_the_template(raw: dict[str, Any]) -> None:
    _, key = only(raw, "AWS::ApiGateway::ApiKey")
    assert "Value" not in key["Properties"]
    assert key["Properties"].get("Enabled", True) is True


def test_routes_use_api_key_only_unless_iam_auth_is_configured(template: Template) -> None:
    template.all_resources_properties(
        "AWS::ApiGateway::Method", Match.object_like({"AuthorizationType": "NONE"})
    )
