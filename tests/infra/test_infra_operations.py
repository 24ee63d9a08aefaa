"""Safe rollouts (CodeDeploy), the dashboard, alarms and their SNS topic."""

from __future__ import annotations

import fnmatch
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from aws_cdk.assertions import Annotations, Match, Template
from infra_helpers import EXPECTED, FakeModel, only, resources_of

from stacks.app_builder import add_stages, new_app
from stacks.config import PROD
from stacks.model_source import ModelSource

LIVE = {"Fn::Join": ["", [{"Ref": "PredictFunction"}, ":live"]]}


def alarms(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {lid: r["Properties"] for lid, r in resources_of(raw, "AWS::CloudWatch::Alarm").items()}


def alarm_on(
    raw: dict[str, Any], namespace: str, metric_name: str, *, per_version: bool = False
) -> tuple[str, dict[str, Any]]:
    """The one alarm on namespace/metric_name; ``per_version``: the one by ExecutedVersion."""
    found = [
        (lid, props)
        for lid, props in alarms(raw).items()
        for query in props["Metrics"]
        if query["MetricStat"]["Metric"]["Namespace"] == namespace
        and query["MetricStat"]["Metric"]["MetricName"] == metric_name
        and per_version
        == any(d["Name"] == "ExecutedVersion" for d in query["MetricStat"]["Metric"]["Dimensions"])
    ]
    assert len(found) == 1, f"expected one alarm on {namespace}/{metric_name}, got {found}"
    return found[0]


def metric_of(props: dict[str, Any]) -> dict[str, Any]:
    (query,) = props["Metrics"]
    return dict(query["MetricStat"])


def dimensions(props: dict[str, Any]) -> dict[str, Any]:
    return {d["Name"]: d["Value"] for d in metric_of(props)["Metric"]["Dimensions"]}


def deployment_group(raw: dict[str, Any]) -> dict[str, Any]:
    return dict(only(raw, "AWS::CodeDeploy::DeploymentGroup")[1]["Properties"])


def topic_id(raw: dict[str, Any]) -> str:
    return only(raw, "AWS::SNS::Topic")[0]


# --- rollout ---------------------------------------------------------------------------


def test_alias_updates_are_handed_to_codedeploy(raw: dict[str, Any]) -> None:
    _, alias = only(raw, "AWS::Lambda::Alias")
    group_id, _ = only(raw, "AWS::CodeDeploy::DeploymentGroup")
    update = alias["UpdatePolicy"]["CodeDeployLambdaAliasUpdate"]
    assert update["DeploymentGroupName"] == {"Ref": group_id}


def test_deployment_config_is_canary_in_prod_and_all_at_once_in_dev(
    stage: str, raw: dict[str, Any]
) -> None:
    assert deployment_group(raw)["DeploymentConfigName"] == EXPECTED[stage]["deployment_config"]


def test_deployment_rolls_back_on_failure_and_on_alarm(raw: dict[str, Any]) -> None:
    rollback = deployment_group(raw)["AutoRollbackConfiguration"]
    assert rollback["Enabled"] is True
    assert "DEPLOYMENT_STOP_ON_ALARM" in rollback["Events"]
    assert "DEPLOYMENT_FAILURE" in rollback["Events"]


def test_deployment_rolls_back_only_on_the_release_errors_and_the_api_5xx_rate(
    raw: dict[str, Any],
) -> None:
    config = deployment_group(raw)["AlarmConfiguration"]
    assert config["Enabled"] is True
    watched = [alarm["Name"]["Ref"] for alarm in config["Alarms"]]
    assert sorted(watched) == sorted(
        [
            alarm_on(raw, "AWS/Lambda", "Errors", per_version=True)[0],
            alarm_on(raw, "AWS/ApiGateway", "5XXError")[0],
        ]
    )


def test_latency_and_whole_alias_alarms_only_notify(raw: dict[str, Any]) -> None:
    # A canary runs mostly on cold on-demand environments (provisioned concurrency is split by
    # weight), and the alias's errors include the old version's: neither may roll back.
    watched = {a["Name"]["Ref"] for a in deployment_group(raw)["AlarmConfiguration"]["Alarms"]}
    notify_only = {
        alarm_on(raw, "AWS/ApiGateway", "Latency")[0],
        alarm_on(raw, "AWS/Lambda", "Duration")[0],
        alarm_on(raw, "AWS/Lambda", "Errors")[0],
    }
    assert not notify_only & watched
    topic = {"Ref": topic_id(raw)}
    for logical_id in notify_only:
        assert alarms(raw)[logical_id]["AlarmActions"] == [topic]


def test_release_errors_alarm_counts_the_new_versions_errors_only(
    stage: str, raw: dict[str, Any]
) -> None:
    _, alias = only(raw, "AWS::Lambda::Alias")
    version_id = alias["Properties"]["FunctionVersion"]["Fn::GetAtt"][0]
    assert raw["Resources"][version_id]["Type"] == "AWS::Lambda::Version"
    _, props = alarm_on(raw, "AWS/Lambda", "Errors", per_version=True)
    # Lambda's dimension set for an alias invocation, by the version that ran it.
    assert dimensions(props) == {
        "FunctionName": {"Ref": "PredictFunction"},
        "Resource": LIVE,
        "ExecutedVersion": {"Fn::GetAtt": [version_id, "Version"]},
    }
    assert metric_of(props)["Stat"] == "Sum"
    assert metric_of(props)["Period"] == 60
    assert props["Threshold"] == EXPECTED[stage]["errors_per_minute"]
    assert props["ComparisonOperator"] == "GreaterThanThreshold"
    # Before the new version has any traffic there is no data, which is not a failure.
    assert props["TreatMissingData"] == "notBreaching"


def test_alias_update_waits_for_the_release_alarm_to_follow_the_new_version(
    raw: dict[str, Any],
) -> None:
    # The alias update is what starts CodeDeploy; the alarm must watch the new version by then.
    alarm_id, _ = alarm_on(raw, "AWS/Lambda", "Errors", per_version=True)
    _, alias = only(raw, "AWS::Lambda::Alias")
    assert alarm_id in alias.get("DependsOn", [])


# --- alarms ----------------------------------------------------------------------------


def test_function_alarms_watch_alias_live(raw: dict[str, Any]) -> None:
    for metric_name in ("Errors", "Throttles", "Duration"):
        _, props = alarm_on(raw, "AWS/Lambda", metric_name)
        assert dimensions(props)["Resource"] == LIVE


def test_function_errors_alarm_uses_the_stage_threshold(stage: str, raw: dict[str, Any]) -> None:
    _, props = alarm_on(raw, "AWS/Lambda", "Errors")
    assert metric_of(props)["Stat"] == "Sum"
    assert props["Threshold"] == EXPECTED[stage]["errors_per_minute"]
    assert metric_of(props)["Period"] == 60


def test_any_throttle_alarms(raw: dict[str, Any]) -> None:
    _, props = alarm_on(raw, "AWS/Lambda", "Throttles")
    assert props["Threshold"] == 0
    assert props["ComparisonOperator"] == "GreaterThanThreshold"


def test_duration_p99_alarms_at_80_percent_of_the_timeout(stage: str, raw: dict[str, Any]) -> None:
    _, props = alarm_on(raw, "AWS/Lambda", "Duration")
    assert metric_of(props)["Stat"] == "p99"
    assert props["Threshold"] == EXPECTED[stage]["timeout_s"] * 1000 * 0.8


def test_api_5xx_rate_alarm_uses_the_stage_threshold(stage: str, raw: dict[str, Any]) -> None:
    _, props = alarm_on(raw, "AWS/ApiGateway", "5XXError")
    # Average of the 0/1 5XXError metric is the fraction of requests that failed.
    assert metric_of(props)["Stat"] == "Average"
    assert props["Threshold"] == EXPECTED[stage]["api_5xx_rate"]
    assert dimensions(props) == {"ApiName": f"{EXPECTED[stage]['stack_id']}-api", "Stage": "v1"}


def test_api_latency_p99_alarm_is_the_stage_slo(stage: str, raw: dict[str, Any]) -> None:
    _, props = alarm_on(raw, "AWS/ApiGateway", "Latency")
    assert metric_of(props)["Stat"] == "p99"
    assert props["Threshold"] == EXPECTED[stage]["latency_slo_ms"]


def test_prod_alarms_on_provisioned_concurrency_spillover(synthesized: Any) -> None:
    _, props = alarm_on(
        synthesized.raw["prod"], "AWS/Lambda", "ProvisionedConcurrencySpilloverInvocations"
    )
    assert dimensions(props)["Resource"] == LIVE
    assert props["Threshold"] == 10


def test_dev_without_provisioned_concurrency_has_no_spillover_alarm(synthesized: Any) -> None:
    names = {
        query["MetricStat"]["Metric"]["MetricName"]
        for props in alarms(synthesized.raw["dev"]).values()
        for query in props["Metrics"]
    }
    assert names == {"Errors", "Throttles", "Duration", "5XXError", "Latency"}


def test_every_alarm_notifies_the_topic_on_alarm_and_on_recovery(raw: dict[str, Any]) -> None:
    topic = {"Ref": topic_id(raw)}
    for props in alarms(raw).values():
        assert props["AlarmActions"] == [topic]
        assert props["OKActions"] == [topic]
        assert props["ActionsEnabled"] is True


def topic_statements(raw: dict[str, Any]) -> list[dict[str, Any]]:
    _, policy = only(raw, "AWS::SNS::TopicPolicy")
    assert policy["Properties"]["Topics"] == [{"Ref": topic_id(raw)}]
    return list(policy["Properties"]["PolicyDocument"]["Statement"])


def test_alarm_topic_rejects_non_tls_publishers(raw: dict[str, Any]) -> None:
    (deny,) = [s for s in topic_statements(raw) if s["Effect"] == "Deny"]
    assert deny["Principal"] == "*"
    assert deny["Action"] == "sns:Publish"
    assert deny["Resource"] == {"Ref": topic_id(raw)}
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_alarm_topic_lets_this_stacks_alarms_publish(stage: str, raw: dict[str, Any]) -> None:
    # A topic policy replaces SNS's default one: without this Allow, no alarm notification
    # is ever delivered.
    (allow,) = [s for s in topic_statements(raw) if s["Effect"] == "Allow"]
    assert allow["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert allow["Action"] == "sns:Publish"
    assert allow["Resource"] == {"Ref": topic_id(raw)}
    stack_id = EXPECTED[stage]["stack_id"]
    assert allow["Condition"] == {
        "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}},
        "ArnLike": {
            "aws:SourceArn": {
                "Fn::Join": [
                    "",
                    [
                        "arn:",
                        {"Ref": "AWS::Partition"},
                        ":cloudwatch:",
                        {"Ref": "AWS::Region"},
                        ":",
                        {"Ref": "AWS::AccountId"},
                        f":alarm:{stack_id}-*",
                    ],
                ]
            }
        },
    }


def test_every_alarm_name_is_covered_by_the_topic_policy(stage: str, raw: dict[str, Any]) -> None:
    pattern = f"{EXPECTED[stage]['stack_id']}-*"
    names = [props["AlarmName"] for props in alarms(raw).values()]
    assert names
    assert all(isinstance(name, str) and fnmatch.fnmatchcase(name, pattern) for name in names)


def test_no_email_subscription_without_a_configured_address(template: Template) -> None:
    template.resource_count_is("AWS::SNS::Subscription", 0)


def test_no_slack_channel_unless_configured(template: Template) -> None:
    template.resource_count_is("AWS::Chatbot::SlackChannelConfiguration", 0)


def test_slack_channel_gets_the_alarm_topic_with_least_privilege(
    tmp_path: Path, fake_model: FakeModel
) -> None:
    config = replace(PROD, slack_workspace_id="T0123ABCD", slack_channel_id="C0123ABCD")
    app = new_app(outdir=tmp_path)
    (stack,) = add_stages(
        app, stages=[config], model=ModelSource.from_artifact_dir(fake_model.directory)
    )
    raw = Template.from_stack(stack).to_json()
    _, channel = only(raw, "AWS::Chatbot::SlackChannelConfiguration")
    props = channel["Properties"]
    assert (props["SlackWorkspaceId"], props["SlackChannelId"]) == ("T0123ABCD", "C0123ABCD")
    assert props["SnsTopicArns"] == [{"Ref": topic_id(raw)}]
    # Without guardrails AWS applies AdministratorAccess to whatever is run from the channel.
    (guardrail,) = props["GuardrailPolicies"]
    assert guardrail["Fn::Join"][1][-1] == ":iam::aws:policy/CloudWatchReadOnlyAccess"
    assert props.get("LoggingLevel", "NONE") == "NONE"  # no log group outside the stack
    role_id = props["IamRoleArn"]["Fn::GetAtt"][0]
    role = raw["Resources"][role_id]["Properties"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "chatbot.amazonaws.com"
    }
    assert "ManagedPolicyArns" not in role
    assert "Policies" not in role
    assert not [
        policy
        for policy in resources_of(raw, "AWS::IAM::Policy").values()
        if {"Ref": role_id} in policy["Properties"]["Roles"]
    ]
    nag = Match.string_like_regexp("AwsSolutions-.*")
    assert Annotations.from_stack(stack).find_error("*", nag) == []
    assert Annotations.from_stack(stack).find_warning("*", nag) == []


# --- dashboard -------------------------------------------------------------------------


def dashboard_body(raw: dict[str, Any]) -> str:
    _, dashboard = only(raw, "AWS::CloudWatch::Dashboard")
    body = dashboard["Properties"]["DashboardBody"]
    parts = body["Fn::Join"][1] if isinstance(body, dict) else [body]
    return "".join(part if isinstance(part, str) else json.dumps(part) for part in parts)


def test_one_dashboard_per_stage(template: Template) -> None:
    template.resource_count_is("AWS::CloudWatch::Dashboard", 1)


def test_dashboard_shows_api_traffic_errors_and_latency_percentiles(raw: dict[str, Any]) -> None:
    body = dashboard_body(raw)
    for metric in ("Count", "4XXError", "5XXError", "Latency", "IntegrationLatency"):
        assert f'"AWS/ApiGateway","{metric}"' in body, metric
    for stat in ("p50", "p90", "p99"):
        assert f'"stat":"{stat}"' in body


def test_dashboard_shows_function_health_and_concurrency(raw: dict[str, Any]) -> None:
    body = dashboard_body(raw)
    for metric in (
        "Invocations",
        "Errors",
        "Throttles",
        "Duration",
        "ConcurrentExecutions",
        "ProvisionedConcurrencyUtilization",
        "ProvisionedConcurrencySpilloverInvocations",
    ):
        assert f'"AWS/Lambda","{metric}"' in body, metric


def test_dashboard_shows_the_functions_own_metrics_by_service(
    stage: str, raw: dict[str, Any]
) -> None:
    body = dashboard_body(raw)
    service = EXPECTED[stage]["service"]
    for metric in ("ModelLoadMs", "InferenceMs"):
        assert f'"ResnetServing","{metric}","service","{service}"' in body, metric
    # Powertools' ColdStart also carries function_name (the handler test checks every
    # dashboard metric against the EMF the real handler prints).
    cold_start = '"ResnetServing","ColdStart","function_name","{"Ref": "PredictFunction"}",'
    assert f'{cold_start}"service","{service}"' in body


def test_dashboard_shows_the_release_by_executed_version(raw: dict[str, Any]) -> None:
    body = dashboard_body(raw)
    for metric in ("Invocations", "Errors"):
        assert f'"AWS/Lambda","{metric}","ExecutedVersion",' in body, metric


def test_dashboard_url_is_an_output(raw: dict[str, Any]) -> None:
    dashboard_id, _ = only(raw, "AWS::CloudWatch::Dashboard")
    parts = raw["Outputs"]["DashboardUrl"]["Value"]["Fn::Join"][1]
    assert parts[0].startswith("https://console.aws.amazon.com/cloudwatch/")
    assert {"Ref": dashboard_id} in parts
