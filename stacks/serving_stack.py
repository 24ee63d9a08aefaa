"""ResnetServing<Stage>: bucket -> function/alias -> API, plus rollout and monitoring."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack
from constructs import Construct

from stacks.batch import BatchPredictions
from stacks.config import StageConfig
from stacks.model_source import ModelSource
from stacks.model_store import ModelStore
from stacks.monitoring import ServingMonitoring
from stacks.predict_function import PredictFunction
from stacks.rollout import Rollout
from stacks.serving_api import API_STAGE_NAME, ServingApi


class ServingStack(Stack):
    """Everything one stage needs to serve the classifier."""

    def __init__(
        self,
        scope: Construct,
        *,
        config: StageConfig,
        model: ModelSource,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            scope,
            config.stack_id,
            description=f"ResNet18 image classifier on Lambda behind API Gateway ({config.name})",
            termination_protection=config.termination_protection,
            # Stack-level tags: CloudFormation propagates them to every taggable resource
            # (cost allocation) without repeating them in the template.
            tags={"project": "resnet-serving", "stage": config.name},
            **kwargs,
        )
        self.config = config

        store = ModelStore(
            self,
            "ModelStore",
            model=model,
            removal_policy=config.removal_policy,
            noncurrent_version_expiration_days=config.noncurrent_version_expiration_days,
            access_log_expiration_days=config.access_log_expiration_days,
            log_retention=config.log_retention,
        )
        predict = PredictFunction(
            self,
            "Predict",
            bucket=store.bucket,
            model=model,
            architecture=config.architecture,
            memory_mb=config.memory_mb,
            timeout_seconds=config.timeout_seconds,
            ephemeral_storage_mb=config.ephemeral_storage_mb,
            reserved_concurrency=config.reserved_concurrency,
            provisioned_concurrency_min=config.provisioned_concurrency_min,
            provisioned_concurrency_max=config.provisioned_concurrency_max,
            provisioned_concurrency_target_utilization=(
                config.provisioned_concurrency_target_utilization
            ),
            service_name=config.service_name,
            log_level=config.log_level,
            log_retention=config.log_retention,
            removal_policy=config.removal_policy,
        )
        if store.deployment is not None:
            # The first invocation downloads the model; it must be in the bucket by then.
            predict.function.node.add_dependency(store.deployment)

        api = ServingApi(
            self,
            "Http",
            handler=predict.alias,
            throttle_rate_rps=config.api_throttle_rate_rps,
            throttle_burst=config.api_throttle_burst,
            quota_per_day=config.api_quota_per_day,
            iam_auth=config.iam_auth,
            log_retention=config.log_retention,
            removal_policy=config.removal_policy,
            waf=config.waf,
        )
        monitoring = ServingMonitoring(
            self,
            "Monitoring",
            api=api.api,
            api_stage_name=API_STAGE_NAME,
            alias=predict.alias,
            timeout_seconds=config.timeout_seconds,
            service_name=config.service_name,
            has_provisioned_concurrency=config.has_provisioned_concurrency,
            latency_slo_ms=config.latency_slo_ms,
            api_5xx_rate_max=config.api_5xx_rate_max,
            function_errors_max=config.function_errors_max,
            duration_timeout_fraction=config.duration_timeout_fraction,
            spillover_max=config.spillover_max,
            alarm_email=config.alarm_email,
            slack_workspace_id=config.slack_workspace_id,
            slack_channel_id=config.slack_channel_id,
        )
        Rollout(
            self,
            "Rollout",
            alias=predict.alias,
            model=model,
            log_retention=config.log_retention,
            removal_policy=config.removal_policy,
            deployment_config=config.deployment_config,
            # The new version's own errors and the API's 5XX rate; latency alarms only notify.
            alarms=monitoring.rollback_alarms,
        )

        CfnOutput(self, "EndpointUrl", value=api.api.url, description="Base URL; POST <url>predict")
        CfnOutput(
            self,
            "ApiKeyId",
            value=api.api_key.key_id,
            description="aws apigateway get-api-key --include-value --api-key <id>",
        )
        CfnOutput(self, "ModelBucketName", value=store.bucket.bucket_name)
        CfnOutput(self, "ModelKey", value=model.key)
        CfnOutput(self, "FunctionName", value=predict.function.function_name)
        CfnOutput(self, "AlarmTopicArn", value=monitoring.topic.topic_arn)
        CfnOutput(
            self,
            "DashboardUrl",
            value=f"https://console.aws.amazon.com/cloudwatch/home?region={self.region}"
            f"#dashboards:name={monitoring.dashboard_name}",
        )
        self.store = store
        self.predict = predict
        self.api = api
        self.monitoring = monitoring
        self.batch = self._add_batch(config, model, store) if config.batch_enabled else None

    def _add_batch(
        self, config: StageConfig, model: ModelSource, store: ModelStore
    ) -> BatchPredictions:
        """Batch predictions (docs/batch.md): same image and model, bounded concurrency."""
        batch = BatchPredictions(
            self,
            "Batch",
            model_bucket=store.bucket,
            model=model,
            access_log_bucket=store.access_log_bucket,
            architecture=config.architecture,
            memory_mb=config.batch_memory_mb,
            timeout_seconds=config.batch_timeout_seconds,
            ephemeral_storage_mb=config.ephemeral_storage_mb,
            reserved_concurrency=config.batch_reserved_concurrency,
            max_concurrency=config.batch_max_concurrency,
            items_per_batch=config.batch_items_per_batch,
            tolerated_failure_percentage=config.batch_tolerated_failure_percentage,
            input_bucket_name=config.batch_input_bucket_name,
            input_prefix=config.batch_input_prefix,
            output_bucket_name=config.batch_output_bucket_name,
            result_expiration_days=config.batch_result_expiration_days,
            noncurrent_version_expiration_days=config.noncurrent_version_expiration_days,
            run_timeout_hours=config.batch_run_timeout_hours,
            service_name=f"{config.service_name}-batch",
            log_level=config.log_level,
            log_retention=config.log_retention,
            removal_policy=config.removal_policy,
        )
        if store.deployment is not None:
            batch.function.node.add_dependency(store.deployment)
        CfnOutput(self, "BatchStateMachineArn", value=batch.state_machine.state_machine_arn)
        CfnOutput(self, "BatchInputBucketName", value=batch.input_bucket.bucket_name)
        CfnOutput(
            self,
            "BatchInputPrefix",
            value=batch.input_prefix or "/",
            description="Runs may read keys under this prefix ('/' = the whole bucket)",
        )
        CfnOutput(self, "BatchOutputBucketName", value=batch.output_bucket.bucket_name)
        CfnOutput(self, "BatchFunctionName", value=batch.function.function_name)
        return batch
