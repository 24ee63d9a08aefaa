"""Checks against the AWS account, with the caller's credentials (read-only calls).

Every number a check decides on is documented in docs/infrastructure.md, "First deploy in a
new account", with the AWS page it comes from.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    SSOTokenLoadError,
    TokenRetrievalError,
    UnauthorizedSSOTokenError,
)

from preflight.findings import Finding, blocker, ok, warn
from stacks.account_stack import ACCOUNT_STACK_ID
from stacks.config import StageConfig

BOOTSTRAP_VERSION_PARAMETER = "/cdk-bootstrap/hnb659fds/version"
CONCURRENCY_QUOTA_CODE = "L-B99A9384"  # Service Quotas: AWS Lambda, "Concurrent executions"
# Lambda refuses reservations that would leave fewer unreserved concurrent executions.
MIN_UNRESERVED_CONCURRENCY = 100
# New accounts cannot create functions above this until AWS raises the limit; no API reports it.
NEW_ACCOUNT_MEMORY_MB = 3008
_EXPIRED = {"ExpiredToken", "ExpiredTokenException", "RequestExpired"}
_REJECTED = {"InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException"}
# Fail fast: preflight is interactive, and a hung endpoint must not look like a hung deploy.
CLIENT_CONFIG = Config(connect_timeout=5, read_timeout=20, retries={"max_attempts": 3})
_LOGIN_FIX = "refresh your credentials (aws sso login / aws configure) or pick another AWS_PROFILE"
# The stack outputs (stacks/serving_stack.py) that name a deployed stage's functions.
FUNCTION_OUTPUTS = {"predict": "FunctionName", "batch": "BatchFunctionName"}


@dataclass(frozen=True)
class Hold:
    """Concurrency one of the stage's functions takes out of the account's unreserved pool.

    Attributes:
        function: ``predict`` or ``batch`` (a key of ``FUNCTION_OUTPUTS``).
        executions: Concurrent executions it takes.
        reserved: True for reserved concurrency; False for provisioned concurrency on a
            function without a reservation (carved out of the unreserved pool instead).
    """

    function: str
    executions: int
    reserved: bool

    def describe(self) -> str:
        return f"{self.function} {self.executions}{'' if self.reserved else ' provisioned'}"


def concurrency_holds(config: StageConfig) -> list[Hold]:
    """Everything the stage takes from the unreserved pool: the predict function's reservation
    (which includes its provisioned concurrency) or, unreserved, its provisioned maximum; and the
    batch function's reservation when batch is on and reserves."""
    holds = []
    if config.reserved_concurrency:
        holds.append(Hold("predict", config.reserved_concurrency, reserved=True))
    elif config.provisioned_concurrency_max:
        holds.append(Hold("predict", config.provisioned_concurrency_max, reserved=False))
    if config.batch_enabled and config.batch_reserved_concurrency:
        holds.append(Hold("batch", config.batch_reserved_concurrency, reserved=True))
    return holds


def concurrency_quota_needed(config: StageConfig) -> int:
    """The smallest 'Concurrent executions' quota the stage deploys on, in an account where
    nothing else reserves: what it holds plus the 100 Lambda keeps unreserved (0 holds: any)."""
    held = sum(hold.executions for hold in concurrency_holds(config))
    return held + MIN_UNRESERVED_CONCURRENCY if held else 0


class CredentialsProblem(Exception):
    """The caller's credentials cannot be used at all; no AWS check can run."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.message)
        self.finding = finding


def client(session: Any, service: str) -> Any:
    return session.client(service, config=CLIENT_CONFIG)


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "Unknown"))


def credentials_finding(error: Exception) -> Finding:
    """One line for why the caller's credentials were refused, with the fix."""
    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return blocker("credentials", "no AWS credentials found", _LOGIN_FIX)
    if isinstance(error, TokenRetrievalError | SSOTokenLoadError | UnauthorizedSSOTokenError):
        return blocker("credentials", "the AWS SSO session has expired", "aws sso login")
    if isinstance(error, NoRegionError):
        return blocker(
            "credentials", "no AWS region configured", "export AWS_REGION=<region> or aws configure"
        )
    if isinstance(error, EndpointConnectionError):
        return blocker("credentials", f"cannot reach AWS: {error}", "check the network/proxy")
    if isinstance(error, ClientError):
        code = error_code(error)
        if code in _EXPIRED:
            return blocker("credentials", "the AWS credentials have expired", _LOGIN_FIX)
        if code in _REJECTED:
            return blocker("credentials", f"AWS rejected the credentials ({code})", _LOGIN_FIX)
        return blocker("credentials", f"sts:GetCallerIdentity failed ({code})", _LOGIN_FIX)
    return blocker("credentials", f"cannot use the AWS credentials: {error}", _LOGIN_FIX)


def check_identity(session: Any) -> Finding:
    """Account and region the deploy would target; raises CredentialsProblem when unusable."""
    region = session.region_name
    if not region:
        raise CredentialsProblem(credentials_finding(NoRegionError()))
    try:
        identity = client(session, "sts").get_caller_identity()
    except (ClientError, BotoCoreError) as error:
        raise CredentialsProblem(credentials_finding(error)) from None
    return ok(
        "account",
        f"account {identity['Account']}, region {region}, as {identity['Arn']}",
    )


def could_not_read(check: str, what: str, error: Exception, how: str) -> Finding:
    """A check that could not run is a warning, never a traceback."""
    reason = error_code(error) if isinstance(error, ClientError) else type(error).__name__
    return warn(check, f"could not read {what} ({reason})", f"check by hand: {how}")


def bootstrap_version_required(template: dict[str, Any]) -> int:
    """The version CDK's CheckBootstrapVersion rule demands: one above the newest it rejects."""
    rule = template.get("Rules", {}).get("CheckBootstrapVersion", {})
    rejected: list[int] = []
    for assertion in rule.get("Assertions", []):
        contains = assertion["Assert"]["Fn::Not"][0]["Fn::Contains"]
        rejected += [int(version) for version in contains[0]]
    return max(rejected, default=0) + 1


def check_bootstrap(session: Any, required: int | None) -> Finding:
    """CDKToolkit present, and new enough for the stage's template (None: not known)."""
    try:
        parameter = client(session, "ssm").get_parameter(Name=BOOTSTRAP_VERSION_PARAMETER)
    except ClientError as error:
        if error_code(error) == "ParameterNotFound":
            return blocker(
                "bootstrap",
                "this account/region is not CDK-bootstrapped "
                f"({BOOTSTRAP_VERSION_PARAMETER} does not exist)",
                "make bootstrap",
            )
        return could_not_read(
            "bootstrap",
            BOOTSTRAP_VERSION_PARAMETER,
            error,
            f"aws ssm get-parameter --name {BOOTSTRAP_VERSION_PARAMETER}",
        )
    except BotoCoreError as error:
        return could_not_read("bootstrap", BOOTSTRAP_VERSION_PARAMETER, error, "aws ssm")
    value = parameter["Parameter"]["Value"]
    try:
        version = int(value)
    except ValueError:
        return warn("bootstrap", f"{BOOTSTRAP_VERSION_PARAMETER} holds {value!r}", "make bootstrap")
    if required is None:
        return ok("bootstrap", f"CDKToolkit version {version}")
    if version < required:
        return blocker(
            "bootstrap",
            f"CDKToolkit is version {version}; these templates need >= {required}",
            "make bootstrap (upgrades the CDKToolkit stack)",
        )
    return ok("bootstrap", f"CDKToolkit version {version} (these templates need >= {required})")


def stack_outputs(session: Any, stack_name: str) -> dict[str, str]:
    """Outputs of a deployed stack; empty when it does not exist (yet)."""
    try:
        stacks = client(session, "cloudformation").describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as error:
        if "does not exist" in str(error):
            return {}
        raise
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}


def _already_reserved(lambda_: Any, function_name: str | None) -> int:
    """What a deployed function already reserves (a redeploy does not need it again)."""
    if not function_name:
        return 0
    try:
        current = lambda_.get_function_concurrency(FunctionName=function_name)
    except ClientError:
        return 0  # not deployed yet, or not readable: count the full reservation
    return int(current.get("ReservedConcurrentExecutions") or 0)


def check_concurrency(
    session: Any, config: StageConfig, outputs: Mapping[str, str]
) -> tuple[Finding, dict[str, int]]:
    """Everything the stage reserves (or provisions) against the account's unreserved pool.

    ``outputs``: the deployed stack's outputs (empty before the first deploy); the functions
    they name are asked what they already reserve.
    """
    lambda_ = client(session, "lambda")
    try:
        limit = lambda_.get_account_settings()["AccountLimit"]
    except (ClientError, BotoCoreError) as error:
        finding = could_not_read(
            "concurrency", "Lambda account settings", error, "aws lambda get-account-settings"
        )
        return finding, {}
    quota = int(limit["ConcurrentExecutions"])
    unreserved = int(limit["UnreservedConcurrentExecutions"])
    numbers = {"quota": quota, "unreserved": unreserved}
    holds = concurrency_holds(config)
    if not holds:
        batch = (
            f" (a batch run takes at most {config.batch_max_concurrency} from it)"
            if config.batch_enabled
            else ""
        )
        return ok(
            "concurrency",
            f"{config.name} reserves none; the account allows {quota} concurrent executions{batch}",
        ), numbers
    wanted = already = needed = 0
    for hold in holds:
        held = 0
        if hold.reserved:
            held = min(
                hold.executions,
                _already_reserved(lambda_, outputs.get(FUNCTION_OUTPUTS[hold.function])),
            )
        wanted += hold.executions
        already += held
        # No credit for what a function holds beyond its new value: CloudFormation may raise
        # one function's reservation before it lowers the other's.
        needed += hold.executions - held
    left = unreserved - needed
    parts = " + ".join(hold.describe() for hold in holds)
    if left >= MIN_UNRESERVED_CONCURRENCY:
        return ok(
            "concurrency",
            f"{config.name} reserves {wanted} ({parts}; {already} already held); {unreserved} "
            f"unreserved -> {left} left, Lambda keeps >= {MIN_UNRESERVED_CONCURRENCY} "
            f"(quota {quota})",
        ), numbers
    quota_needed = quota + (MIN_UNRESERVED_CONCURRENCY - left)
    return blocker(
        "concurrency",
        f"{config.name} reserves {wanted} concurrent executions ({parts}; {already} already "
        f"held) but Lambda keeps >= {MIN_UNRESERVED_CONCURRENCY} unreserved: {unreserved} "
        f"unreserved of a {quota} quota is not enough",
        f"raise 'Concurrent executions' ({CONCURRENCY_QUOTA_CODE}) to >= {quota_needed}: aws "
        f"service-quotas request-service-quota-increase --service-code lambda --quota-code "
        f"{CONCURRENCY_QUOTA_CODE} --desired-value {quota_needed}",
    ), numbers


def _function_memories(lambda_: Any, pages: int) -> Iterator[tuple[str, int]]:
    paginator = lambda_.get_paginator("list_functions")
    for number, page in enumerate(paginator.paginate()):
        if number >= pages:
            return
        for function in page.get("Functions", []):
            yield function["FunctionName"], int(function.get("MemorySize", 0))


# The StageConfig field that sizes each function.
MEMORY_FIELDS = {"predict": "memory_mb", "batch": "batch_memory_mb"}


def stage_memories(config: StageConfig) -> dict[str, int]:
    """Memory in MB of each function the stage deploys (``predict``, ``batch``)."""
    memories = {"predict": config.memory_mb}
    if config.batch_enabled:
        memories["batch"] = config.batch_memory_mb
    return memories


def _sizes(memories: Mapping[str, int]) -> str:
    return ", ".join(f"{function} {memory} MB" for function, memory in memories.items())


def check_memory(
    session: Any, config: StageConfig, outputs: Mapping[str, str], quota: int | None
) -> Finding:
    """Every function's memory against the reduced limit new accounts get (no API reports it)."""
    memories = stage_memories(config)
    biggest = max(memories.values())
    if biggest <= NEW_ACCOUNT_MEMORY_MB:
        return ok(
            "memory",
            f"{_sizes(memories)}: within the {NEW_ACCOUNT_MEMORY_MB} MB new accounts start with",
        )
    mine = {outputs[name] for name in FUNCTION_OUTPUTS.values() if name in outputs}
    lambda_ = client(session, "lambda")
    try:
        # Evidence the account is past the new-account limit: a function already that big.
        largest = max(_function_memories(lambda_, pages=10), key=lambda f: f[1], default=None)
    except (ClientError, BotoCoreError):
        largest = None
    if largest and largest[1] >= biggest:
        name, memory = largest
        owner = " (this stage's function)" if name in mine else ""
        return ok(
            "memory",
            f"{_sizes(memories)}: the account already runs {name}{owner} at {memory} MB",
        )
    over = {f: m for f, m in memories.items() if m > NEW_ACCOUNT_MEMORY_MB}
    new_account = (
        f" Its concurrency quota ({quota}) is below the 1,000 default, so it still looks new."
        if quota is not None and quota < 1000
        else ""
    )
    settings = " and ".join(f"{MEMORY_FIELDS[f]}={NEW_ACCOUNT_MEMORY_MB}" for f in over)
    return warn(
        "memory",
        f"{config.name} uses {_sizes(over)}; new accounts are held to {NEW_ACCOUNT_MEMORY_MB} MB "
        "until AWS raises it, and no API reports the limit (the deploy would fail with "
        "\"'MemorySize' value failed to satisfy constraint: Member must have value less than "
        f'or equal to {NEW_ACCOUNT_MEMORY_MB}").{new_account}',
        f"if it does, ask AWS Support (Lambda, function memory) or set {settings} for "
        f"{config.name} in stacks/config.py",
    )


def check_api_gateway_logging(session: Any) -> Finding:
    """The stage's execution logging needs the account's API Gateway CloudWatch role."""
    try:
        role_arn = client(session, "apigateway").get_account().get("cloudwatchRoleArn")
    except (ClientError, BotoCoreError) as error:
        return could_not_read(
            "api-logging", "API Gateway account settings", error, "aws apigateway get-account"
        )
    if not role_arn:
        return blocker(
            "api-logging",
            "API Gateway has no CloudWatch Logs role in this account/region; the stage "
            "would fail with 'CloudWatch Logs role ARN must be set in account settings'",
            f"make bootstrap (deploys {ACCOUNT_STACK_ID})",
        )
    role_name = role_arn.rsplit("/", 1)[-1]
    try:
        role = client(session, "iam").get_role(RoleName=role_name)["Role"]
    except ClientError as error:
        if error_code(error) == "NoSuchEntity":
            return blocker(
                "api-logging",
                f"API Gateway logs through {role_arn}, which no longer exists (deleted with "
                "the stack that set it?)",
                f"make bootstrap (deploys {ACCOUNT_STACK_ID} and points API Gateway at its role)",
            )
        return could_not_read(
            "api-logging", role_arn, error, f"aws iam get-role --role-name {role_name}"
        )
    trust = str(role.get("AssumeRolePolicyDocument", ""))
    if "apigateway.amazonaws.com" not in trust:
        return blocker(
            "api-logging",
            f"API Gateway logs through {role_arn}, which API Gateway may not assume",
            f"make bootstrap (deploys {ACCOUNT_STACK_ID} and points API Gateway at its role)",
        )
    owner = f" ({ACCOUNT_STACK_ID})" if role_name.startswith(ACCOUNT_STACK_ID) else ""
    return ok("api-logging", f"API Gateway logs through {role_arn}{owner}")
