"""ResnetServingGitHubOidc (optional): the IAM side of the GitHub Actions workflows.

Deployed once per account, by hand (``docs/ci-cd.md``); ``app.py`` adds it only when given
``-c github_repo=<owner>/<name>``. It holds:

* the account's IAM OIDC identity provider for ``token.actions.githubusercontent.com``
  (audience ``sts.amazonaws.com``), or a reference to an existing one: IAM allows one provider
  per URL per account;
* ``DiffRole``, for ``.github/workflows/pr.yml``: trusted only by pull-request workflow runs of
  the repository (``repo:<owner>/<name>:pull_request``); it may only assume the CDK bootstrap
  *lookup* role, which is what ``cdk diff --method=template`` uses to read the deployed
  templates;
* ``DeployRole``, for ``.github/workflows/deploy.yml``: trusted only by jobs that run in the
  repository's ``dev`` or ``prod`` GitHub environment (``repo:<owner>/<name>:environment:<env>``);
  it may assume the four CDK bootstrap roles a ``cdk deploy`` uses (deploy, lookup, file and
  image publishing; CloudFormation does the rest with the bootstrap execution role) and read
  what ``make preflight`` and ``make smoke`` read.

Nothing here is account- or region-specific at synth time: ARNs are built from the deploying
environment's pseudo parameters, so the template stays hermetic.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aws_cdk import Aws, CfnOutput, DefaultStackSynthesizer, Stack
from aws_cdk import aws_iam as iam
from cdk_nag import NagPackSuppression, NagSuppressions
from constructs import Construct

from stacks.account_stack import ACCOUNT_STACK_ID
from stacks.config import STAGES

STACK_ID = "ResnetServingGitHubOidc"
GITHUB_OIDC_URL = "https://token.actions.githubusercontent.com"
GITHUB_OIDC_HOST = "token.actions.githubusercontent.com"
# The audience aws-actions/configure-aws-credentials requests by default.
STS_AUDIENCE = "sts.amazonaws.com"
# GitHub environments the deploy workflow runs its jobs in (docs/ci-cd.md).
DEPLOY_ENVIRONMENTS = ("dev", "prod")
# The tag `cdk bootstrap` puts on each of its roles; the value names the role's job.
BOOTSTRAP_ROLE_TAG = "iam:ResourceTag/aws-cdk:bootstrap-role"
DEPLOY_BOOTSTRAP_ROLES = ("deploy", "lookup", "file-publishing", "image-publishing")
# Read-only actions that have no resource-level permissions ("*" is their only Resource).
ACCOUNT_LEVEL_READS = (
    "lambda:GetAccountSettings",
    "lambda:ListFunctions",
    "servicequotas:GetAWSDefaultServiceQuota",
    "servicequotas:GetServiceQuota",
)
# GitHub owner and repository names: letters, digits, '-', '_' and '.'; nothing that IAM
# would read as a wildcard, so the trust condition names exactly one repository.
_PROVIDER_ARN = re.compile(
    r"^arn:aws[a-z-]*:iam::\d{12}:oidc-provider/" + re.escape(GITHUB_OIDC_HOST) + "$"
)
_REPOSITORY = re.compile(
    r"^(?P<owner>[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)/(?P<name>[A-Za-z0-9._-]+)$"
)


class GitHubOidcError(ValueError):
    """A bad ``-c github_repo=...`` value; the message says what is expected."""


@dataclass(frozen=True)
class GitHubRepository:
    """``owner/name`` of the repository whose workflows may assume the roles."""

    owner: str
    name: str

    @classmethod
    def parse(cls, value: str) -> GitHubRepository:
        match = _REPOSITORY.match(value)
        if match is None or match["name"] in (".", ".."):
            raise GitHubOidcError(
                f"github_repo must be <owner>/<name> as on GitHub (for example "
                f"-c github_repo=octo-org/resnet-serving), not {value!r}"
            )
        return cls(owner=match["owner"], name=match["name"])

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    def subject(self, context: str) -> str:
        """The token's ``sub`` claim for a run in ``context`` (``pull_request``, ...)."""
        return f"repo:{self.full_name}:{context}"


@dataclass(frozen=True)
class GitHubOidcSettings:
    """What ``app.py`` reads from ``-c github_repo=...`` and ``-c github_oidc_provider_arn=...``."""

    repository: GitHubRepository
    # The account's GitHub OIDC provider, if it exists already (IAM allows one per URL per
    # account); None: the stack creates it.
    existing_provider_arn: str | None = None

    @classmethod
    def from_context(cls, repo: object, provider_arn: object) -> GitHubOidcSettings | None:
        """None when no repository is given: the stack is optional."""
        if repo is None:
            if provider_arn is not None:
                raise GitHubOidcError(
                    "-c github_oidc_provider_arn needs -c github_repo=<owner>/<name>"
                )
            return None
        if provider_arn is not None and not _PROVIDER_ARN.match(str(provider_arn)):
            raise GitHubOidcError(
                "github_oidc_provider_arn must be the ARN of the account's GitHub provider, "
                f"arn:aws:iam::<account>:oidc-provider/{GITHUB_OIDC_HOST}, not {provider_arn!r}"
            )
        return cls(
            repository=GitHubRepository.parse(str(repo)),
            existing_provider_arn=str(provider_arn) if provider_arn is not None else None,
        )


class GitHubOidcStack(Stack):
    """OIDC provider + the pull-request diff role + the deploy role."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str = STACK_ID,
        *,
        settings: GitHubOidcSettings,
        serving_stack_ids: Sequence[str] | None = None,
        qualifier: str = DefaultStackSynthesizer.DEFAULT_QUALIFIER,
        **kwargs: Any,
    ) -> None:
        """
        :param settings: the only repository whose workflows may assume the roles, and the
            existing provider to reuse, if any.
        :param serving_stack_ids: stacks the deploy role may describe; default: every stage's.
        :param qualifier: the CDK bootstrap qualifier; default ``hnb659fds``, as ``cdk bootstrap``.
        """
        repository = settings.repository
        super().__init__(
            scope,
            construct_id,
            description=f"GitHub Actions OIDC roles for {repository.full_name} (resnet-serving)",
            tags={"project": "resnet-serving"},
            **kwargs,
        )
        stack_ids = (
            list(serving_stack_ids)
            if serving_stack_ids is not None
            else [config.stack_id for config in STAGES.values()]
        )

        if settings.existing_provider_arn:
            provider: iam.IOidcProvider = iam.OidcProviderNative.from_oidc_provider_arn(
                self, "GitHubProvider", settings.existing_provider_arn
            )
        else:
            # The native AWS::IAM::OIDCProvider, not the custom-resource OpenIdConnectProvider
            # (no Lambda to run and patch). No thumbprints: IAM validates GitHub's certificate
            # against its library of trusted root CAs and ignores thumbprints for it.
            provider = iam.OidcProviderNative(
                self,
                "GitHubProvider",
                url=GITHUB_OIDC_URL,
                client_ids=[STS_AUDIENCE],
            )

        diff_role = iam.Role(
            self,
            "DiffRole",
            description=f"cdk diff on pull requests of {repository.full_name}",
            assumed_by=_github_principal(provider, [repository.subject("pull_request")]),
            inline_policies={
                "AssumeCdkLookupRole": iam.PolicyDocument(
                    statements=[_assume_bootstrap_roles(qualifier, ["lookup"])]
                )
            },
        )

        deploy_role = iam.Role(
            self,
            "DeployRole",
            description=f"cdk deploy from the dev/prod environments of {repository.full_name}",
            assumed_by=_github_principal(
                provider,
                [repository.subject(f"environment:{env}") for env in DEPLOY_ENVIRONMENTS],
            ),
            inline_policies={
                "CdkDeployPreflightSmoke": iam.PolicyDocument(
                    statements=[
                        _assume_bootstrap_roles(qualifier, list(DEPLOY_BOOTSTRAP_ROLES)),
                        *_preflight_and_smoke_reads(qualifier, stack_ids),
                    ]
                )
            },
        )
        NagSuppressions.add_resource_suppressions(
            deploy_role,
            [
                NagPackSuppression(
                    id="AwsSolutions-IAM5",
                    reason="lambda:GetAccountSettings, lambda:ListFunctions and servicequotas:"
                    "GetServiceQuota/GetAWSDefaultServiceQuota (read-only, for make preflight) "
                    "have no resource-level permissions; '*' is their only valid Resource",
                    applies_to=["Resource::*"],
                ),
                NagPackSuppression(
                    id="AwsSolutions-IAM5",
                    reason="API key ids are generated at deploy time; make smoke reads the "
                    "stack's key value (apigateway:GET, read-only) under /apikeys/ in this region",
                    applies_to=[
                        "Resource::arn:<AWS::Partition>:apigateway:<AWS::Region>::/apikeys/*"
                    ],
                ),
                NagPackSuppression(
                    id="AwsSolutions-IAM5",
                    reason="a CloudFormation stack ARN ends in a generated id; DescribeStacks "
                    "(read-only) is scoped to the serving stacks by name",
                    applies_to=[
                        f"Resource::arn:<AWS::Partition>:cloudformation:<AWS::Region>:"
                        f"<AWS::AccountId>:stack/{stack_id}/*"
                        for stack_id in stack_ids
                    ],
                ),
                NagPackSuppression(
                    id="AwsSolutions-IAM5",
                    reason="function and role names end in ids CloudFormation generates; "
                    "lambda:GetFunctionConcurrency and iam:GetRole (read-only, for make "
                    "preflight) are scoped to the serving stacks' functions and the account "
                    "stack's roles by name prefix",
                    applies_to=[
                        f"Resource::arn:<AWS::Partition>:lambda:<AWS::Region>:<AWS::AccountId>:"
                        f"function:{stack_id}-*"
                        for stack_id in stack_ids
                    ]
                    + [
                        f"Resource::arn:<AWS::Partition>:iam::<AWS::AccountId>:role/{ACCOUNT_STACK_ID}-*"
                    ],
                ),
            ],
        )

        CfnOutput(
            self,
            "DiffRoleArn",
            value=diff_role.role_arn,
            description="Repository variable AWS_DIFF_ROLE_ARN (pull-request cdk diff)",
        )
        CfnOutput(
            self,
            "DeployRoleArn",
            value=deploy_role.role_arn,
            description="Repository variable AWS_DEPLOY_ROLE_ARN (deploy workflow)",
        )
        CfnOutput(self, "ProviderArn", value=provider.oidc_provider_arn)


def _github_principal(provider: iam.IOidcProvider, subjects: list[str]) -> iam.IPrincipal:
    """GitHub's tokens for exactly these ``sub`` claims, issued for STS."""
    return iam.WebIdentityPrincipal(
        provider.oidc_provider_arn,
        conditions={
            "StringEquals": {
                f"{GITHUB_OIDC_HOST}:aud": STS_AUDIENCE,
                f"{GITHUB_OIDC_HOST}:sub": subjects[0] if len(subjects) == 1 else subjects,
            }
        },
    )


def _bootstrap_role_arn(qualifier: str, role: str) -> str:
    # The names `cdk bootstrap` gives its roles: cdk-<qualifier>-<role>-role-<account>-<region>.
    return (
        f"arn:{Aws.PARTITION}:iam::{Aws.ACCOUNT_ID}:role/"
        f"cdk-{qualifier}-{role}-role-{Aws.ACCOUNT_ID}-{Aws.REGION}"
    )


def _assume_bootstrap_roles(qualifier: str, roles: list[str]) -> iam.PolicyStatement:
    """sts:AssumeRole on exactly these bootstrap roles, and only while they carry their tag."""
    return iam.PolicyStatement(
        sid="AssumeCdkBootstrapRoles",
        actions=["sts:AssumeRole"],
        resources=[_bootstrap_role_arn(qualifier, role) for role in roles],
        conditions={"StringEquals": {BOOTSTRAP_ROLE_TAG: roles[0] if len(roles) == 1 else roles}},
    )


def _preflight_and_smoke_reads(qualifier: str, stack_ids: list[str]) -> list[iam.PolicyStatement]:
    """What ``make preflight`` and ``make smoke`` read with the caller's own credentials."""
    apigateway = f"arn:{Aws.PARTITION}:apigateway:{Aws.REGION}::"
    return [
        iam.PolicyStatement(
            sid="ReadBootstrapVersion",
            actions=["ssm:GetParameter"],
            resources=[
                f"arn:{Aws.PARTITION}:ssm:{Aws.REGION}:{Aws.ACCOUNT_ID}:"
                f"parameter/cdk-bootstrap/{qualifier}/version"
            ],
        ),
        iam.PolicyStatement(
            sid="ReadAccountLimits",
            actions=list(ACCOUNT_LEVEL_READS),
            resources=["*"],
        ),
        iam.PolicyStatement(
            sid="ReadApiGatewayAccountAndKeys",
            actions=["apigateway:GET"],
            resources=[f"{apigateway}/account", f"{apigateway}/apikeys/*"],
        ),
        iam.PolicyStatement(
            # Preflight counts the concurrency a deployed stage already reserves.
            sid="ReadServingFunctionConcurrency",
            actions=["lambda:GetFunctionConcurrency"],
            resources=[
                f"arn:{Aws.PARTITION}:lambda:{Aws.REGION}:{Aws.ACCOUNT_ID}:function:{stack_id}-*"
                for stack_id in stack_ids
            ],
        ),
        iam.PolicyStatement(
            # Preflight checks API Gateway may assume the account stack's logging role.
            sid="ReadApiGatewayLoggingRole",
            actions=["iam:GetRole"],
            resources=[f"arn:{Aws.PARTITION}:iam::{Aws.ACCOUNT_ID}:role/{ACCOUNT_STACK_ID}-*"],
        ),
        iam.PolicyStatement(
            sid="DescribeServingStacks",
            actions=["cloudformation:DescribeStacks"],
            resources=[
                f"arn:{Aws.PARTITION}:cloudformation:{Aws.REGION}:{Aws.ACCOUNT_ID}:"
                f"stack/{stack_id}/*"
                for stack_id in stack_ids
            ],
        ),
    ]
