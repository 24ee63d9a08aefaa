"""One dashboard and the alarms, built with cdk-monitoring-constructs, notifying one SNS topic."""

from __future__ import annotations

from aws_cdk import ArnFormat, Duration, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_chatbot as chatbot
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from cdk_monitoring_constructs import (
    AlarmFactoryDefaults,
    CustomMetricGroup,
    CustomMetricWithAlarm,
    CustomThreshold,
    DefaultDashboardFactory,
    ErrorCountThreshold,
    ErrorRateThreshold,
    LatencyThreshold,
    LatencyType,
    MetricFactoryDefaults,
    MonitoringFacade,
    RunningTaskCountThreshold,
    SnsAlarmActionStrategy,
)
from cdk_nag import NagPackSuppression, NagSuppressions
from constructs import Construct

from stacks.predict_function import METRICS_NAMESPACE

LATENCIES = [LatencyType.P50, LatencyType.P90, LatencyType.P99]


class ServingMonitoring(Construct):
    """Dashboard + alarms for the API, the alias ``live`` and the function's own EMF metrics.

    ``rollback_alarms`` are the alarms CodeDeploy watches while shifting traffic: what the new
    version does wrong (its own errors, by ``ExecutedVersion``) and what callers get (the API's
    5XX rate). Everything else, latency included, only notifies: during a canary provisioned
    concurrency is split by weight, so the new version runs largely on cold on-demand
    environments and a latency alarm would roll back a healthy release.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        api: apigw.RestApi,
        api_stage_name: str,
        alias: lambda_.Alias,
        timeout_seconds: int,
        service_name: str,
        has_provisioned_concurrency: bool,
        latency_slo_ms: int,
        api_5xx_rate_max: float,
        function_errors_max: int,
        duration_timeout_fraction: float,
        spillover_max: int,
        alarm_email: str | None,
        slack_workspace_id: str | None = None,
        slack_channel_id: str | None = None,
    ) -> None:
        """
        Args:
            api: The REST API.
            api_stage_name: Its deployment stage (metric dimension ``Stage``).
            alias: Alias ``live``; its metrics carry the ``Resource=<function>:live`` dimension.
            timeout_seconds: Function timeout in seconds (duration alarm reference).
            service_name: ``service`` dimension of the function's custom metrics.
            has_provisioned_concurrency: Add the spillover alarm and utilization widget.
            latency_slo_ms: API latency p99 objective, ms.
            api_5xx_rate_max: Alarm above this 5XX fraction of requests (0-1).
            function_errors_max: Alarm at this many function errors per minute.
            duration_timeout_fraction: Alarm when duration p99 passes this fraction of the timeout.
            spillover_max: Alarm at this many spillover invocations per minute.
            alarm_email: Optional e-mail subscription.
            slack_workspace_id: Slack workspace authorized in AWS Chatbot; with
                ``slack_channel_id``, the topic is delivered to that channel too.
            slack_channel_id: Slack channel ID.
        """
        super().__init__(scope, construct_id)
        stack_name = Stack.of(self).stack_name

        self.topic = sns.Topic(
            self, "AlarmTopic", display_name=f"{stack_name} alarms", enforce_ssl=True
        )
        NagSuppressions.add_resource_suppressions(
            self.topic,
            [
                NagPackSuppression(
                    id="AwsSolutions-SNS2",
                    reason="Alarm notifications carry only alarm metadata; CloudWatch cannot "
                    "publish to a topic under the AWS-managed SNS key, and a customer key per "
                    "stage is not worth it for this payload. TLS is enforced (SNS3).",
                )
            ],
        )
        # enforce_ssl gives the topic a policy with only the TLS Deny, and any topic policy
        # replaces SNS's default one: without this Allow, CloudWatch may not publish and every
        # alarm notification is dropped. Scoped to this account's alarms of this stack.
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowThisStacksAlarmsToPublish",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions={
                    "StringEquals": {"aws:SourceAccount": Stack.of(self).account},
                    "ArnLike": {
                        "aws:SourceArn": Stack.of(self).format_arn(
                            service="cloudwatch",
                            resource="alarm",
                            resource_name=f"{stack_name}-*",
                            arn_format=ArnFormat.COLON_RESOURCE_NAME,
                        )
                    },
                },
            )
        )
        if alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(alarm_email))
        self.slack: chatbot.SlackChannelConfiguration | None = None
        if slack_workspace_id and slack_channel_id:
            # Notifications only. The channel role CDK creates has no policy, and the guardrail
            # (the ceiling for anything run from the channel; AWS applies AdministratorAccess
            # when none is given) is read-only CloudWatch.
            self.slack = chatbot.SlackChannelConfiguration(
                self,
                "Slack",
                slack_channel_configuration_name=f"{stack_name}-alarms",
                slack_workspace_id=slack_workspace_id,
                slack_channel_id=slack_channel_id,
                notification_topics=[self.topic],
                guardrail_policies=[
                    iam.ManagedPolicy.from_aws_managed_policy_name("CloudWatchReadOnlyAccess")
                ],
            )

        dashboards = DefaultDashboardFactory(
            self,
            "Dashboards",
            dashboard_name_prefix=stack_name,
            create_dashboard=True,
            create_summary_dashboard=False,
            create_alarm_dashboard=False,
        )
        self.facade = MonitoringFacade(
            self,
            "Facade",
            alarm_factory_defaults=AlarmFactoryDefaults(
                alarm_name_prefix=stack_name,
                actions_enabled=True,
                action=SnsAlarmActionStrategy(on_alarm_topic=self.topic, on_ok_topic=self.topic),
                # 2 of 3 one-minute periods: fast enough to stop a 5-minute canary, not
                # paged by one bad minute.
                datapoints_to_alarm=2,
                evaluation_periods=3,
            ),
            # One-minute datapoints everywhere (the library's default is five): alarms must
            # fire within a 5-minute canary.
            metric_factory_defaults=MetricFactoryDefaults(period=Duration.minutes(1)),
            dashboard_factory=dashboards,
        )

        self.facade.add_large_header(f"{stack_name}: API Gateway")
        self.facade.monitor_api_gateway(
            api=api,
            api_stage=api_stage_name,
            human_readable_name="REST API",
            alarm_friendly_name="Api",
            latency_types_to_render=LATENCIES,
            add5_xx_fault_rate_alarm={
                "Critical": ErrorRateThreshold(max_error_rate=api_5xx_rate_max)
            },
            add_latency_p99_alarm={
                "Critical": LatencyThreshold(max_latency=Duration.millis(latency_slo_ms))
            },
        )
        api_dims = {"ApiName": api.rest_api_name, "Stage": api_stage_name}
        self.facade.monitor_custom(
            human_readable_name="API integration latency",
            alarm_friendly_name="ApiIntegration",
            metric_groups=[
                CustomMetricGroup(
                    title="Integration latency (ms)",
                    metrics=[
                        cloudwatch.Metric(
                            namespace="AWS/ApiGateway",
                            metric_name="IntegrationLatency",
                            dimensions_map=api_dims,
                            statistic=stat,
                            label=f"Integration {stat}",
                            period=Duration.minutes(1),
                        )
                        for stat in ("p50", "p90", "p99")
                    ],
                )
            ],
        )

        self.facade.add_large_header(f"{stack_name}: Lambda alias live")
        spillover_alarm = (
            {"Spillover": RunningTaskCountThreshold(max_running_tasks=spillover_max)}
            if has_provisioned_concurrency
            else None
        )
        self.facade.monitor_lambda_function(
            lambda_function=alias,
            human_readable_name="Predict function (alias live)",
            alarm_friendly_name="Function",
            latency_types_to_render=LATENCIES,
            add_fault_count_alarm={
                "Critical": ErrorCountThreshold(max_error_count=function_errors_max)
            },
            add_throttles_count_alarm={"Critical": ErrorCountThreshold(max_error_count=0)},
            add_latency_p99_alarm={
                # Not LatencyTimeoutPercentageThreshold: it reads the timeout from the
                # IFunction, and an alias has none (the library falls back to 3 s).
                "NearTimeout": LatencyThreshold(
                    max_latency=Duration.millis(
                        int(timeout_seconds * 1000 * duration_timeout_fraction)
                    )
                )
            },
            add_provisioned_concurrency_spillover_invocations_count_alarm=spillover_alarm,
        )
        # Errors of the version alias live points at in this template (the new one during a
        # rollout), counted by ExecutedVersion: the old version's errors cannot roll back the
        # new one. Lambda publishes alias metrics with FunctionName, Resource=<function>:<alias>
        # and ExecutedVersion.
        function_name = alias.version.lambda_.function_name
        release_dims = {
            "FunctionName": function_name,
            "Resource": f"{function_name}:{alias.alias_name}",
            "ExecutedVersion": alias.version.version,
        }

        def release(metric_name: str) -> cloudwatch.Metric:
            return cloudwatch.Metric(
                namespace="AWS/Lambda",
                metric_name=metric_name,
                dimensions_map=release_dims,
                statistic="Sum",
                label=f"{metric_name} (this release)",
                period=Duration.minutes(1),
            )

        self.facade.monitor_custom(
            human_readable_name="This release (the version live points at)",
            alarm_friendly_name="Release",
            metric_groups=[
                CustomMetricGroup(
                    title="This release: invocations and errors",
                    metrics=[
                        release("Invocations"),
                        CustomMetricWithAlarm(
                            metric=release("Errors"),
                            alarm_friendly_name="Errors",
                            add_alarm={
                                "Critical": CustomThreshold(
                                    comparison_operator=(
                                        cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD
                                    ),
                                    threshold=function_errors_max,
                                    # No invocations of the new version yet is not a failure.
                                    treat_missing_data_override=(
                                        cloudwatch.TreatMissingData.NOT_BREACHING
                                    ),
                                )
                            },
                        ),
                    ],
                )
            ],
        )

        self.facade.monitor_custom(
            human_readable_name="Concurrency",
            alarm_friendly_name="Concurrency",
            metric_groups=[
                CustomMetricGroup(
                    title="Concurrency",
                    metrics=[
                        alias.metric(
                            "ConcurrentExecutions", statistic="Maximum", period=Duration.minutes(1)
                        ),
                        alias.metric(
                            "ProvisionedConcurrencyUtilization",
                            statistic="Maximum",
                            period=Duration.minutes(1),
                        ),
                        alias.metric(
                            "ProvisionedConcurrencySpilloverInvocations",
                            statistic="Sum",
                            period=Duration.minutes(1),
                        ),
                    ],
                )
            ],
        )

        self.facade.add_large_header(f"{stack_name}: model (custom metrics, {METRICS_NAMESPACE})")
        # Exactly the dimension sets the handler emits (a test runs it and compares): its own
        # metrics carry `service`; Powertools' ColdStart carries `function_name` and `service`.
        service_dims = {"service": service_name}
        cold_start_dims = {"function_name": function_name, "service": service_name}

        def emf(
            name: str, statistic: str, dimensions: dict[str, str] = service_dims
        ) -> cloudwatch.Metric:
            return cloudwatch.Metric(
                namespace=METRICS_NAMESPACE,
                metric_name=name,
                dimensions_map=dimensions,
                statistic=statistic,
                label=f"{name} {statistic}",
                period=Duration.minutes(1),
            )

        self.facade.monitor_custom(
            human_readable_name="Model",
            alarm_friendly_name="Model",
            metric_groups=[
                CustomMetricGroup(
                    title="Model load (ms)",
                    metrics=[emf("ModelLoadMs", s) for s in ("p50", "p99", "Maximum")],
                ),
                CustomMetricGroup(
                    title="Inference (ms)",
                    metrics=[emf("InferenceMs", s) for s in ("p50", "p90", "p99")],
                ),
                CustomMetricGroup(
                    title="Cold starts", metrics=[emf("ColdStart", "Sum", cold_start_dims)]
                ),
            ],
        )

        assert dashboards.dashboard is not None
        self.dashboard_name = dashboards.dashboard.dashboard_name
        self.alarms = [entry.alarm for entry in self.facade.created_alarms()]
        (self.release_errors_alarm,) = self.alarms_named("-Release-Errors-")
        (self.api_5xx_alarm,) = self.alarms_named("-Api-Fault-Rate-")
        self.rollback_alarms: list[cloudwatch.IAlarm] = [
            self.release_errors_alarm,
            self.api_5xx_alarm,
        ]
        # CloudFormation retargets the alarm to the new version before it updates the alias,
        # which is what starts CodeDeploy's traffic shifting.
        cfn_alias = alias.node.default_child
        cfn_alarm = self.release_errors_alarm.node.default_child
        assert isinstance(cfn_alias, lambda_.CfnAlias)
        assert isinstance(cfn_alarm, cloudwatch.CfnAlarm)
        cfn_alias.add_resource_dependency(cfn_alarm)

    def alarms_named(self, *fragments: str) -> list[cloudwatch.IAlarm]:
        """Alarms whose construct id contains any of ``fragments``."""
        return [
            alarm
            for alarm in self.alarms
            if any(fragment in alarm.node.id for fragment in fragments)
        ]
