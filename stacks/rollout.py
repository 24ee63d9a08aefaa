"""Safe rollouts: CodeDeploy shifts alias ``live`` to each new version and rolls back on alarm.

Before any traffic moves, a BeforeAllowTraffic hook (``rollout_hook/``) invokes the new version
with a photograph shipped with the stack and fails the deployment unless it answers 200, with
the deployed model's sha256 and the top-1 recorded at export.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_codedeploy as codedeploy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from cdk_nag import NagPackSuppression, NagSuppressions, RegexAppliesTo
from constructs import Construct

from stacks.model_source import ROLLOUT_HOOK_DIR, ModelSource

REFERENCE_IMAGE = "reference.jpg"
# Synchronous invoke of a new version: a cold start (image pull, model download, session)
# plus the function's own timeout fit well inside this.
INVOKE_TIMEOUT_SECONDS = 75
HOOK_TIMEOUT_SECONDS = 120


def hook_environment(*, model: ModelSource, target_function_arn: str) -> dict[str, str]:
    """The hook's environment: what to invoke and what it must answer.

    ``target_function_arn`` is the new version's ARN (a token in a stack). Without a recorded
    reference the top-1 variables are absent and the hook checks status and sha256 only.
    """
    image = ROLLOUT_HOOK_DIR / REFERENCE_IMAGE
    environment = {
        "TARGET_FUNCTION_ARN": target_function_arn,
        "EXPECTED_MODEL_SHA256": model.sha256,
        "REFERENCE_IMAGE": image.name,
        "REFERENCE_IMAGE_SHA256": hashlib.sha256(image.read_bytes()).hexdigest(),
        "INVOKE_TIMEOUT_SECONDS": str(INVOKE_TIMEOUT_SECONDS),
    }
    reference = model.reference
    if reference is not None:
        if reference.image != image.name:
            raise ValueError(f"the reference was recorded for {reference.image}, not {image.name}")
        environment["REFERENCE_TOP1_INDEX"] = str(reference.top1_index)
        if reference.top1_label:
            environment["REFERENCE_TOP1_LABEL"] = reference.top1_label
    return environment


class PreTrafficHook(Construct):
    """The BeforeAllowTraffic function: zip from ``rollout_hook/``, its log group and role.

    The role may write its own log group and invoke exactly ``version``; the deployment group
    adds ``codedeploy:PutLifecycleEventHookExecutionStatus`` on itself when the function
    becomes its pre-hook.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        version: lambda_.IVersion,
        model: ModelSource,
        log_retention: logs.RetentionDays,
        removal_policy: RemovalPolicy,
    ) -> None:
        """
        Args:
            version: The predict function's new version (``current_version``) to test.
            model: The deployed model: its sha256 and recorded reference prediction.
            log_retention: Hook log group retention.
            removal_policy: Hook log group removal policy.
        """
        super().__init__(scope, construct_id)
        self.log_group = logs.LogGroup(
            self, "Logs", retention=log_retention, removal_policy=removal_policy
        )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="Rollout hook: write its own logs, invoke the version under test",
        )
        self.log_group.grant_write(self.role)
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="InvokeTheNewVersion",
                actions=["lambda:InvokeFunction"],
                resources=[version.function_arn],
            )
        )
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=lambda_.Runtime.PYTHON_3_12,
            architecture=lambda_.Architecture.ARM_64,
            handler="hook.handler",
            code=lambda_.Code.from_asset(
                str(ROLLOUT_HOOK_DIR), exclude=["**/__pycache__", "**/*.pyc"]
            ),
            memory_size=256,
            timeout=Duration.seconds(HOOK_TIMEOUT_SECONDS),
            role=self.role,
            log_group=self.log_group,
            logging_format=lambda_.LoggingFormat.JSON,
            description="CodeDeploy BeforeAllowTraffic: classify the reference photograph "
            "with the new version before it gets traffic",
            environment=hook_environment(model=model, target_function_arn=version.function_arn),
        )
        NagSuppressions.add_resource_suppressions(
            self.function,
            [
                NagPackSuppression(
                    id="AwsSolutions-L1",
                    reason="Pinned to Python 3.12, the serving image's Python, so both move "
                    "together; the hook uses only the standard library and boto3.",
                )
            ],
        )


class Rollout(Construct):
    """A LambdaDeploymentGroup on the alias with automatic rollback and a pre-traffic check."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        alias: lambda_.Alias,
        model: ModelSource,
        log_retention: logs.RetentionDays,
        removal_policy: RemovalPolicy,
        deployment_config: str,
        alarms: Sequence[cloudwatch.IAlarm],
    ) -> None:
        """
        Args:
            alias: Alias ``live``; CloudFormation hands its version updates to CodeDeploy.
            model: The deployed model; the pre-traffic hook checks the new version serves it.
            log_retention: The hook's log group retention.
            removal_policy: The hook's log group removal policy.
            deployment_config: Name of a predefined ``LambdaDeploymentConfig``
                (e.g. ``CANARY_10PERCENT_5MINUTES`` or ``ALL_AT_ONCE``).
            alarms: Any of these in ALARM stops the deployment and restores the old version.
        """
        super().__init__(scope, construct_id)
        self.hook = PreTrafficHook(
            self,
            "PreTrafficHook",
            version=alias.version,
            model=model,
            log_retention=log_retention,
            removal_policy=removal_policy,
        )
        self.deployment_group = codedeploy.LambdaDeploymentGroup(
            self,
            "DeploymentGroup",
            alias=alias,
            deployment_config=getattr(codedeploy.LambdaDeploymentConfig, deployment_config),
            alarms=list(alarms),
            # aws-cdk-lib grants the deployment group's role lambda:InvokeFunction on the hook
            # (AWSCodeDeployRoleForLambdaLimited alone allows only functions named
            # CodeDeployHook_*) and the hook codedeploy:PutLifecycleEventHookExecutionStatus.
            pre_hook=self.hook.function,
            auto_rollback=codedeploy.AutoRollbackConfig(
                failed_deployment=True, stopped_deployment=True, deployment_in_alarm=True
            ),
        )
        # The alias update starts the CodeDeploy deployment, which invokes the hook: the hook
        # must already point at the new version and be allowed to invoke it by then.
        alias.node.add_dependency(self.hook)
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
        NagSuppressions.add_resource_suppressions(
            self.deployment_group.role.node.find_child("DefaultPolicy"),
            [
                NagPackSuppression(
                    id="AwsSolutions-IAM5",
                    reason="aws-cdk-lib's addPreHook grants CodeDeploy lambda:InvokeFunction on "
                    "the hook function and its qualifiers (<hook ARN>:*); it is the one hook "
                    "function of this deployment group.",
                    applies_to=[
                        RegexAppliesTo(
                            regex=r"/^Resource::<RolloutPreTrafficHookFunction[0-9A-F]{8}\.Arn>:\*$/g"
                        )
                    ],
                )
            ],
        )
