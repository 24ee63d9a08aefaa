"""REST API in front of alias ``live``: POST /predict, GET /health, API key + usage plan."""

from __future__ import annotations

import json

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from cdk_nag import NagPackSuppression, NagSuppressions
from constructs import Construct

from stacks.config import WafConfig
from stacks.firewall import ApiFirewall
from stacks.gateway_responses import GATEWAY_RESPONSE_HEADERS, gateway_errors

API_STAGE_NAME = "v1"
# API Gateway base64-encodes these request bodies before they reach the function.
BINARY_MEDIA_TYPES = ("image/jpeg", "image/png", "image/webp")
# One JSON object per request; enough to join with the function's logs (requestId) and
# traces (xrayTraceId) and to see who (apiKeyId) got what, how fast.
ACCESS_LOG_FIELDS = {
    "requestId": "$context.requestId",
    "extendedRequestId": "$context.extendedRequestId",
    "xrayTraceId": "$context.xrayTraceId",
    "requestTime": "$context.requestTime",
    "ip": "$context.identity.sourceIp",
    "userAgent": "$context.identity.userAgent",
    "apiKeyId": "$context.identity.apiKeyId",
    "caller": "$context.identity.caller",
    "httpMethod": "$context.httpMethod",
    "resourcePath": "$context.resourcePath",
    "protocol": "$context.protocol",
    "status": "$context.status",
    "responseLength": "$context.responseLength",
    "responseLatency": "$context.responseLatency",
    "integrationStatus": "$context.integration.status",
    "integrationLatency": "$context.integration.latency",
    "errorMessage": "$context.error.message",
    "errorType": "$context.error.responseType",
}


class ServingApi(Construct):
    """Regional REST API with JSON access logs, X-Ray, metrics and a keyed usage plan."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        handler: lambda_.IFunction,
        throttle_rate_rps: float,
        throttle_burst: int,
        quota_per_day: int,
        iam_auth: bool,
        log_retention: logs.RetentionDays,
        removal_policy: RemovalPolicy,
        waf: WafConfig | None = None,
    ) -> None:
        """
        Args:
            handler: The alias the proxy integrations invoke.
            throttle_rate_rps: Usage plan steady-state limit, requests per second.
            throttle_burst: Usage plan burst, requests.
            quota_per_day: Requests per day per key.
            iam_auth: Require SigV4 (IAM) on every route in addition to the API key.
            log_retention: Access and execution log retention.
            removal_policy: Access and execution log groups' removal policy.
            waf: A WAFv2 web ACL on the stage (stacks/firewall.py), or ``None``.
        """
        super().__init__(scope, construct_id)
        self.access_logs = logs.LogGroup(
            self, "AccessLogs", retention=log_retention, removal_policy=removal_policy
        )
        authorization = apigw.AuthorizationType.IAM if iam_auth else apigw.AuthorizationType.NONE
        stack_name = Stack.of(self).stack_name
        self.api = apigw.RestApi(
            self,
            "Api",
            # The name is the ApiName dimension of every API Gateway metric: one per stage.
            rest_api_name=f"{stack_name}-api",
            description="ResNet18 image classification",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            binary_media_types=list(BINARY_MEDIA_TYPES),
            # Execution logging needs the account's API Gateway CloudWatch role, an account/
            # region singleton: ResnetServingAccount (make bootstrap) owns it, no stage does.
            cloud_watch_role=False,
            default_method_options=apigw.MethodOptions(
                api_key_required=True, authorization_type=authorization
            ),
            deploy_options=apigw.StageOptions(
                stage_name=API_STAGE_NAME,
                access_log_destination=apigw.LogGroupLogDestination(self.access_logs),
                access_log_format=apigw.AccessLogFormat.custom(json.dumps(ACCESS_LOG_FIELDS)),
                metrics_enabled=True,
                tracing_enabled=True,
                logging_level=apigw.MethodLoggingLevel.ERROR,
                # Request/response bodies are images and predictions: keep them out of logs.
                data_trace_enabled=False,
            ),
        )
        # EndpointUrl is the stack's documented output; drop the RestApi's generated twin.
        self.api.node.try_remove_child("Endpoint")
        # API Gateway writes execution logs to a group it creates itself, named exactly so, that
        # never expires and outlives the stack. Created first, it is CloudFormation's: the
        # stage's retention, and deleted (dev) or retained (prod) with the stack.
        self.execution_logs = logs.LogGroup(
            self,
            "ExecutionLogs",
            log_group_name=f"API-Gateway-Execution-Logs_{self.api.rest_api_id}/{API_STAGE_NAME}",
            retention=log_retention,
            removal_policy=removal_policy,
        )
        self.api.deployment_stage.node.add_dependency(self.execution_logs)
        validator = self.api.add_request_validator(
            "RequestValidator",
            validate_request_parameters=True,
            # No body models: the function validates images; this only satisfies APIG2's
            # "both flags" check and will apply if a JSON model is ever added.
            validate_request_body=True,
        )
        integration = apigw.LambdaIntegration(handler, proxy=True)
        self.predict_method = self.api.root.add_resource("predict").add_method(
            "POST",
            integration,
            request_validator=validator,
            # Rejected at the edge (400) without invoking, and paying for, the function.
            request_parameters={"method.request.header.Content-Type": True},
        )
        self.health_method = self.api.root.add_resource("health").add_method(
            "GET", integration, request_validator=validator
        )

        self.api_key = self.api.add_api_key("ApiKey", description="Default client key")
        self.usage_plan = self.api.add_usage_plan(
            "UsagePlan",
            description="Per-key throttling and daily quota",
            throttle=apigw.ThrottleSettings(
                rate_limit=throttle_rate_rps, burst_limit=throttle_burst
            ),
            quota=apigw.QuotaSettings(limit=quota_per_day, period=apigw.Period.DAY),
            api_stages=[apigw.UsagePlanPerApiStage(api=self.api, stage=self.api.deployment_stage)],
        )
        self.usage_plan.add_api_key(self.api_key)
        self._add_gateway_responses(iam_auth=iam_auth)

        self.firewall = (
            ApiFirewall(
                self,
                "Firewall",
                stage=self.api.deployment_stage,
                rate_limit_per_5_minutes=waf.rate_limit_per_5_minutes,
                max_body_bytes=waf.max_body_bytes,
                log_retention=log_retention,
                removal_policy=removal_policy,
            )
            if waf is not None
            else None
        )

        self._suppress_findings(iam_auth=iam_auth)

    def _add_gateway_responses(self, *, iam_auth: bool) -> None:
        """API Gateway's own errors in the API's error shape (stacks/gateway_responses.py)."""
        routes = ", ".join(
            f"{method.http_method} {method.resource.path}"
            for method in (self.predict_method, self.health_method)
        )
        for error in gateway_errors(routes=routes, iam_auth=iam_auth):
            self.api.add_gateway_response(
                error.construct_id,
                type=apigw.ResponseType.of(error.response_type),
                templates={"application/json": error.template},
                response_headers=dict(GATEWAY_RESPONSE_HEADERS),
            )

    def _suppress_findings(self, *, iam_auth: bool) -> None:
        """Each suppression on the one resource its rule flags."""
        if self.firewall is None:
            NagSuppressions.add_resource_suppressions(
                self.api.deployment_stage,
                [
                    NagPackSuppression(
                        id="AwsSolutions-APIG3",
                        reason="No WAF on this stage: every request needs an API key and is "
                        "held to its usage plan's throttle and quota; set waf in the stage "
                        "config when the endpoint faces untrusted traffic at scale.",
                    )
                ],
            )
        method_findings = [
            NagPackSuppression(
                id="AwsSolutions-COG4",
                reason="Machine-to-machine API: callers hold an API key (and, with iam_auth, "
                "SigV4 credentials); there are no end users to put in a Cognito user pool.",
            )
        ]
        if not iam_auth:
            method_findings.append(
                NagPackSuppression(
                    id="AwsSolutions-APIG4",
                    reason="Clients authenticate with an API key bound to a usage plan; set "
                    "iam_auth=True in the stage config to also require SigV4.",
                )
            )
        for method in (self.predict_method, self.health_method):
            NagSuppressions.add_resource_suppressions(method, method_findings)
