"""WAFv2 web ACL on the API stage: per-IP rate limit, AWS managed rules, the API's body limit.

Checked against the AWS WAF Developer Guide: "Baseline rule groups" (aws-managed-rule-groups-
baseline: rule names, labels, WCUs), "Managing body inspection size limits" (web-acl-setting-body-
inspection-limit: API Gateway forwards the first 16 KB of a body by default), "Rate-based rule
high-level settings", "Amazon CloudWatch Logs" logging (logging-cw-logs: the log group name must
start with ``aws-waf-logs-``) and the cdk-nag rule APIG3 (AwsSolutions-APIG3 looks for a
WebACLAssociation naming the stage).

Image bodies are binary, so two rules of the Core rule set must not block them:

- ``SizeRestrictions_BODY`` blocks every body over 8 KB, i.e. every photo. It is set to Count and
  replaced by ``BodyOverApiLimit``: a regex on Content-Length that blocks only what can never be
  served (above Lambda's 6 MB invocation payload), answered 413 in the API's error shape.
- The body pattern rules (XSS, LFI, RFI, EC2 metadata SSRF) look for short strings such as
  ``../`` in the first 16 KB; random image bytes contain ``../`` about once in a thousand
  photos. They are set to Count and ``BodyPatternsOnTextBodies`` blocks on their labels unless
  the request declares an image body. JSON bodies carry images as base64, whose alphabet cannot
  form those patterns, so they stay fully inspected; a client that mislabels text as an image
  only reaches a function that decodes images and refuses anything else.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import ArnFormat, RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_logs as logs
from aws_cdk import aws_wafv2 as wafv2
from constructs import Construct

COMMON_RULE_SET = "AWSManagedRulesCommonRuleSet"
KNOWN_BAD_INPUTS_RULE_SET = "AWSManagedRulesKnownBadInputsRuleSet"
# The Core rule set's rule that blocks any body over 8 KB; replaced by BodyOverApiLimit.
BODY_SIZE_RULE = "SizeRestrictions_BODY"
# Core rule set rules that match short patterns in the body, and the labels they add.
BODY_PATTERN_RULES = {
    "CrossSiteScripting_BODY": "awswaf:managed:aws:core-rule-set:CrossSiteScripting_Body",
    "GenericLFI_BODY": "awswaf:managed:aws:core-rule-set:GenericLFI_Body",
    "GenericRFI_BODY": "awswaf:managed:aws:core-rule-set:GenericRFI_Body",
    "EC2MetaDataSSRF_BODY": "awswaf:managed:aws:core-rule-set:EC2MetaDataSSRF_Body",
}
# Headers whose values never reach the WAF logs: the API key, and SigV4 when iam_auth is on.
REDACTED_HEADERS = ("x-api-key", "authorization")
# Bodies of WAF's own block answers, in the API's error shape (docs/openapi.yaml).
THROTTLED_BODY = (
    '{"error":{"code":"throttled","message":"Too many requests from this address; '
    'retry after a short wait, with exponential backoff."}}'
)
TOO_LARGE_BODY = (
    '{"error":{"code":"payload_too_large","message":"The request body is larger than the API '
    'accepts."}}'
)


def integer_above_regex(limit: int) -> str:
    """A regex matching exactly the decimal integers greater than ``limit`` (leading zeros too).

    WAF has no numeric comparison for header values, so a Content-Length limit is a regex.
    """
    if limit < 0:
        raise ValueError("limit must be >= 0")
    digits = str(limit)
    # More digits than the limit (after leading zeros) is always larger.
    alternatives = [f"[1-9][0-9]{{{len(digits)},}}"]
    # Same length: equal up to position i, larger at i, anything after.
    for i, digit in enumerate(digits):
        if digit == "9":
            continue
        rest = len(digits) - i - 1
        tail = {0: "", 1: "[0-9]"}.get(rest, f"[0-9]{{{rest}}}")
        alternatives.append(f"{digits[:i]}[{int(digit) + 1}-9]{tail}")
    return "^0*(?:" + "|".join(alternatives) + ")$"


def _visibility(metric: str) -> dict[str, Any]:
    return {
        "cloudWatchMetricsEnabled": True,
        "metricName": metric,
        "sampledRequestsEnabled": True,
    }


class ApiFirewall(Construct):
    """A regional web ACL associated with one REST API stage, logging to CloudWatch Logs."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        stage: apigw.Stage,
        rate_limit_per_5_minutes: int,
        max_body_bytes: int,
        log_retention: logs.RetentionDays,
        removal_policy: RemovalPolicy,
    ) -> None:
        """
        Args:
            stage: The API stage to protect.
            rate_limit_per_5_minutes: Requests per client IP per 5 minutes before WAF answers 429.
            max_body_bytes: Content-Length above which WAF answers 413, bytes.
            log_retention: WAF log retention.
            removal_policy: WAF log group removal policy.
        """
        super().__init__(scope, construct_id)
        stack_name = Stack.of(self).stack_name
        rules = [
            {
                "name": "RateLimitPerIp",
                "priority": 0,
                "statement": {
                    "rateBasedStatement": {
                        "aggregateKeyType": "IP",
                        "evaluationWindowSec": 300,
                        "limit": rate_limit_per_5_minutes,
                    }
                },
                "action": {
                    "block": {
                        "customResponse": {
                            "responseCode": 429,
                            "customResponseBodyKey": "throttled",
                        }
                    }
                },
                "visibilityConfig": _visibility(f"{stack_name}-RateLimitPerIp"),
            },
            {
                "name": "BodyOverApiLimit",
                "priority": 1,
                # SingleHeader is untyped JSON in the CloudFormation schema, so its key is
                # written as CloudFormation spells it ("Name"), not converted from "name".
                "statement": {
                    "regexMatchStatement": {
                        "fieldToMatch": {"singleHeader": {"Name": "content-length"}},
                        "regexString": integer_above_regex(max_body_bytes),
                        "textTransformations": [{"priority": 0, "type": "NONE"}],
                    }
                },
                "action": {
                    "block": {
                        "customResponse": {
                            "responseCode": 413,
                            "customResponseBodyKey": "payload_too_large",
                        }
                    }
                },
                "visibilityConfig": _visibility(f"{stack_name}-BodyOverApiLimit"),
            },
            {
                "name": COMMON_RULE_SET,
                "priority": 2,
                "statement": {
                    "managedRuleGroupStatement": {
                        "vendorName": "AWS",
                        "name": COMMON_RULE_SET,
                        "ruleActionOverrides": [
                            {"name": name, "actionToUse": {"count": {}}}
                            for name in (BODY_SIZE_RULE, *BODY_PATTERN_RULES)
                        ],
                    }
                },
                "overrideAction": {"none": {}},
                "visibilityConfig": _visibility(f"{stack_name}-{COMMON_RULE_SET}"),
            },
            {
                "name": "BodyPatternsOnTextBodies",
                "priority": 3,
                "statement": {
                    "andStatement": {
                        "statements": [
                            {
                                "orStatement": {
                                    "statements": [
                                        {"labelMatchStatement": {"scope": "LABEL", "key": label}}
                                        for label in BODY_PATTERN_RULES.values()
                                    ]
                                }
                            },
                            {
                                "notStatement": {
                                    "statement": {
                                        "byteMatchStatement": {
                                            "fieldToMatch": {
                                                "singleHeader": {"Name": "content-type"}
                                            },
                                            "positionalConstraint": "STARTS_WITH",
                                            "searchString": "image/",
                                            "textTransformations": [
                                                {"priority": 0, "type": "LOWERCASE"}
                                            ],
                                        }
                                    }
                                }
                            },
                        ]
                    }
                },
                "action": {"block": {}},
                "visibilityConfig": _visibility(f"{stack_name}-BodyPatternsOnTextBodies"),
            },
            {
                "name": KNOWN_BAD_INPUTS_RULE_SET,
                "priority": 4,
                "statement": {
                    "managedRuleGroupStatement": {
                        "vendorName": "AWS",
                        "name": KNOWN_BAD_INPUTS_RULE_SET,
                    }
                },
                "overrideAction": {"none": {}},
                "visibilityConfig": _visibility(f"{stack_name}-{KNOWN_BAD_INPUTS_RULE_SET}"),
            },
        ]
        self.web_acl = wafv2.CfnWebACL(
            self,
            "WebAcl",
            scope="REGIONAL",
            description=f"{stack_name} API: per-IP rate limit, AWS managed rules, body limit",
            default_action={"allow": {}},
            custom_response_bodies={
                "throttled": {"contentType": "APPLICATION_JSON", "content": THROTTLED_BODY},
                "payload_too_large": {"contentType": "APPLICATION_JSON", "content": TOO_LARGE_BODY},
            },
            rules=rules,
            visibility_config=_visibility(f"{stack_name}-WebAcl"),
        )
        # Ref to the stage in the ARN: the association waits for the stage, or WAF answers
        # "your resource doesn't exist" on a fresh stack.
        self.association = wafv2.CfnWebACLAssociation(
            self, "Association", resource_arn=stage.stage_arn, web_acl_arn=self.web_acl.attr_arn
        )

        # WAF only delivers to a log group whose name starts with aws-waf-logs-, so this is the
        # one physical name the firewall needs; the stack name keeps it unique per stage.
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            log_group_name=f"aws-waf-logs-{stack_name}",
            retention=log_retention,
            removal_policy=removal_policy,
        )
        # The log group ARN without CloudFormation's trailing ":*", as WAF documents it.
        log_group_arn = Stack.of(self).format_arn(
            service="logs",
            resource="log-group",
            resource_name=self.log_group.log_group_name,
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        self.logging = wafv2.CfnLoggingConfiguration(
            self,
            "Logging",
            resource_arn=self.web_acl.attr_arn,
            log_destination_configs=[log_group_arn],
            # SingleHeader is untyped JSON in the CloudFormation schema: its keys are not converted.
            redacted_fields=[{"singleHeader": {"Name": name}} for name in REDACTED_HEADERS],
        )
        self.logging.node.add_dependency(self.log_group)
