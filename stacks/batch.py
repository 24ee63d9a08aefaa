"""Batch predictions: a Step Functions Distributed Map over S3 images, the same image and model.

    execution input {"source": "prefix", "prefix": "photos/"}            (every object listed)
                 or {"source": "jsonl"|"csv", "manifest_key": "manifests/x.jsonl"}
      -> Choice -> DistributedMap (ItemReader: S3 listing / JSONL / CSV manifest)
           ItemBatcher: up to items_per_batch keys + BatchInput {bucket, output_bucket,
                        output_prefix, run_id = execution name}
           EXPRESS child: LambdaInvoke the batch function (image CMD overridden to batch.handler)
           ResultWriter: the children's summaries -> s3://<output>/results/map-runs/<map run id>/
      -> the worker writes s3://<output>/results/<run id>/<batch digest>.jsonl (one line per key)

Docs: docs/batch.md (the AWS and CDK pages this relies on are cited there).
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Duration, FeatureFlags, RemovalPolicy, Size, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from cdk_nag import NagPackSuppression, NagSuppressions
from constructs import Construct

from stacks.config import Architecture
from stacks.model_source import ModelSource
from stacks.model_store import _pin_logical_id, _secure_bucket, grant_read_models
from stacks.predict_function import _ARCHITECTURES, image_code, model_environment

BATCH_HANDLER = "batch.handler"
# lambda_src/batch.py raises this for what a retry can fix (S3 5xx/throttling, model not ready).
RETRYABLE_BATCH_ERROR = "BatchRetryableError"
# AWS's standard retry for Lambda service-side errors ("Handle transient Lambda service
# exceptions"), as in the Distributed Map batching tutorial.
LAMBDA_SERVICE_ERRORS = (
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
)
RESULTS_PREFIX = "results/"
# Step Functions appends "/<map run id>/manifest.json, SUCCEEDED_0.json, ..." to this.
MAP_RUNS_PREFIX = "results/map-runs"
MANIFESTS_DIR = "manifests/"
# A child workflow's input (the batch) may not exceed 256 KiB; keep headroom for BatchInput.
MAX_INPUT_BYTES_PER_BATCH = 200 * 1024
# A listing item is ~150 bytes plus its key (<= 1,024 bytes): 200 items stay under the cap.
MAX_ITEMS_PER_BATCH = 200
# EXPRESS child workflows end after 5 minutes; one invocation must leave room for a retry.
EXPRESS_CHILD_LIMIT_SECONDS = 300
# Worker tuning, visible in the template (lambda_src/batch.py reads them).
FETCH_THREADS = 8
SUB_BATCH = 8

INPUT_BUCKET_LOGICAL_ID = "BatchInputBucket"
OUTPUT_BUCKET_LOGICAL_ID = "BatchOutputBucket"
BATCH_FUNCTION_LOGICAL_ID = "BatchFunction"
# Execution input "source" -> the map state (and Map Run label) that reads it.
MAP_LABELS = {"prefix": "ListedObjects", "jsonl": "JsonlManifest", "csv": "CsvManifest"}
# aws-cdk-lib's cx_api constant for it is not exported to Python.
RESULT_WRITER_V2_FLAG = "@aws-cdk/aws-stepfunctions:useDistributedMapResultWriterV2"


class BatchPredictions(Construct):
    """Input/output buckets, the batch function and the Distributed Map state machine."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        model_bucket: s3.IBucket,
        model: ModelSource,
        access_log_bucket: s3.IBucket,
        architecture: Architecture,
        memory_mb: int,
        timeout_seconds: int,
        ephemeral_storage_mb: int,
        reserved_concurrency: int | None,
        max_concurrency: int,
        items_per_batch: int,
        tolerated_failure_percentage: float,
        input_bucket_name: str | None,
        input_prefix: str,
        output_bucket_name: str | None,
        result_expiration_days: int,
        noncurrent_version_expiration_days: int,
        run_timeout_hours: int,
        service_name: str,
        log_level: str,
        log_retention: logs.RetentionDays,
        removal_policy: RemovalPolicy,
    ) -> None:
        """
        Args:
            model_bucket: Bucket of the served model; the function may read
                ``<model.store_prefix>/*`` from it, as the predict function.
            model: Key and sha256 pinned into the function's environment.
            access_log_bucket: Destination of the created buckets' server access logs.
            architecture: ``x86_64`` or ``arm64``, as the real-time function (same image).
            memory_mb: Batch function memory in MB (1769 MB = 1 vCPU).
            timeout_seconds: Batch function timeout in seconds (one batch).
            ephemeral_storage_mb: ``/tmp`` in MB for the model cache.
            reserved_concurrency: Reserved concurrent executions of the batch function (its
                own pool), or None: the run then draws from the unreserved pool.
            max_concurrency: Child workflows (batches) in flight; at most the reservation when
                there is one. Each child invokes the function once at a time, so this also
                bounds the function's concurrent executions.
            items_per_batch: Objects per child workflow (ItemBatcher MaxItemsPerBatch).
            tolerated_failure_percentage: Failed batches, in percent (0-100), a run tolerates.
            input_bucket_name: An existing bucket to read images from, or None to create one.
            input_prefix: Key prefix (ending in ``/``, or empty) the run may read and list;
                manifests live under ``<input_prefix>manifests/``.
            output_bucket_name: An existing bucket for results, or None to create one.
            result_expiration_days: Days until objects under ``results/`` expire (created
                output bucket only).
            noncurrent_version_expiration_days: Days overwritten input objects are kept.
            run_timeout_hours: Hours after which a run (parent execution) is stopped.
            service_name: ``POWERTOOLS_SERVICE_NAME`` of the batch function.
            log_level: ``POWERTOOLS_LOG_LEVEL``.
            log_retention: Retention of the function's and the state machine's log groups.
            removal_policy: Created buckets and log groups on ``cdk destroy``.
        """
        super().__init__(scope, construct_id)
        if max_concurrency < 1 or (
            reserved_concurrency is not None and max_concurrency > reserved_concurrency
        ):
            raise ValueError("max_concurrency must be >= 1 and at most reserved_concurrency")
        if not 1 <= items_per_batch <= MAX_ITEMS_PER_BATCH:
            raise ValueError(f"items_per_batch must be 1-{MAX_ITEMS_PER_BATCH}")
        if input_prefix and not input_prefix.endswith("/"):
            raise ValueError("input_prefix must be empty or end with '/'")
        self.input_prefix = input_prefix
        self.manifest_prefix = f"{input_prefix}{MANIFESTS_DIR}"

        # ---------------------------------------------------------- buckets
        self.input_bucket: s3.IBucket
        self.output_bucket: s3.IBucket
        if input_bucket_name is None:
            created = _secure_bucket(
                self,
                "InputBucket",
                removal_policy=removal_policy,
                server_access_logs_bucket=access_log_bucket,
                server_access_logs_prefix="batch-input/",
                lifecycle_rules=[
                    s3.LifecycleRule(
                        id="ExpireNoncurrentVersions",
                        noncurrent_version_expiration=Duration.days(
                            noncurrent_version_expiration_days
                        ),
                        abort_incomplete_multipart_upload_after=Duration.days(1),
                    )
                ],
            )
            _pin_logical_id(created, INPUT_BUCKET_LOGICAL_ID)
            self.input_bucket = created
        else:
            self.input_bucket = s3.Bucket.from_bucket_name(self, "InputBucket", input_bucket_name)
        if output_bucket_name is None:
            created = _secure_bucket(
                self,
                "OutputBucket",
                removal_policy=removal_policy,
                server_access_logs_bucket=access_log_bucket,
                server_access_logs_prefix="batch-output/",
                lifecycle_rules=[
                    s3.LifecycleRule(
                        id="ExpireResults",
                        prefix=RESULTS_PREFIX,
                        expiration=Duration.days(result_expiration_days),
                        # A retried batch overwrites its object; the old version goes soon.
                        noncurrent_version_expiration=Duration.days(1),
                        abort_incomplete_multipart_upload_after=Duration.days(1),
                    )
                ],
            )
            _pin_logical_id(created, OUTPUT_BUCKET_LOGICAL_ID)
            self.output_bucket = created
        else:
            self.output_bucket = s3.Bucket.from_bucket_name(
                self, "OutputBucket", output_bucket_name
            )

        # ---------------------------------------------------------- the batch function
        self.log_group = logs.LogGroup(
            self, "FunctionLogs", retention=log_retention, removal_policy=removal_policy
        )
        self.role = iam.Role(
            self,
            "FunctionRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="Batch function: its logs, content-addressed models, input reads, results",
        )
        self.log_group.grant_write(self.role)
        # The same grant as the predict function's: during a stack update the function's new
        # environment (MODEL_KEY) and this policy change in separate steps, and a cold start in
        # between must still read the model its environment names.
        models_resource = grant_read_models(self.role, model_bucket, model)
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadInputImages",
                actions=["s3:GetObject"],
                resources=[self.input_bucket.arn_for_objects(f"{input_prefix}*")],
            )
        )
        # With ListBucket S3 answers 404 for a key deleted after the listing, without it 403:
        # the error line then says not_found instead of access_denied.
        self.role.add_to_policy(_list_statement("ListInputImages", self.input_bucket, input_prefix))
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="WriteBatchResults",
                actions=["s3:PutObject"],
                resources=[self.output_bucket.arn_for_objects(f"{RESULTS_PREFIX}*")],
            )
        )
        self.function = lambda_.DockerImageFunction(
            self,
            "Function",
            code=image_code(architecture, cmd=[BATCH_HANDLER]),
            architecture=_ARCHITECTURES[architecture][0],
            memory_size=memory_mb,
            timeout=Duration.seconds(timeout_seconds),
            ephemeral_storage_size=Size.mebibytes(ephemeral_storage_mb),
            reserved_concurrent_executions=reserved_concurrency,
            tracing=lambda_.Tracing.ACTIVE,
            log_group=self.log_group,
            role=self.role,
            description=f"ResNet18 batch predictions, model sha256 {model.sha256}",
            environment={
                **model_environment(
                    bucket=model_bucket, model=model, service_name=service_name, log_level=log_level
                ),
                "BATCH_FETCH_THREADS": str(FETCH_THREADS),
                "BATCH_SUB_BATCH": str(SUB_BATCH),
            },
        )
        cfn_function = self.function.node.default_child
        assert isinstance(cfn_function, lambda_.CfnFunction)
        cfn_function.override_logical_id(BATCH_FUNCTION_LOGICAL_ID)
        NagSuppressions.add_resource_suppressions(
            self.role.node.find_child("DefaultPolicy"),
            [
                NagPackSuppression(
                    id="AwsSolutions-IAM5",
                    reason="Reads any image under the input prefix and writes one object per "
                    "batch under results/ (keys known only at run time); reads the "
                    "content-addressed models as the predict function does (the environment "
                    "and the policy change separately during an update; the handler verifies "
                    "the sha256); X-Ray's write actions have no resource-level permissions.",
                    applies_to=[
                        "Resource::*",
                        models_resource,
                        f"Resource::{_nag_arn(self.input_bucket)}/{input_prefix}*",
                        f"Resource::{_nag_arn(self.output_bucket)}/{RESULTS_PREFIX}*",
                    ],
                )
            ],
        )

        # ---------------------------------------------------------- the state machine
        maps = {
            "prefix": self._map(
                MAP_LABELS["prefix"],
                _ScopedObjectsReader(
                    bucket=self.input_bucket,
                    prefix=sfn.JsonPath.string_at("$.prefix"),
                    scope_prefix=input_prefix,
                ),
                items_per_batch,
                max_concurrency,
                tolerated_failure_percentage,
            ),
            "jsonl": self._map(
                MAP_LABELS["jsonl"],
                _ScopedJsonlReader(
                    bucket=self.input_bucket,
                    key=sfn.JsonPath.string_at("$.manifest_key"),
                    scope_prefix=self.manifest_prefix,
                ),
                items_per_batch,
                max_concurrency,
                tolerated_failure_percentage,
            ),
            "csv": self._map(
                MAP_LABELS["csv"],
                _ScopedCsvReader(
                    bucket=self.input_bucket,
                    key=sfn.JsonPath.string_at("$.manifest_key"),
                    csv_headers=sfn.CsvHeaders.use_first_row(),
                    scope_prefix=self.manifest_prefix,
                ),
                items_per_batch,
                max_concurrency,
                tolerated_failure_percentage,
            ),
        }
        done = sfn.Succeed(self, "Done")
        unknown = sfn.Fail(
            self,
            "UnknownSource",
            error="BatchInputError",
            cause='Start a run with {"source": "prefix", "prefix": "<key prefix>"} or '
            '{"source": "jsonl"|"csv", "manifest_key": "<key of the manifest>"} '
            "(python -m classifier_client batch builds it).",
        )
        choice = sfn.Choice(self, "Source")
        for source, map_state in maps.items():
            field = "$.prefix" if source == "prefix" else "$.manifest_key"
            choice.when(
                sfn.Condition.and_(
                    sfn.Condition.string_equals("$.source", source),
                    sfn.Condition.is_string(field),
                ),
                map_state.next(done),
            )
        choice.otherwise(unknown)

        self.state_machine_logs = logs.LogGroup(
            self, "StateMachineLogs", retention=log_retention, removal_policy=removal_policy
        )
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            definition_body=sfn.DefinitionBody.from_chainable(choice),
            state_machine_type=sfn.StateMachineType.STANDARD,
            timeout=Duration.hours(run_timeout_hours),
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=self.state_machine_logs,
                level=sfn.LogLevel.ALL,
                # Item lists are user keys in bulk; the events and errors are what operators need.
                include_execution_data=False,
            ),
            comment="Batch predictions over S3 images (docs/batch.md)",
        )
        self._suppress_state_machine_findings(list(MAP_LABELS.values()))
        _require_result_writer(self)

    def _map(
        self,
        label: str,
        reader: sfn.IItemReader,
        items_per_batch: int,
        max_concurrency: int,
        tolerated_failure_percentage: float,
    ) -> sfn.DistributedMap:
        map_state = sfn.DistributedMap(
            self,
            label,
            label=label,
            item_reader=reader,
            item_batcher=sfn.ItemBatcher(
                max_items_per_batch=items_per_batch,
                max_input_bytes_per_batch=MAX_INPUT_BYTES_PER_BATCH,
                # ASL paths, kept literally by CDK: each batch knows where to read and write.
                batch_input={
                    "bucket": self.input_bucket.bucket_name,
                    "output_bucket": self.output_bucket.bucket_name,
                    "output_prefix": RESULTS_PREFIX,
                    "run_id.$": "$$.Execution.Name",
                },
            ),
            map_execution_type=sfn.StateMachineType.EXPRESS,
            max_concurrency=max_concurrency,
            tolerated_failure_percentage=tolerated_failure_percentage,
            result_writer_v2=_ScopedResultWriter(bucket=self.output_bucket, prefix=MAP_RUNS_PREFIX),
            result_path="$.map",
        )
        classify = tasks.LambdaInvoke(
            self,
            f"Classify{label}",
            lambda_function=self.function,
            payload=sfn.TaskInput.from_json_path_at("$"),
            output_path="$.Payload",
            retry_on_service_exceptions=False,
        )
        classify.add_retry(
            errors=list(LAMBDA_SERVICE_ERRORS),
            interval=Duration.seconds(2),
            max_attempts=6,
            backoff_rate=2,
            jitter_strategy=sfn.JitterType.FULL,
        )
        classify.add_retry(
            errors=[RETRYABLE_BATCH_ERROR],
            interval=Duration.seconds(5),
            max_attempts=2,
            backoff_rate=2,
            jitter_strategy=sfn.JitterType.FULL,
        )
        map_state.item_processor(classify)
        return map_state

    def _suppress_state_machine_findings(self, labels: list[str]) -> None:
        stack = Stack.of(self)
        machine_id = stack.resolve(self.state_machine.state_machine_arn)["Ref"]
        executions = (
            "arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:"
            f'{{"Fn::Select":[6,{{"Fn::Split":[":",{{"Ref":"{machine_id}"}}]}}]}}'
        )
        # The role's default policy and the DistributedMap policy aws-cdk-lib adds beside it.
        for policy in self.state_machine.node.find_all():
            if not isinstance(policy, iam.Policy):
                continue
            NagSuppressions.add_resource_suppressions(
                policy,
                [
                    NagPackSuppression(
                        id="AwsSolutions-IAM5",
                        reason="Step Functions' documented policy for a Distributed Map, its "
                        "logs and traces: describe/stop/redrive the run's own child executions "
                        "(names known only at run time), invoke the batch function's versions, "
                        "read manifests and write map results under fixed prefixes; log "
                        "delivery and X-Ray actions support no resource-level permissions.",
                        applies_to=[
                            "Resource::*",
                            f"Resource::<{BATCH_FUNCTION_LOGICAL_ID}.Arn>:*",
                            f"Resource::{executions}:*",
                            *(f"Resource::{executions}/{label}:*" for label in labels),
                            f"Resource::{_nag_arn(self.input_bucket)}/{self.manifest_prefix}*",
                            f"Resource::{_nag_arn(self.output_bucket)}/{MAP_RUNS_PREFIX}/*",
                        ],
                    )
                ],
            )


# ------------------------------------------------------------------ scoped readers and writer
# aws-cdk-lib grants its readers and writer bucket-wide (s3:GetObject on <bucket>/*, s3:PutObject
# on <bucket>/*). These subclasses keep the ASL they render and grant only the prefixes used.


class _ScopedObjectsReader(sfn.S3ObjectsItemReader):
    def __init__(self, *, scope_prefix: str, **props: Any) -> None:
        super().__init__(**props)
        self._scope_prefix = scope_prefix

    def provide_policy_statements(self) -> list[iam.PolicyStatement]:
        return [_list_statement(None, self.bucket, self._scope_prefix)]


class _ScopedJsonlReader(sfn.S3JsonLItemReader):
    def __init__(self, *, scope_prefix: str, **props: Any) -> None:
        super().__init__(**props)
        self._scope_prefix = scope_prefix

    def provide_policy_statements(self) -> list[iam.PolicyStatement]:
        return [_get_manifests(self.bucket, self._scope_prefix)]


class _ScopedCsvReader(sfn.S3CsvItemReader):
    def __init__(self, *, scope_prefix: str, **props: Any) -> None:
        super().__init__(**props)
        self._scope_prefix = scope_prefix

    def provide_policy_statements(self) -> list[iam.PolicyStatement]:
        return [_get_manifests(self.bucket, self._scope_prefix)]


class _ScopedResultWriter(sfn.ResultWriterV2):
    def provide_policy_statements(self) -> list[iam.PolicyStatement]:
        assert self.bucket is not None
        assert self.prefix is not None
        # The actions Step Functions documents for ResultWriter ("IAM policies for
        # ResultWriter"); multipart because result files can be large.
        return [
            iam.PolicyStatement(
                actions=[
                    "s3:PutObject",
                    "s3:GetObject",
                    "s3:ListMultipartUploadParts",
                    "s3:AbortMultipartUpload",
                ],
                resources=[self.bucket.arn_for_objects(f"{self.prefix}/*")],
            )
        ]


def _get_manifests(bucket: s3.IBucket, prefix: str) -> iam.PolicyStatement:
    return iam.PolicyStatement(
        actions=["s3:GetObject"], resources=[bucket.arn_for_objects(f"{prefix}*")]
    )


def _list_statement(sid: str | None, bucket: s3.IBucket, prefix: str) -> iam.PolicyStatement:
    """ListBucket on the bucket, limited to keys under ``prefix`` when there is one."""
    return iam.PolicyStatement(
        sid=sid,
        actions=["s3:ListBucket"],
        resources=[bucket.bucket_arn],
        conditions={"StringLike": {"s3:prefix": [f"{prefix}*"]}} if prefix else None,
    )


def _nag_arn(bucket: s3.IBucket) -> str:
    """How cdk-nag prints the bucket's ARN in ``applies_to`` (created or imported)."""
    resolved = Stack.of(bucket).resolve(bucket.bucket_arn)
    if isinstance(resolved, dict) and "Fn::GetAtt" in resolved:
        return f"<{resolved['Fn::GetAtt'][0]}.Arn>"
    if isinstance(resolved, dict) and "Fn::Join" in resolved:
        parts = resolved["Fn::Join"][1]
        return "".join(
            part if isinstance(part, str) else f"<{next(iter(part.values()))}>" for part in parts
        )
    return str(resolved)


def _require_result_writer(scope: BatchPredictions) -> None:
    """Fail synth instead of deploying a map that silently drops its results.

    aws-cdk-lib renders ``result_writer_v2`` only when the feature flag
    ``@aws-cdk/aws-stepfunctions:useDistributedMapResultWriterV2`` is on, and the deprecated
    ``result_writer`` only when it is off; the other combination emits no ResultWriter at all.
    """
    if not FeatureFlags.of(scope).is_enabled(RESULT_WRITER_V2_FLAG):
        raise ValueError(
            "BatchPredictions uses ResultWriterV2, which aws-cdk-lib drops unless the feature "
            f"flag {RESULT_WRITER_V2_FLAG} is true (cdk.json)"
        )
