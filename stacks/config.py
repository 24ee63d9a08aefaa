"""Stage configuration, in code: one frozen ``StageConfig`` per stage.

``app.py`` picks the stage(s) to synthesize; nothing else reads CDK context. Every field
documents its unit. A change here is an infrastructure change and shows up in the committed
templates under ``templates/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from aws_cdk import RemovalPolicy
from aws_cdk.aws_logs import RetentionDays

Architecture = Literal["x86_64", "arm64"]
# One address, as SNS's email protocol takes it: no display name, no list.
_EMAIL = re.compile(r"^[^@\s,;<>\"']+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
# AWS Chatbot's patterns for the Slack workspace (team) and channel IDs.
_SLACK_WORKSPACE_ID = re.compile(r"^[0-9A-Z]{1,255}$")
_SLACK_CHANNEL_ID = re.compile(r"^[A-Za-z0-9]{1,255}$")

# API Gateway cuts REST integrations at 29 s; the function must give up first so the
# caller gets the function's own error instead of a gateway 504.
API_GATEWAY_INTEGRATION_TIMEOUT_SECONDS = 29

DEPLOYMENT_CONFIGS = (
    "ALL_AT_ONCE",
    "CANARY_10_PERCENT_5_MINUTES",
    "CANARY_10_PERCENT_10_MINUTES",
    "CANARY_10_PERCENT_15_MINUTES",
    "CANARY_10_PERCENT_30_MINUTES",
    "LINEAR_10_PERCENT_EVERY_1_MINUTE",
    "LINEAR_10_PERCENT_EVERY_2_MINUTES",
    "LINEAR_10_PERCENT_EVERY_3_MINUTES",
    "LINEAR_10_PERCENT_EVERY_10_MINUTES",
)

# Lambda's synchronous invocation payload limit: no request body above it can ever be served
# (API Gateway base64-encodes image bodies into the event, so images hit it at about 4.5 MB).
LAMBDA_INVOKE_PAYLOAD_BYTES = 6 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class WafConfig:
    """A WAFv2 web ACL on the API stage (stacks/firewall.py).

    Attributes:
        rate_limit_per_5_minutes: Requests one client IP may send in any 5-minute window before
            WAF answers it 429 (WAF accepts 10 to 2,000,000,000).
        max_body_bytes: Requests declaring a larger Content-Length are answered 413 before they
            reach API Gateway's integration; bytes, default Lambda's 6 MB invoke limit.
    """

    rate_limit_per_5_minutes: int = 3_000
    max_body_bytes: int = LAMBDA_INVOKE_PAYLOAD_BYTES

    def __post_init__(self) -> None:
        if not 10 <= self.rate_limit_per_5_minutes <= 2_000_000_000:
            raise ValueError("WafConfig: rate_limit_per_5_minutes must be 10-2000000000")
        if not 1 <= self.max_body_bytes <= LAMBDA_INVOKE_PAYLOAD_BYTES:
            raise ValueError(f"WafConfig: max_body_bytes must be 1-{LAMBDA_INVOKE_PAYLOAD_BYTES}")


@dataclass(frozen=True, kw_only=True)
class StageConfig:
    """Everything that differs between stages.

    Attributes:
        name: Stage name (``dev``, ``prod``); the stack id is ``ResnetServing<Name>``.
        architecture: Lambda CPU architecture, ``x86_64`` or ``arm64``; the image is built for it.
        memory_mb: Function memory in MB (Lambda allots vCPUs in proportion; 1769 MB = 1 vCPU).
        timeout_seconds: Function timeout in seconds; must stay below API Gateway's 29 s.
        ephemeral_storage_mb: ``/tmp`` size in MB; holds the downloaded model (at least twice
            its size, see ``ModelSource.min_ephemeral_storage_mb``).
        reserved_concurrency: Reserved concurrent executions, or ``None`` for the unreserved
            pool (new accounts with a quota of 10 cannot reserve any).
        provisioned_concurrency_min: Provisioned concurrency floor on alias ``live``
            (0 = no provisioned concurrency, no autoscaling).
        provisioned_concurrency_max: Autoscaling ceiling for provisioned concurrency.
        provisioned_concurrency_target_utilization: Target tracking set point, a fraction 0-1 of
            ``ProvisionedConcurrencyUtilization``.
        deployment_config: CodeDeploy Lambda deployment config name (``ALL_AT_ONCE``,
            ``CANARY_10_PERCENT_5_MINUTES``, ...).
        api_throttle_rate_rps: Usage plan steady-state limit, requests per second.
        api_throttle_burst: Usage plan burst limit, requests.
        api_quota_per_day: Usage plan quota, requests per day per API key.
        iam_auth: Also require SigV4 (IAM) authorization on every route, in addition to the key.
        latency_slo_ms: API Gateway latency p99 objective in milliseconds; alarm threshold.
        api_5xx_rate_max: Highest tolerated API 5XX rate, a fraction 0-1 of requests per minute.
        function_errors_max: Function errors per minute (alias ``live``) before alarming.
        duration_timeout_fraction: Alarm when function duration p99 exceeds this fraction (0-1)
            of the timeout.
        spillover_max: Provisioned-concurrency spillover invocations per minute before alarming.
        alarm_email: E-mail subscribed to the alarm topic, or ``None``; ``-c alarm_email=...``
            overrides it for the stage(s) being synthesized (``app.py``).
        slack_workspace_id: Slack workspace (team) ID already authorized in the AWS Chatbot
            console, e.g. ``T0123ABCD``; with ``slack_channel_id``, alarms also go to that
            channel. ``-c slack_workspace_id=... -c slack_channel_id=...`` override both.
        slack_channel_id: Slack channel ID, e.g. ``C0123ABCD``; set both Slack fields or none.
        log_retention: Retention of the function, API access and deployment log groups.
        access_log_expiration_days: Days the bucket's server access logs are kept, in days.
        noncurrent_version_expiration_days: Days before noncurrent model object versions expire.
        removal_policy: What ``cdk destroy`` does with the bucket and the log groups.
        log_level: ``POWERTOOLS_LOG_LEVEL`` of the function.
        termination_protection: CloudFormation refuses to delete the stack until it is lifted.
        waf: A WAFv2 web ACL on the API stage, or ``None`` for none.
        batch_enabled: Deploy batch predictions (Distributed Map state machine, batch function,
            input/output buckets; docs/batch.md).
        batch_memory_mb: Batch function memory in MB (3538 MB = 2 vCPUs: one runs ONNX
            Runtime while the other reads and decodes the next images; docs/batch.md).
        batch_timeout_seconds: Batch function timeout in seconds, for one batch, 1-90: three
            attempts fit the 5-minute limit of the EXPRESS child workflow that invokes it.
        batch_reserved_concurrency: Reserved concurrent executions of the batch function, or
            ``None`` for none: a run then takes at most ``batch_max_concurrency`` executions
            from the unreserved pool (each child workflow invokes the function once at a time;
            docs/batch.md). Every reservation needs 100 more in the account's quota.
        batch_max_concurrency: Batches (child workflows) in flight (Distributed Map
            MaxConcurrency), at most ``batch_reserved_concurrency`` when that is set.
        batch_items_per_batch: Objects per batch (ItemBatcher MaxItemsPerBatch), 1-200.
        batch_tolerated_failure_percentage: Failed batches a run tolerates, percent 0-100.
        batch_input_bucket_name: Existing bucket to read images from, or ``None`` to create one.
        batch_input_prefix: Key prefix (``""`` or ending in ``/``) a run may list and read;
            manifests live under ``<prefix>manifests/``.
        batch_output_bucket_name: Existing bucket for results, or ``None`` to create one.
        batch_result_expiration_days: Days until results (``results/``) expire, in days.
        batch_run_timeout_hours: Hours after which a run is stopped, in hours.
    """

    name: str
    architecture: Architecture = "x86_64"
    memory_mb: int = 3008
    timeout_seconds: int = 20
    ephemeral_storage_mb: int = 1024
    reserved_concurrency: int | None = None
    provisioned_concurrency_min: int = 0
    provisioned_concurrency_max: int = 0
    provisioned_concurrency_target_utilization: float = 0.7
    deployment_config: str = "ALL_AT_ONCE"
    api_throttle_rate_rps: float = 10
    api_throttle_burst: int = 20
    api_quota_per_day: int = 10_000
    iam_auth: bool = False
    latency_slo_ms: int = 1000
    api_5xx_rate_max: float = 0.01
    function_errors_max: int = 5
    duration_timeout_fraction: float = 0.8
    spillover_max: int = 10
    alarm_email: str | None = None
    slack_workspace_id: str | None = None
    slack_channel_id: str | None = None
    log_retention: RetentionDays = RetentionDays.ONE_WEEK
    access_log_expiration_days: int = 30
    noncurrent_version_expiration_days: int = 7
    removal_policy: RemovalPolicy = RemovalPolicy.DESTROY
    log_level: str = "INFO"
    termination_protection: bool = False
    waf: WafConfig | None = None
    batch_enabled: bool = True
    batch_memory_mb: int = 3538
    batch_timeout_seconds: int = 60
    batch_reserved_concurrency: int | None = None
    batch_max_concurrency: int = 5
    batch_items_per_batch: int = 100
    batch_tolerated_failure_percentage: float = 5
    batch_input_bucket_name: str | None = None
    batch_input_prefix: str = ""
    batch_output_bucket_name: str | None = None
    batch_result_expiration_days: int = 30
    batch_run_timeout_hours: int = 24

    def __post_init__(self) -> None:
        problems = []
        if not self.name.isalnum() or not self.name.islower():
            problems.append("name must be lowercase letters/digits")
        if self.architecture not in ("x86_64", "arm64"):
            problems.append("architecture must be x86_64 or arm64")
        if not 128 <= self.memory_mb <= 10240:
            problems.append("memory_mb must be 128-10240")
        if not 1 <= self.timeout_seconds < API_GATEWAY_INTEGRATION_TIMEOUT_SECONDS:
            problems.append(
                f"timeout_seconds must be 1-{API_GATEWAY_INTEGRATION_TIMEOUT_SECONDS - 1}"
            )
        if not 512 <= self.ephemeral_storage_mb <= 10240:
            problems.append("ephemeral_storage_mb must be 512-10240")
        if not 0 <= self.provisioned_concurrency_min <= self.provisioned_concurrency_max:
            problems.append("need 0 <= provisioned_concurrency_min <= provisioned_concurrency_max")
        if (
            self.reserved_concurrency is not None
            and self.reserved_concurrency < self.provisioned_concurrency_max
        ):
            problems.append("reserved_concurrency must cover provisioned_concurrency_max")
        if not 0.1 <= self.provisioned_concurrency_target_utilization <= 0.9:
            problems.append("provisioned_concurrency_target_utilization must be 0.1-0.9")
        if self.deployment_config not in DEPLOYMENT_CONFIGS:
            problems.append(f"deployment_config must be one of {', '.join(DEPLOYMENT_CONFIGS)}")
        if not 0 < self.api_5xx_rate_max < 1 or not 0 < self.duration_timeout_fraction < 1:
            problems.append("api_5xx_rate_max and duration_timeout_fraction must be in (0, 1)")
        if self.latency_slo_ms >= self.timeout_seconds * 1000:
            problems.append("latency_slo_ms must be below the function timeout")
        if self.alarm_email is not None and not _EMAIL.match(self.alarm_email):
            problems.append(
                f"alarm_email {self.alarm_email!r} is not an e-mail address "
                "(like oncall@example.com)"
            )
        if (self.slack_workspace_id is None) != (self.slack_channel_id is None):
            problems.append("set both slack_workspace_id and slack_channel_id, or neither")
        if self.slack_workspace_id is not None and not _SLACK_WORKSPACE_ID.match(
            self.slack_workspace_id
        ):
            problems.append(
                f"slack_workspace_id {self.slack_workspace_id!r} is not a Slack workspace ID "
                "(capital letters and digits, like T0123ABCD)"
            )
        if self.slack_channel_id is not None and not _SLACK_CHANNEL_ID.match(self.slack_channel_id):
            problems.append(
                f"slack_channel_id {self.slack_channel_id!r} is not a Slack channel ID "
                "(letters and digits, like C0123ABCD)"
            )
        problems += self._batch_problems()
        if problems:
            raise ValueError(f"StageConfig {self.name!r}: " + "; ".join(problems))

    def _batch_problems(self) -> list[str]:
        problems = []
        if not 128 <= self.batch_memory_mb <= 10240:
            problems.append("batch_memory_mb must be 128-10240")
        # EXPRESS child workflows end after 5 minutes: three attempts (the worker's retry,
        # stacks/batch.py) must fit.
        if not 1 <= self.batch_timeout_seconds <= 90:
            problems.append("batch_timeout_seconds must be 1-90")
        if self.batch_reserved_concurrency is None:
            if self.batch_max_concurrency < 1:
                problems.append("batch_max_concurrency must be >= 1")
        elif not 1 <= self.batch_max_concurrency <= self.batch_reserved_concurrency:
            problems.append("need 1 <= batch_max_concurrency <= batch_reserved_concurrency")
        if not 1 <= self.batch_items_per_batch <= 200:
            problems.append("batch_items_per_batch must be 1-200 (256 KiB batch input)")
        if not 0 <= self.batch_tolerated_failure_percentage <= 100:
            problems.append("batch_tolerated_failure_percentage must be 0-100")
        if self.batch_input_prefix and not self.batch_input_prefix.endswith("/"):
            problems.append("batch_input_prefix must be empty or end with '/'")
        if self.batch_result_expiration_days < 1 or self.batch_run_timeout_hours < 1:
            problems.append("batch_result_expiration_days and batch_run_timeout_hours must be >= 1")
        return problems

    @property
    def stack_id(self) -> str:
        """CloudFormation stack name / CDK stack id, e.g. ``ResnetServingDev``."""
        return "ResnetServing" + self.name.capitalize()

    @property
    def service_name(self) -> str:
        """``POWERTOOLS_SERVICE_NAME``; also the ``service`` dimension of the custom metrics."""
        return f"resnet-serving-{self.name}"

    @property
    def has_provisioned_concurrency(self) -> bool:
        return self.provisioned_concurrency_max > 0


DEV = StageConfig(
    name="dev",
    memory_mb=1769,  # exactly one vCPU: the cost-optimal size (docs/performance.md)
    timeout_seconds=20,
    ephemeral_storage_mb=1024,
    reserved_concurrency=None,
    provisioned_concurrency_min=0,
    provisioned_concurrency_max=0,
    deployment_config="ALL_AT_ONCE",
    api_throttle_rate_rps=5,
    api_throttle_burst=10,
    api_quota_per_day=5_000,
    latency_slo_ms=2000,
    api_5xx_rate_max=0.05,
    function_errors_max=10,
    log_retention=RetentionDays.ONE_WEEK,
    access_log_expiration_days=14,
    noncurrent_version_expiration_days=3,
    removal_policy=RemovalPolicy.DESTROY,
    log_level="DEBUG",
    # Nothing reserved, so dev deploys on a new account's small concurrency quota; a run takes
    # at most 5 executions from the pool the predict function shares (docs/batch.md).
    batch_reserved_concurrency=None,
    # The most a new account's function may have (3,008 MB until AWS raises it): dev deploys
    # anywhere; about 1.7 vCPUs instead of prod's 2 (docs/batch.md).
    batch_memory_mb=3008,
    batch_max_concurrency=5,
    batch_result_expiration_days=14,
)

PROD = StageConfig(
    name="prod",
    memory_mb=3538,  # exactly two vCPUs: the latency option (docs/performance.md)
    timeout_seconds=20,
    ephemeral_storage_mb=1024,
    reserved_concurrency=50,
    provisioned_concurrency_min=2,
    provisioned_concurrency_max=20,
    provisioned_concurrency_target_utilization=0.7,
    deployment_config="CANARY_10_PERCENT_5_MINUTES",
    api_throttle_rate_rps=50,
    api_throttle_burst=100,
    api_quota_per_day=1_000_000,
    latency_slo_ms=500,
    api_5xx_rate_max=0.01,
    function_errors_max=5,
    spillover_max=10,
    log_retention=RetentionDays.THREE_MONTHS,
    access_log_expiration_days=90,
    noncurrent_version_expiration_days=30,
    removal_policy=RemovalPolicy.RETAIN,
    log_level="INFO",
    termination_protection=True,
    # One IP may use a key's whole usage-plan rate (50 rps x 300 s), and no more.
    waf=WafConfig(rate_limit_per_5_minutes=15_000),
    # Its own 50: runs never take the unreserved pool other functions share (predict has its
    # own 50). 50 + 50 + the 100 Lambda keeps unreserved = a quota of 200 (infrastructure.md).
    batch_reserved_concurrency=50,
    batch_max_concurrency=50,
    batch_result_expiration_days=90,
)

STAGES: dict[str, StageConfig] = {stage.name: stage for stage in (DEV, PROD)}
