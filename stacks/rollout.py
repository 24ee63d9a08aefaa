"""Safe rollouts: CodeDeploy shifts alias ``live`` to each new version and rolls back on alarm."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_codedeploy as codedeploy
from aws_cdk import aws_lambda as lambda_
from cdk_nag import NagPackSuppression, NagSuppressions
from constructs import Construct


class Rollout(Construct):
    """A LambdaDeploymentGroup on the alias with automatic rollback."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        alias: lambda_.Alias,
        deployment_config: str,
        alarms: Sequence[cloudwatch.IAlarm],
    ) -> None:
        """
        Args:
            alias: Alias ``live``; CloudFormation hands its version updates to CodeDeploy.
            deployment_config: Name of a predefined ``LambdaDeploymentConfig``
                (e.g. ``CANARY_10PERCENT_5MINUTES`` or ``ALL_AT_ONCE``).
            alarms: Any of these in ALARM stops the deployment and restores the old version.
        """
        super().__init__(scope, construct_id)
        self.deployment_group = codedeploy.LambdaDeploymentGroup(
            self,
            "DeploymentGroup",
            alias=alias,
            deployment_config=getattr(codedeploy.LambdaDeploymentConfig, deployment_config),
            alarms=list(alarms),
            auto_rollback=codedeploy.AutoRollbackConfig(
                failed_deployment=True, stopped_deployment=True, deployment_in_alarm=True
            ),
        )
        NagSuppressions.add_resource_suppressions(
            self.deployment_group.role,
            [
                NagPackSuppression(
                    id="AwsSolutions-IAM4",
                    reason="AWSCodeDeployRoleForLambdaLimited is AWS's scoped policy for "
                    "CodeDeploy's Lambda traffic shifting.",
                    applies_to=[
                        "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                        "AWSCodeDeployRoleForLambdaLimited"
                    ],
                )
            ],
        )
