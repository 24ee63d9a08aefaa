"""The model bucket (and its access-log bucket), and the upload of an exported model."""

from __future__ import annotations

from typing import Any

from aws_cdk import Duration, RemovalPolicy, Size, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_deployment as s3deploy
from cdk_nag import NagPackSuppression, NagSuppressions
from constructs import Construct

from stacks.model_source import MANIFEST_FILE, MODEL_FILE, ModelSource

# Logical IDs of stateful resources never change with construct refactors: a new ID would
# make CloudFormation create a new, empty bucket and orphan (prod) or delete (dev) the old one.
MODEL_BUCKET_LOGICAL_ID = "ModelBucket"
ACCESS_LOG_BUCKET_LOGICAL_ID = "ModelAccessLogBucket"


def grant_read_models(role: iam.IRole, bucket: s3.IBucket, model: ModelSource) -> str:
    """Let ``role`` read every content-addressed model (``<model.store_prefix>/*``) in ``bucket``.

    Not only ``model.key``: CloudFormation changes a function's environment and its role's
    policy in separate steps, and every version of the predict function shares its role. A grant
    on only the new key would 403 an older version's (or the old environment's) cold start during
    a canary, a rollback or the stack update itself. The trust rule is the digest: each function
    downloads only its ``MODEL_KEY`` and refuses bytes whose sha256 is not its ``MODEL_SHA256``.

    Returns the grant's resource as cdk-nag prints it, for the role's ``AwsSolutions-IAM5``
    suppression (``applies_to``).
    """
    role.add_to_principal_policy(
        iam.PolicyStatement(
            sid="ReadContentAddressedModels",
            actions=["s3:GetObject"],
            resources=[bucket.arn_for_objects(f"{model.store_prefix}/*")],
        )
    )
    return f"Resource::<{MODEL_BUCKET_LOGICAL_ID}.Arn>/{model.store_prefix}/*"


def _secure_bucket(
    scope: Construct, construct_id: str, *, removal_policy: RemovalPolicy, **props: Any
) -> s3.Bucket:
    """A bucket with what every bucket here gets: SSE-S3, TLS only, no public access, no ACLs,
    versioning; ``props`` add the rest (lifecycle, access logs).

    DESTROY also empties the bucket on ``cdk destroy`` (CloudFormation cannot delete a
    non-empty bucket); RETAIN leaves bucket and objects in place.
    """
    return s3.Bucket(
        scope,
        construct_id,
        # SSE-S3: the model is not secret, and SSE-KMS would add a KMS call (latency, cost,
        # request quota) to every cold start's download; server access log delivery only
        # supports SSE-S3 on its target bucket.
        encryption=s3.BucketEncryption.S3_MANAGED,
        enforce_ssl=True,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        versioned=True,
        removal_policy=removal_policy,
        auto_delete_objects=removal_policy == RemovalPolicy.DESTROY,
        **props,
    )


class ModelStore(Construct):
    """A private, versioned, TLS-only bucket holding content-addressed models.

    Keys follow the exporter's publish layout ``models/<sha256>/{model.onnx,manifest.json}``.
    When ``model.artifact_dir`` is set the two files are uploaded during the deploy.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        model: ModelSource,
        removal_policy: RemovalPolicy,
        noncurrent_version_expiration_days: int,
        access_log_expiration_days: int,
        log_retention: logs.RetentionDays,
    ) -> None:
        """
        Args:
            model: The model to serve; uploaded here when it comes from an artifact dir.
            removal_policy: RETAIN keeps both buckets on ``cdk destroy``; DESTROY empties and
                deletes them.
            noncurrent_version_expiration_days: Days, after which overwritten/deleted object
                versions are removed.
            access_log_expiration_days: Days the server access logs are kept.
            log_retention: Retention of the upload custom resource's log group.
        """
        super().__init__(scope, construct_id)

        self.access_log_bucket = _secure_bucket(
            self,
            "AccessLogBucket",
            removal_policy=removal_policy,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="ExpireAccessLogs",
                    expiration=Duration.days(access_log_expiration_days),
                    noncurrent_version_expiration=Duration.days(1),
                )
            ],
        )
        _pin_logical_id(self.access_log_bucket, ACCESS_LOG_BUCKET_LOGICAL_ID)
        NagSuppressions.add_resource_suppressions(
            self.access_log_bucket,
            [
                NagPackSuppression(
                    id="AwsSolutions-S1",
                    reason="This is the server access log destination of the model bucket; "
                    "logging it into itself would loop.",
                )
            ],
        )

        self.bucket = _secure_bucket(
            self,
            "Bucket",
            removal_policy=removal_policy,
            server_access_logs_bucket=self.access_log_bucket,
            server_access_logs_prefix="model-bucket/",
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="ExpireNoncurrentVersions",
                    noncurrent_version_expiration=Duration.days(noncurrent_version_expiration_days),
                    abort_incomplete_multipart_upload_after=Duration.days(1),
                )
            ],
        )
        _pin_logical_id(self.bucket, MODEL_BUCKET_LOGICAL_ID)

        self.deployment: s3deploy.BucketDeployment | None = None
        if model.artifact_dir is not None:
            upload_logs = logs.LogGroup(
                self,
                "UploadLogs",
                retention=log_retention,
                removal_policy=removal_policy,
            )
            self.deployment = s3deploy.BucketDeployment(
                self,
                "Upload",
                sources=[
                    s3deploy.Source.asset(
                        str(model.artifact_dir),
                        # Only the two contract files, whatever else the exporter left there.
                        exclude=["*", f"!{MODEL_FILE}", f"!{MANIFEST_FILE}"],
                    )
                ],
                destination_bucket=self.bucket,
                destination_key_prefix=model.key_prefix,
                # Keep older models when the key changes: a CodeDeploy rollback moves the alias
                # back to a version whose MODEL_KEY still has to exist.
                retain_on_delete=True,
                prune=False,
                memory_limit=1024,
                ephemeral_storage_size=Size.mebibytes(
                    max(1024, 2 * (model.min_ephemeral_storage_mb or 0))
                ),
                log_group=upload_logs,
            )
            _suppress_upload_findings(self.deployment)


def _suppress_upload_findings(deployment: s3deploy.BucketDeployment) -> None:
    # The upload runs in aws-cdk-lib's singleton provider function, outside this construct.
    role_path = deployment.handler_role.node.path
    provider_path = role_path.rpartition("/")[0]
    stack = Stack.of(deployment)
    NagSuppressions.add_resource_suppressions_by_path(
        stack,
        f"{role_path}/Resource",
        [
            NagPackSuppression(
                id="AwsSolutions-IAM4",
                reason="aws-cdk-lib's BucketDeployment provider runs with "
                "AWSLambdaBasicExecutionRole to write its own logs.",
                applies_to=[
                    "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                    "AWSLambdaBasicExecutionRole"
                ],
            )
        ],
    )
    NagSuppressions.add_resource_suppressions_by_path(
        stack,
        f"{role_path}/DefaultPolicy/Resource",
        [
            NagPackSuppression(
                id="AwsSolutions-IAM5",
                reason="BucketDeployment's generated grants: read the staged asset zip in the "
                "CDK bootstrap bucket, write/abort uploads under the model bucket. Scoped to "
                "those two buckets; used only during deploys.",
                applies_to=[
                    "Action::s3:GetBucket*",
                    "Action::s3:GetObject*",
                    "Action::s3:List*",
                    "Action::s3:Abort*",
                    "Action::s3:DeleteObject*",
                    "Resource::arn:<AWS::Partition>:s3:::"
                    "cdk-hnb659fds-assets-<AWS::AccountId>-<AWS::Region>/*",
                    f"Resource::<{MODEL_BUCKET_LOGICAL_ID}.Arn>/*",
                ],
            )
        ],
    )
    NagSuppressions.add_resource_suppressions_by_path(
        stack,
        f"{provider_path}/Resource",
        [
            NagPackSuppression(
                id="AwsSolutions-L1",
                reason="The runtime of aws-cdk-lib's BucketDeployment provider is chosen by "
                "aws-cdk-lib; it moves with the aws-cdk-lib pin.",
            )
        ],
    )


def _pin_logical_id(bucket: s3.Bucket, logical_id: str) -> None:
    cfn = bucket.node.default_child
    assert isinstance(cfn, s3.CfnBucket)
    cfn.override_logical_id(logical_id)
