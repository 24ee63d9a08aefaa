"""The optional GitHub OIDC stack: exact trust, least privilege, cdk-nag and cfn-lint clean."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import Aspects
from aws_cdk.assertions import Annotations, Match
from cdk_nag import AwsSolutionsChecks
from infra_helpers import resources_of
from test_infra_app import run_app, stacks_in

from stacks.app_builder import new_app
from stacks.github_oidc import (
    GitHubOidcError,
    GitHubOidcSettings,
    GitHubOidcStack,
    GitHubRepository,
)
from stacks.synth_guard import GUARD_RULE

ROOT = Path(__file__).resolve().parents[2]
REPO = "octo-org/octo-repo"
EXISTING_PROVIDER = "arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com"
AUD = "token.actions.githubusercontent.com:aud"
SUB = "token.actions.githubusercontent.com:sub"
BOOTSTRAP_TAG = "iam:ResourceTag/aws-cdk:bootstrap-role"
# What a role ARN of the bootstrap stack looks like once the pseudo parameters are flattened.
ACCOUNT, REGION, PARTITION = "${AWS::AccountId}", "${AWS::Region}", "${AWS::Partition}"


def bootstrap_role(role: str) -> str:
    return f"arn:{PARTITION}:iam::{ACCOUNT}:role/cdk-hnb659fds-{role}-role-{ACCOUNT}-{REGION}"


def flatten(value: Any) -> Any:
    """Fn::Join of literals and Refs -> one string with ${Ref} placeholders (recursively)."""
    if isinstance(value, dict):
        if set(value) == {"Fn::Join"}:
            separator, parts = value["Fn::Join"]
            return separator.join(str(flatten(part)) for part in parts)
        if set(value) == {"Ref"}:
            return "${" + value["Ref"] + "}"
        return {key: flatten(item) for key, item in value.items()}
    if isinstance(value, list):
        return [flatten(item) for item in value]
    return value


def synth(tmp: Path, settings: GitHubOidcSettings) -> tuple[GitHubOidcStack, dict[str, Any]]:
    app = new_app(outdir=tmp)
    stack = GitHubOidcStack(app, settings=settings)
    Aspects.of(app).add(AwsSolutionsChecks(verbose=True))  # as app.py's add_stages does
    template = app.synth().get_stack_by_name(stack.stack_name).template
    return stack, template


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> tuple[GitHubOidcStack, Path]:
    outdir = tmp_path_factory.mktemp("github-oidc")
    stack, _ = synth(outdir, GitHubOidcSettings(repository=GitHubRepository.parse(REPO)))
    return stack, outdir


@pytest.fixture(scope="module")
def raw(synthesized: tuple[GitHubOidcStack, Path]) -> dict[str, Any]:
    stack, outdir = synthesized
    template: dict[str, Any] = json.loads(
        (outdir / f"{stack.stack_name}.template.json").read_text(encoding="utf-8")
    )
    return template


def role(raw: dict[str, Any], construct_id: str) -> dict[str, Any]:
    (found,) = [
        resource["Properties"]
        for logical_id, resource in resources_of(raw, "AWS::IAM::Role").items()
        if logical_id.startswith(construct_id)
    ]
    return found


def statements(raw: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for resource in raw["Resources"].values():
        if resource["Type"] == "AWS::IAM::Role":
            documents = [p["PolicyDocument"] for p in resource["Properties"].get("Policies", [])]
            documents.append(resource["Properties"]["AssumeRolePolicyDocument"])
        elif resource["Type"] == "AWS::IAM::Policy":
            documents = [resource["Properties"]["PolicyDocument"]]
        else:
            continue
        found += [s for document in documents for s in document["Statement"]]
    return found


def trust(provider: Any, subject: Any) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Effect": "Allow",
                "Principal": {"Federated": provider},
                "Condition": {"StringEquals": {AUD: "sts.amazonaws.com", SUB: subject}},
            }
        ],
    }


# --- resources and trust ----------------------------------------------------------------


def test_stack_holds_one_provider_and_two_roles_only(raw: dict[str, Any]) -> None:
    types = sorted(resource["Type"] for resource in raw["Resources"].values())
    assert types == ["AWS::IAM::OIDCProvider", "AWS::IAM::Role", "AWS::IAM::Role"]


def test_provider_is_githubs_issuer_for_the_sts_audience_without_thumbprints(
    raw: dict[str, Any],
) -> None:
    ((_, provider),) = resources_of(raw, "AWS::IAM::OIDCProvider").items()
    # No ThumbprintList: IAM checks GitHub's certificate against its trusted root CAs.
    assert provider["Properties"] == {
        "Url": "https://token.actions.githubusercontent.com",
        "ClientIdList": ["sts.amazonaws.com"],
    }


def provider_ref(raw: dict[str, Any]) -> dict[str, str]:
    ((logical_id, _),) = resources_of(raw, "AWS::IAM::OIDCProvider").items()
    return {"Ref": logical_id}


def test_diff_role_trusts_only_pull_request_runs_of_the_repository(raw: dict[str, Any]) -> None:
    assert role(raw, "DiffRole")["AssumeRolePolicyDocument"] == trust(
        provider_ref(raw), f"repo:{REPO}:pull_request"
    )


def test_deploy_role_trusts_only_the_dev_and_prod_environments_of_the_repository(
    raw: dict[str, Any],
) -> None:
    assert role(raw, "DeployRole")["AssumeRolePolicyDocument"] == trust(
        provider_ref(raw), [f"repo:{REPO}:environment:dev", f"repo:{REPO}:environment:prod"]
    )


def test_an_existing_provider_is_trusted_by_arn_and_not_created(tmp_path: Path) -> None:
    settings = GitHubOidcSettings(
        repository=GitHubRepository.parse(REPO), existing_provider_arn=EXISTING_PROVIDER
    )
    _, template = synth(tmp_path, settings)
    assert resources_of(template, "AWS::IAM::OIDCProvider") == {}
    assert role(template, "DiffRole")["AssumeRolePolicyDocument"] == trust(
        EXISTING_PROVIDER, f"repo:{REPO}:pull_request"
    )


# --- permissions ------------------------------------------------------------------------


def test_diff_role_may_only_assume_the_cdk_lookup_role(raw: dict[str, Any]) -> None:
    policies = flatten(role(raw, "DiffRole")["Policies"])
    assert policies == [
        {
            "PolicyName": "AssumeCdkLookupRole",
            "PolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "AssumeCdkBootstrapRoles",
                        "Effect": "Allow",
                        "Action": "sts:AssumeRole",
                        "Resource": bootstrap_role("lookup"),
                        "Condition": {"StringEquals": {BOOTSTRAP_TAG: "lookup"}},
                    }
                ],
            },
        }
    ]


def test_deploy_role_may_assume_the_bootstrap_roles_and_read_what_preflight_and_smoke_read(
    raw: dict[str, Any],
) -> None:
    roles = ["deploy", "lookup", "file-publishing", "image-publishing"]
    apigateway = f"arn:{PARTITION}:apigateway:{REGION}::"
    stack = f"arn:{PARTITION}:cloudformation:{REGION}:{ACCOUNT}:stack"
    (policy,) = flatten(role(raw, "DeployRole")["Policies"])
    assert policy["PolicyDocument"]["Statement"] == [
        {
            "Sid": "AssumeCdkBootstrapRoles",
            "Effect": "Allow",
            "Action": "sts:AssumeRole",
            # aws-iam:minimizePolicies sorts the resources.
            "Resource": sorted(bootstrap_role(name) for name in roles),
            "Condition": {"StringEquals": {BOOTSTRAP_TAG: roles}},
        },
        {
            "Sid": "ReadBootstrapVersion",
            "Effect": "Allow",
            "Action": "ssm:GetParameter",
            "Resource": f"arn:{PARTITION}:ssm:{REGION}:{ACCOUNT}:"
            "parameter/cdk-bootstrap/hnb659fds/version",
        },
        {
            "Sid": "ReadAccountLimits",
            "Effect": "Allow",
            "Action": [
                "lambda:GetAccountSettings",
                "lambda:ListFunctions",
                "servicequotas:GetAWSDefaultServiceQuota",
                "servicequotas:GetServiceQuota",
            ],
            "Resource": "*",
        },
        {
            "Sid": "ReadApiGatewayAccountAndKeys",
            "Effect": "Allow",
            "Action": "apigateway:GET",
            "Resource": [f"{apigateway}/account", f"{apigateway}/apikeys/*"],
        },
        {
            "Sid": "ReadServingFunctionConcurrency",
            "Effect": "Allow",
            "Action": "lambda:GetFunctionConcurrency",
            "Resource": [
                f"arn:{PARTITION}:lambda:{REGION}:{ACCOUNT}:function:ResnetServingDev-*",
                f"arn:{PARTITION}:lambda:{REGION}:{ACCOUNT}:function:ResnetServingProd-*",
            ],
        },
        {
            "Sid": "ReadApiGatewayLoggingRole",
            "Effect": "Allow",
            "Action": "iam:GetRole",
            "Resource": f"arn:{PARTITION}:iam::{ACCOUNT}:role/ResnetServingAccount-*",
        },
        {
            "Sid": "DescribeServingStacks",
            "Effect": "Allow",
            "Action": "cloudformation:DescribeStacks",
            "Resource": [f"{stack}/ResnetServingDev/*", f"{stack}/ResnetServingProd/*"],
        },
    ]


def test_no_statement_uses_a_wildcard_action(raw: dict[str, Any]) -> None:
    actions = [
        action
        for statement in statements(raw)
        for action in (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
    ]
    assert actions
    assert [action for action in actions if "*" in action or "?" in action] == []


def test_resource_star_only_for_reads_without_resource_level_permissions(
    raw: dict[str, Any],
) -> None:
    star = [s["Action"] for s in statements(raw) if "*" in json.dumps(s.get("Resource", ""))]
    # The other wildcards are ARN suffixes (generated ids), checked exactly above.
    assert [
        a
        for a in star
        if a
        not in (
            "apigateway:GET",
            "cloudformation:DescribeStacks",
            "lambda:GetFunctionConcurrency",
            "iam:GetRole",
        )
    ] == [
        [
            "lambda:GetAccountSettings",
            "lambda:ListFunctions",
            "servicequotas:GetAWSDefaultServiceQuota",
            "servicequotas:GetServiceQuota",
        ]
    ]


def test_roles_carry_no_managed_policies_and_keep_the_one_hour_session(
    raw: dict[str, Any],
) -> None:
    for properties in (role(raw, "DiffRole"), role(raw, "DeployRole")):
        assert "ManagedPolicyArns" not in properties
        assert "MaxSessionDuration" not in properties  # IAM's default: one hour
        assert "RoleName" not in properties  # generated; the outputs give the ARNs


def test_outputs_name_the_repository_variables_to_set(raw: dict[str, Any]) -> None:
    outputs = raw["Outputs"]
    assert "AWS_DIFF_ROLE_ARN" in outputs["DiffRoleArn"]["Description"]
    assert "AWS_DEPLOY_ROLE_ARN" in outputs["DeployRoleArn"]["Description"]
    assert outputs["DeployRoleArn"]["Value"]["Fn::GetAtt"][1] == "Arn"


# --- compliance ---------------------------------------------------------------------------


def test_cdk_nag_reports_nothing_unsuppressed(synthesized: tuple[GitHubOidcStack, Path]) -> None:
    stack, outdir = synthesized
    for find in (
        Annotations.from_stack(stack).find_error,
        Annotations.from_stack(stack).find_warning,
    ):
        assert find("*", Match.string_like_regexp("AwsSolutions-.*")) == []
    report = outdir / f"AwsSolutions--{stack.stack_name}-NagReport.csv"
    rows = list(csv.DictReader(report.read_text(encoding="utf-8").splitlines()))
    assert {row["Rule ID"] for row in rows} >= {"AwsSolutions-IAM4", "AwsSolutions-IAM5"}
    assert {row["Compliance"] for row in rows} <= {"Compliant", "Suppressed", "N/A"}


def test_every_suppression_has_a_reason_and_is_documented(raw: dict[str, Any]) -> None:
    doc = (ROOT / "docs" / "ci-cd.md").read_text(encoding="utf-8")
    rules = [
        rule
        for resource in raw["Resources"].values()
        for rule in resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", [])
    ]
    assert rules
    for rule in rules:
        assert len(rule["reason"]) >= 40
        assert f"`{rule['id']}`" in doc


def test_template_passes_cfn_lint(synthesized: tuple[GitHubOidcStack, Path]) -> None:
    stack, outdir = synthesized
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("cfn-lint")),
            str(outdir / f"{stack.stack_name}.template.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- settings and app.py ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "octo",
        "octo/",
        "/repo",
        "octo/repo/extra",
        "octo/*",
        "*/*",
        "octo/re?o",
        "octo/re po",
        "-octo/repo",
        "octo/..",
        "repo:octo/repo",
    ],
)
def test_repository_must_name_exactly_one_repository(value: str) -> None:
    with pytest.raises(GitHubOidcError, match="github_repo must be <owner>/<name>"):
        GitHubRepository.parse(value)


def test_repository_keeps_githubs_spelling() -> None:
    repository = GitHubRepository.parse("Octo-Org/resnet.serving_2")
    assert repository.subject("pull_request") == "repo:Octo-Org/resnet.serving_2:pull_request"


def test_settings_are_optional_and_validate_the_provider_arn() -> None:
    assert GitHubOidcSettings.from_context(None, None) is None
    with pytest.raises(GitHubOidcError, match="needs -c github_repo"):
        GitHubOidcSettings.from_context(None, EXISTING_PROVIDER)
    with pytest.raises(GitHubOidcError, match="must be the ARN of the account's GitHub provider"):
        GitHubOidcSettings.from_context(REPO, "arn:aws:iam::123456789012:oidc-provider/example.com")
    settings = GitHubOidcSettings.from_context(REPO, EXISTING_PROVIDER)
    assert settings == GitHubOidcSettings(
        repository=GitHubRepository("octo-org", "octo-repo"),
        existing_provider_arn=EXISTING_PROVIDER,
    )


@pytest.mark.slow
def test_app_adds_the_oidc_stack_only_when_given_a_repository(tmp_path: Path) -> None:
    sha256 = "ab" * 32
    result = run_app(
        tmp_path,
        stage="dev",
        model_key=f"models/{sha256}/model.onnx",
        model_sha256=sha256,
        github_repo=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert stacks_in(tmp_path) == ["ResnetServingDev", "ResnetServingGitHubOidc"]
    # app.py's cdk-nag aspect covers it too.
    assert (tmp_path / "AwsSolutions--ResnetServingGitHubOidc-NagReport.csv").is_file()


def test_oidc_stack_deploys_from_a_clean_checkout_without_a_model(tmp_path: Path) -> None:
    # docs/ci-cd.md deploys it with -c without_model=true: the serving stacks come out guarded
    # against deploy, the OIDC stack does not.
    result = run_app(tmp_path, without_model="true", github_repo=REPO)
    assert result.returncode == 0, result.stderr
    assert "ResnetServingGitHubOidc" in stacks_in(tmp_path)
    template = json.loads((tmp_path / "ResnetServingGitHubOidc.template.json").read_text("utf-8"))
    assert GUARD_RULE not in template.get("Rules", {})
    dev = json.loads((tmp_path / "ResnetServingDev.template.json").read_text("utf-8"))
    assert GUARD_RULE in dev["Rules"]


def test_app_rejects_a_bad_repository_in_one_line(tmp_path: Path) -> None:
    sha256 = "ab" * 32
    result = run_app(
        tmp_path,
        stage="dev",
        model_key=f"models/{sha256}/model.onnx",
        model_sha256=sha256,
        github_repo="octo-org/*",
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: github_repo must be <owner>/<name> as on GitHub (for example "
        "-c github_repo=octo-org/resnet-serving), not 'octo-org/*'"
    ]
