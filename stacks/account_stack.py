"""ResnetServingAccount: the account/region-wide settings the serving stacks rely on.

API Gateway writes execution logs through ONE IAM role per account and region
(``AWS::ApiGateway::Account``, a singleton: every stack that declares it overwrites the
setting, and deleting that stack can leave it pointing at a deleted role). So no serving
stack declares it. This small stack does, once per account/region, deployed by
``make bootstrap``; ``make preflight`` checks the setting before every deploy.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_iam as iam
from cdk_nag import NagPackSuppression, NagSuppressions
from constructs import Construct

ACCOUNT_STACK_ID = "ResnetServingAccount"
ROLE_LOGICAL_ID = "ApiGatewayCloudWatchRole"
ACCOUNT_LOGICAL_ID = "ApiGatewayAccount"
PUSH_TO_CLOUDWATCH_POLICY = "service-role/AmazonAPIGatewayPushToCloudWatchLogs"


class ApiGatewayCloudWatchRole(Construct):
    """The IAM role API Gateway assumes to write logs, set as the account's logging role."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("apigateway.amazonaws.com"),
            description="API Gateway's account-wide CloudWatch Logs role (execution logs)",
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name(PUSH_TO_CLOUDWATCH_POLICY)
            ],
        )
        self.account = apigw.CfnAccount(self, "Account", cloud_watch_role_arn=self.role.role_arn)
        for resource, logical_id in (
            (self.role.node.default_child, ROLE_LOGICAL_ID),
            (self.account, ACCOUNT_LOGICAL_ID),
        ):
            assert isinstance(resource, iam.CfnRole | apigw.CfnAccount)
            resource.override_logical_id(logical_id)
            # Every REST API in the account/region logs through this role, so deleting the
            # stack must leave both behind. Not on create, though: when the first create
            # fails (IAM not yet propagated to API Gateway), the rollback removes the role
            # instead of orphaning it, and `make bootstrap` can simply run again.
            resource.apply_removal_policy(RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE)

        NagSuppressions.add_resource_suppressions(
            self.role,
            [
                NagPackSuppression(
                    id="AwsSolutions-IAM4",
                    reason="AmazonAPIGatewayPushToCloudWatchLogs is the AWS-documented policy of "
                    "the account-level API Gateway logging role.",
                    applies_to=[
                        "Policy::arn:<AWS::Partition>:iam::aws:policy/" + PUSH_TO_CLOUDWATCH_POLICY
                    ],
                )
            ],
        )


class AccountStack(Stack):
    """Deployed once per account and region (``make bootstrap``), before any stage."""

    def __init__(self, scope: Construct, **kwargs: Any) -> None:
        super().__init__(
            scope,
            ACCOUNT_STACK_ID,
            description="Account/region-wide settings for ResnetServing stacks: API Gateway's "
            "CloudWatch Logs role (deployed once by make bootstrap)",
            tags={"project": "resnet-serving"},
            **kwargs,
        )
        logging_role = ApiGatewayCloudWatchRole(self, "ApiGatewayLogging")
        CfnOutput(
            self,
            "ApiGatewayCloudWatchRoleArn",
            value=logging_role.role.role_arn,
            description="aws apigateway get-account shows it as cloudwatchRoleArn",
        )
        self.logging_role = logging_role
