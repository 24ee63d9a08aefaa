"""ResnetServingAccount: API Gateway's account-wide logging role, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aws_cdk import Aspects
from aws_cdk.assertions import Annotations, Match, Template
from cdk_nag import AwsSolutionsChecks
from infra_helpers import only

from stacks.account_stack import (
    ACCOUNT_LOGICAL_ID,
    ACCOUNT_STACK_ID,
    ROLE_LOGICAL_ID,
    AccountStack,
)
from stacks.app_builder import add_account_stack, new_app


@pytest.fixture(scope="module")
def account_stack(tmp_path_factory: pytest.TempPathFactory) -> AccountStack:
    app = new_app(outdir=tmp_path_factory.mktemp("account"))
    stack = add_account_stack(app)
    # As add_stages does for the whole app.
    Aspects.of(app).add(AwsSolutionsChecks(verbose=True))
    app.synth()
    return stack


@pytest.fixture(scope="module")
def account(account_stack: AccountStack) -> dict[str, Any]:
    return Template.from_stack(account_stack).to_json()


def test_account_stack_sets_the_api_gateway_logging_role_exactly_once(
    account: dict[str, Any],
) -> None:
    account_id, setting = only(account, "AWS::ApiGateway::Account")
    role_id, role = only(account, "AWS::IAM::Role")
    assert (account_id, role_id) == (ACCOUNT_LOGICAL_ID, ROLE_LOGICAL_ID)
    assert setting["Properties"]["CloudWatchRoleArn"] == {"Fn::GetAtt": [role_id, "Arn"]}
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"] == [
        {
            "Action": "sts:AssumeRole",
            "Effect": "Allow",
            "Principal": {"Service": "apigateway.amazonaws.com"},
        }
    ]
    (policy,) = role["Properties"]["ManagedPolicyArns"]
    assert policy["Fn::Join"][1][-1].endswith(
        "policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"
    )
    assert set(account["Resources"]) == {account_id, role_id}


def test_logging_role_survives_stack_deletion_but_not_a_failed_first_create(
    account: dict[str, Any],
) -> None:
    # Other APIs in the account log through it; a failed first create (IAM propagation)
    # must not orphan a role, so `make bootstrap` can just run again.
    for logical_id in (ROLE_LOGICAL_ID, ACCOUNT_LOGICAL_ID):
        resource = account["Resources"][logical_id]
        assert resource["DeletionPolicy"] == "RetainExceptOnCreate", logical_id
        assert resource["UpdateReplacePolicy"] == "Retain", logical_id


def test_account_stack_outputs_the_role_arn_preflight_compares(
    account: dict[str, Any],
) -> None:
    output = account["Outputs"]["ApiGatewayCloudWatchRoleArn"]
    assert output["Value"] == {"Fn::GetAtt": [ROLE_LOGICAL_ID, "Arn"]}


def test_account_stack_is_cdk_nag_clean(account_stack: AccountStack) -> None:
    errors = Annotations.from_stack(account_stack).find_error(
        "*", Match.string_like_regexp("AwsSolutions-.*")
    )
    warnings = Annotations.from_stack(account_stack).find_warning(
        "*", Match.string_like_regexp("AwsSolutions-.*")
    )
    assert errors == warnings == []


def test_account_stack_is_named_for_make_bootstrap(account_stack: AccountStack) -> None:
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text(encoding="utf-8")
    assert account_stack.stack_name == ACCOUNT_STACK_ID == "ResnetServingAccount"
    assert f"npx cdk deploy {ACCOUNT_STACK_ID} " in makefile
