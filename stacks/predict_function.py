"""The inference function: image from lambda_src/, alias ``live``, provisioned concurrency."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Duration, RemovalPolicy, Size
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from cdk_nag import NagPackSuppression, NagSuppressions
from constructs import Construct

from stacks.config import Architecture
from stacks.model_source import ModelSource
from stacks.model_store import grant_read_models

LAMBDA_SRC = Path(__file__).resolve().parent.parent / "lambda_src"
FUNCTION_LOGICAL_ID = "PredictFunction"
ALIAS_NAME = "live"
MODEL_CACHE_DIR = "/tmp/model-cache"  # noqa: S108 - Lambda's only writable path
METRICS_NAMESPACE = "ResnetServing"

_ARCHITECTURES = {
    "x86_64": (lambda_.Architecture.X86_64, ecr_assets.Platform.LINUX_AMD64),
    "arm64": (lambda_.Architecture.ARM_64, ecr_assets.Platform.LINUX_ARM64),
}


def image_code(
    architecture: Architecture, *, cmd: list[str] | None = None
) -> lambda_.DockerImageCode:
    """The one image built from lambda_src/ (same inputs, so the same asset hash for every
    function); ``cmd`` overrides its CMD (ImageConfig.Command), e.g. ``["batch.handler"]``."""
    return lambda_.DockerImageCode.from_image_asset(
        str(LAMBDA_SRC),
        platform=_ARCHITECTURES[architecture][1],
        exclude=["**/__pycache__", "**/*.pyc"],
        cmd=cmd,
    )


def model_environment(
    *, bucket: s3.IBucket, model: ModelSource, service_name: str, log_level: str
) -> dict[str, str]:
    """What every function of the image needs to load the model (lambda_src/model_store.py
    ``Config.from_env``) and to log and emit metrics (Powertools)."""
    return {
        "MODEL_BUCKET": bucket.bucket_name,
        "MODEL_KEY": model.key,
        "MODEL_SHA256": model.sha256,
        "MODEL_CACHE_DIR": MODEL_CACHE_DIR,
        "POWERTOOLS_SERVICE_NAME": service_name,
        "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
        "POWERTOOLS_LOG_LEVEL": log_level,
    }


class PredictFunction(Construct):
    """DockerImageFunction + log group + least-privilege role + alias ``live``.

    Every deploy publishes a version (``current_version`` hashes the image and the
    environment, so a new model or new code is a new version) and points ``live`` at it;
    CodeDeploy shifts traffic between versions.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        bucket: s3.IBucket,
        model: ModelSource,
        architecture: Architecture,
        memory_mb: int,
        timeout_seconds: int,
        ephemeral_storage_mb: int,
        reserved_concurrency: int | None,
        provisioned_concurrency_min: int,
        provisioned_concurrency_max: int,
        provisioned_concurrency_target_utilization: float,
        service_name: str,
        log_level: str,
        log_retention: logs.RetentionDays,
        removal_policy: RemovalPolicy,
    ) -> None:
        """
        Args:
            bucket: Model bucket; the function may read ``<model.store_prefix>/*`` from it.
            model: Key and sha256 pinned into the environment.
            architecture: ``x86_64`` or ``arm64``; also the image build platform.
            memory_mb: Memory in MB.
            timeout_seconds: Timeout in seconds.
            ephemeral_storage_mb: ``/tmp`` in MB; at least ``model.min_ephemeral_storage_mb``.
            reserved_concurrency: Reserved concurrent executions, or None.
            provisioned_concurrency_min: Provisioned concurrency floor on ``live`` (0 = none).
            provisioned_concurrency_max: Autoscaling ceiling.
            provisioned_concurrency_target_utilization: Target tracking set point, 0-1.
            service_name: ``POWERTOOLS_SERVICE_NAME`` (metric dimension ``service``).
            log_level: ``POWERTOOLS_LOG_LEVEL``.
            log_retention: Function log group retention.
            removal_policy: Log group removal policy.
        """
        super().__init__(scope, construct_id)
        needed = model.min_ephemeral_storage_mb
        if needed is not None and ephemeral_storage_mb < needed:
            raise ValueError(
                f"ephemeral_storage_mb={ephemeral_storage_mb} cannot hold the "
                f"{model.size_bytes} byte model twice plus headroom: raise it to >= {needed}"
            )
        lambda_arch = _ARCHITECTURES[architecture][0]

        self.log_group = logs.LogGroup(
            self, "Logs", retention=log_retention, removal_policy=removal_policy
        )
        # An explicit role instead of AWSLambdaBasicExecutionRole, whose logs:* rights span
        # every log group in the account.
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="Predict function: write its own logs, read content-addressed models",
        )
        self.log_group.grant_write(self.role)
        # Every version shares this role, and CloudFormation updates the policy before CodeDeploy
        # shifts traffic: a grant on only the new model's key would 503 the old version's new
        # environments during a canary and after any rollback.
        models_resource = grant_read_models(self.role, bucket, model)

        self.function = lambda_.DockerImageFunction(
            self,
            "Function",
            code=image_code(architecture),
            architecture=lambda_arch,
            memory_size=memory_mb,
            timeout=Duration.seconds(timeout_seconds),
            ephemeral_storage_size=Size.mebibytes(ephemeral_storage_mb),
            reserved_concurrent_executions=reserved_concurrency,
            tracing=lambda_.Tracing.ACTIVE,
            log_group=self.log_group,
            role=self.role,
            # Versions outlive the deploy that replaced them: `aws lambda update-alias` back to
            # the previous version is the manual rollback, and it must still exist.
            current_version_options=lambda_.VersionOptions(removal_policy=RemovalPolicy.RETAIN),
            description=f"ResNet18 ONNX classifier, model sha256 {model.sha256}",
            environment=model_environment(
                bucket=bucket, model=model, service_name=service_name, log_level=log_level
            ),
        )
        cfn_function = self.function.node.default_child
        assert isinstance(cfn_function, lambda_.CfnFunction)
        cfn_function.override_logical_id(FUNCTION_LOGICAL_ID)
        NagSuppressions.add_resource_suppressions(
            self.role.node.find_child("DefaultPolicy"),
            [
                NagPackSuppression(
                    id="AwsSolutions-IAM5",
                    reason="Active tracing: xray:PutTraceSegments and xray:PutTelemetryRecords "
                    "support no resource-level permissions. s3:GetObject under the "
                    "content-addressed model prefix: every function version shares this role "
                    "and must still read its own model during a canary or after a rollback; the "
                    "handler verifies the sha256.",
                    applies_to=["Resource::*", models_resource],
                )
            ],
        )

        self.alias = lambda_.Alias(
            self,
            "Live",
            alias_name=ALIAS_NAME,
            version=self.function.current_version,
            provisioned_concurrent_executions=provisioned_concurrency_min or None,
        )
        self.scaling: lambda_.IScalableFunctionAttribute | None = None
        if provisioned_concurrency_max > 0:
            self.scaling = self.alias.add_auto_scaling(
                min_capacity=max(provisioned_concurrency_min, 1),
                max_capacity=provisioned_concurrency_max,
            )
            # Target tracking on LambdaProvisionedConcurrencyUtilization.
            self.scaling.scale_on_utilization(
                utilization_target=provisioned_concurrency_target_utilization
            )
