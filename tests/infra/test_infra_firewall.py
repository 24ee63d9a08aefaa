"""The WAFv2 web ACL on the prod API stage (stacks/firewall.py)."""

from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest
from aws_cdk.assertions import Match, Template
from infra_helpers import only, resources_of

from stacks.firewall import integer_above_regex

# Written out by hand: what each stage is meant to deploy.
RATE_LIMIT_PER_5_MINUTES = {"dev": None, "prod": 15_000}
LAMBDA_INVOKE_LIMIT = 6 * 1024 * 1024
BODY_PATTERN_RULES = {
    "CrossSiteScripting_BODY",
    "GenericLFI_BODY",
    "GenericRFI_BODY",
    "EC2MetaDataSSRF_BODY",
}


def rules_by_name(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    _, acl = only(raw, "AWS::WAFv2::WebACL")
    return {rule["Name"]: rule for rule in acl["Properties"]["Rules"]}


@pytest.fixture
def prod_raw(synthesized: Any) -> dict[str, Any]:
    return dict(synthesized.raw["prod"])


def test_only_stages_configured_with_waf_get_a_web_acl(stage: str, raw: dict[str, Any]) -> None:
    acls = resources_of(raw, "AWS::WAFv2::WebACL")
    assert len(acls) == (1 if RATE_LIMIT_PER_5_MINUTES[stage] else 0)


def test_web_acl_is_regional_and_allows_what_no_rule_blocks(prod: Template) -> None:
    prod.has_resource_properties(
        "AWS::WAFv2::WebACL",
        {
            "Scope": "REGIONAL",
            "DefaultAction": {"Allow": {}},
            "VisibilityConfig": Match.object_like(
                {"CloudWatchMetricsEnabled": True, "SampledRequestsEnabled": True}
            ),
        },
    )


def test_rules_run_rate_limit_size_limit_managed_rules_in_that_order(
    prod_raw: dict[str, Any],
) -> None:
    rules = sorted(rules_by_name(prod_raw).values(), key=lambda r: r["Priority"])
    assert [r["Name"] for r in rules] == [
        "RateLimitPerIp",
        "BodyOverApiLimit",
        "AWSManagedRulesCommonRuleSet",
        "BodyPatternsOnTextBodies",
        "AWSManagedRulesKnownBadInputsRuleSet",
    ]


def custom_body(raw: dict[str, Any], rule: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = rule["Action"]["Block"]["CustomResponse"]
    _, acl = only(raw, "AWS::WAFv2::WebACL")
    body = acl["Properties"]["CustomResponseBodies"][response["CustomResponseBodyKey"]]
    assert body["ContentType"] == "APPLICATION_JSON"
    return response["ResponseCode"], json.loads(body["Content"])


def test_rate_limit_is_per_client_ip_per_5_minutes_and_answers_429(
    prod_raw: dict[str, Any],
) -> None:
    rule = rules_by_name(prod_raw)["RateLimitPerIp"]
    assert rule["Statement"]["RateBasedStatement"] == {
        "AggregateKeyType": "IP",
        "EvaluationWindowSec": 300,
        "Limit": RATE_LIMIT_PER_5_MINUTES["prod"],
    }
    status, body = custom_body(prod_raw, rule)
    assert status == 429
    assert body["error"]["code"] == "throttled"
    assert set(body["error"]) == {"code", "message"}


def test_common_rule_set_counts_its_8_kb_body_rule_and_body_pattern_rules(
    prod_raw: dict[str, Any],
) -> None:
    rule = rules_by_name(prod_raw)["AWSManagedRulesCommonRuleSet"]
    assert rule["OverrideAction"] == {"None": {}}
    group = rule["Statement"]["ManagedRuleGroupStatement"]
    assert (group["VendorName"], group["Name"]) == ("AWS", "AWSManagedRulesCommonRuleSet")
    overrides = {o["Name"]: o["ActionToUse"] for o in group["RuleActionOverrides"]}
    assert overrides == {
        name: {"Count": {}} for name in {"SizeRestrictions_BODY"} | BODY_PATTERN_RULES
    }


def test_known_bad_inputs_rule_set_blocks_unchanged(prod_raw: dict[str, Any]) -> None:
    rule = rules_by_name(prod_raw)["AWSManagedRulesKnownBadInputsRuleSet"]
    assert rule["OverrideAction"] == {"None": {}}
    assert rule["Statement"] == {
        "ManagedRuleGroupStatement": {
            "VendorName": "AWS",
            "Name": "AWSManagedRulesKnownBadInputsRuleSet",
        }
    }


def test_body_limit_blocks_content_length_above_lambdas_invoke_limit_with_413(
    prod_raw: dict[str, Any],
) -> None:
    rule = rules_by_name(prod_raw)["BodyOverApiLimit"]
    statement = rule["Statement"]["RegexMatchStatement"]
    assert statement["FieldToMatch"] == {"SingleHeader": {"Name": "content-length"}}
    assert statement["TextTransformations"] == [{"Priority": 0, "Type": "NONE"}]
    pattern = re.compile(statement["RegexString"])
    for value, blocked in [
        ("2048", False),
        ("4718592", False),  # a 4.5 MB photo passes
        (str(LAMBDA_INVOKE_LIMIT), False),
        (str(LAMBDA_INVOKE_LIMIT + 1), True),
        ("10485760", True),
        ("0006291457", True),
        ("99999999999", True),
    ]:
        assert bool(pattern.fullmatch(value)) is blocked, value
    assert len(statement["RegexString"]) <= 512  # WAF's regex length limit
    status, body = custom_body(prod_raw, rule)
    assert (status, body["error"]["code"]) == (413, "payload_too_large")


@pytest.mark.parametrize("limit", [0, 1, 9, 10, 99, 100, 4096, 6_291_456, 9_999_999, 10_000_000])
def test_integer_above_regex_matches_exactly_the_larger_integers(limit: int) -> None:
    pattern = re.compile(integer_above_regex(limit))
    rng = random.Random(limit)
    candidates = {limit - 1, limit, limit + 1, limit * 10, limit // 10, 10 ** len(str(limit))}
    candidates |= {rng.randrange(0, 10 ** (len(str(limit)) + 1)) for _ in range(3000)}
    for value in sorted(c for c in candidates if c >= 0):
        for text in (str(value), "00" + str(value)):
            assert bool(pattern.fullmatch(text)) is (value > limit), (limit, text)
    for junk in ("", "-1", "1e9", "12 34", "0x10", "٣٣٣٣٣٣٣٣"):
        assert not pattern.fullmatch(junk), junk


def test_body_pattern_matches_block_only_bodies_not_declared_as_images(
    prod_raw: dict[str, Any],
) -> None:
    rule = rules_by_name(prod_raw)["BodyPatternsOnTextBodies"]
    assert rule["Action"] == {"Block": {}}
    labels_clause, not_image = rule["Statement"]["AndStatement"]["Statements"]
    labels = {s["LabelMatchStatement"]["Key"] for s in labels_clause["OrStatement"]["Statements"]}
    assert labels == {
        "awswaf:managed:aws:core-rule-set:" + name.removesuffix("_BODY") + "_Body"
        for name in BODY_PATTERN_RULES
    }
    assert {
        s["LabelMatchStatement"]["Scope"] for s in labels_clause["OrStatement"]["Statements"]
    } == {"LABEL"}
    match = not_image["NotStatement"]["Statement"]["ByteMatchStatement"]
    assert match["FieldToMatch"] == {"SingleHeader": {"Name": "content-type"}}
    assert (match["PositionalConstraint"], match["SearchString"]) == ("STARTS_WITH", "image/")
    assert match["TextTransformations"] == [{"Priority": 0, "Type": "LOWERCASE"}]
    # Labels exist only for rules that ran before: the rule group must come first.
    rules = rules_by_name(prod_raw)
    assert rules["AWSManagedRulesCommonRuleSet"]["Priority"] < rule["Priority"]


def test_web_acl_is_associated_with_the_api_stage_after_the_stage_exists(
    prod_raw: dict[str, Any],
) -> None:
    acl_id, _ = only(prod_raw, "AWS::WAFv2::WebACL")
    api_id, _ = only(prod_raw, "AWS::ApiGateway::RestApi")
    stage_id, _ = only(prod_raw, "AWS::ApiGateway::Stage")
    _, association = only(prod_raw, "AWS::WAFv2::WebACLAssociation")
    props = association["Properties"]
    assert props["WebACLArn"] == {"Fn::GetAtt": [acl_id, "Arn"]}
    parts = props["ResourceArn"]["Fn::Join"][1]
    # The stage by Ref (not by name): CloudFormation then creates the stage first.
    assert parts[-4:] == ["::/restapis/", {"Ref": api_id}, "/stages/", {"Ref": stage_id}]


def test_waf_logs_go_to_an_aws_waf_logs_group_with_the_api_key_redacted(
    prod_raw: dict[str, Any],
) -> None:
    acl_id, _ = only(prod_raw, "AWS::WAFv2::WebACL")
    _, logging = only(prod_raw, "AWS::WAFv2::LoggingConfiguration")
    props = logging["Properties"]
    assert props["ResourceArn"] == {"Fn::GetAtt": [acl_id, "Arn"]}
    redacted = {field["SingleHeader"]["Name"].lower() for field in props["RedactedFields"]}
    assert {"x-api-key", "authorization"} <= redacted
    (destination,) = props["LogDestinationConfigs"]
    parts = destination["Fn::Join"][1]
    assert ":log-group:" in parts[-2]
    group_id = parts[-1]["Ref"]
    group = prod_raw["Resources"][group_id]
    assert group["Type"] == "AWS::Logs::LogGroup"
    assert group["Properties"]["LogGroupName"].startswith("aws-waf-logs-")
    assert group["Properties"]["RetentionInDays"] == 90
    assert group["DeletionPolicy"] == "Retain"
    assert group_id in logging.get("DependsOn", [])


def test_stage_with_a_web_acl_has_no_waf_suppression(stage: str, raw: dict[str, Any]) -> None:
    _, api_stage = only(raw, "AWS::ApiGateway::Stage")
    suppressed = {
        rule["id"]
        for rule in api_stage.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", [])
    }
    assert ("AwsSolutions-APIG3" in suppressed) is (RATE_LIMIT_PER_5_MINUTES[stage] is None)
