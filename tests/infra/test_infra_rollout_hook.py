"""The CodeDeploy BeforeAllowTraffic hook in the template, and where its values come from."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from infra_helpers import (
    EXPECTED,
    FAKE_REFERENCE,
    REFERENCE_IMAGE,
    FakeModel,
    logical_id_of,
    only,
    resources_of,
    write_fake_model,
)

from stacks.model_source import ModelSource, ModelSourceError
from stacks.rollout import hook_environment

ROOT = Path(__file__).resolve().parents[2]
IMAGE_SHA256 = hashlib.sha256(REFERENCE_IMAGE.read_bytes()).hexdigest()


def hook_id(raw: dict[str, Any]) -> str:
    _, alias = only(raw, "AWS::Lambda::Alias")
    return logical_id_of(
        alias["UpdatePolicy"]["CodeDeployLambdaAliasUpdate"]["BeforeAllowTrafficHook"]
    )


def hook(raw: dict[str, Any]) -> dict[str, Any]:
    resource = raw["Resources"][hook_id(raw)]
    assert resource["Type"] == "AWS::Lambda::Function"
    return dict(resource["Properties"])


def new_version_id(raw: dict[str, Any]) -> str:
    _, alias = only(raw, "AWS::Lambda::Alias")
    return logical_id_of(alias["Properties"]["FunctionVersion"])


def policy_statements(raw: dict[str, Any], role_id: str) -> list[dict[str, Any]]:
    return [
        statement
        for policy in resources_of(raw, "AWS::IAM::Policy").values()
        if {"Ref": role_id} in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]


def deployment_group_arn(raw: dict[str, Any]) -> dict[str, Any]:
    group_id, group = only(raw, "AWS::CodeDeploy::DeploymentGroup")
    application = logical_id_of(group["Properties"]["ApplicationName"])
    return {
        "Fn::Join": [
            "",
            [
                "arn:",
                {"Ref": "AWS::Partition"},
                ":codedeploy:",
                {"Ref": "AWS::Region"},
                ":",
                {"Ref": "AWS::AccountId"},
                ":deploymentgroup:",
                {"Ref": application},
                "/",
                {"Ref": group_id},
            ],
        ]
    }


# --- wiring ----------------------------------------------------------------------------


def test_alias_updates_run_the_hook_before_allowing_traffic(raw: dict[str, Any]) -> None:
    _, alias = only(raw, "AWS::Lambda::Alias")
    update = alias["UpdatePolicy"]["CodeDeployLambdaAliasUpdate"]
    assert set(update) == {"ApplicationName", "DeploymentGroupName", "BeforeAllowTrafficHook"}
    assert raw["Resources"][hook_id(raw)]["Type"] == "AWS::Lambda::Function"


def test_hook_is_a_python_312_zip_of_rollout_hook(
    synthesized: Any, stage: str, raw: dict[str, Any]
) -> None:
    props = hook(raw)
    assert (props["Runtime"], props["Handler"]) == ("python3.12", "hook.handler")
    assert props["Code"]["S3Key"].endswith(".zip")
    asset_hash = props["Code"]["S3Key"].removesuffix(".zip")
    manifest = json.loads(
        (synthesized.outdir / f"{EXPECTED[stage]['stack_id']}.assets.json").read_text()
    )
    staged = synthesized.outdir / manifest["files"][asset_hash]["source"]["path"]
    assert (staged / "hook.py").read_bytes() == (ROOT / "rollout_hook" / "hook.py").read_bytes()
    assert (staged / "reference.jpg").read_bytes() == REFERENCE_IMAGE.read_bytes()
    assert not (staged / "__pycache__").exists()


def test_hook_invokes_the_version_the_alias_moves_to(raw: dict[str, Any]) -> None:
    variables = hook(raw)["Environment"]["Variables"]
    assert variables["TARGET_FUNCTION_ARN"] == {"Ref": new_version_id(raw)}
    assert raw["Resources"][new_version_id(raw)]["Type"] == "AWS::Lambda::Version"


def test_hook_expects_the_deployed_model_and_its_reference(
    raw: dict[str, Any], fake_model: FakeModel
) -> None:
    variables = hook(raw)["Environment"]["Variables"]
    function_env = raw["Resources"]["PredictFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["EXPECTED_MODEL_SHA256"] == fake_model.sha256 == function_env["MODEL_SHA256"]
    assert {k: v for k, v in variables.items() if k.startswith("REFERENCE_")} == {
        "REFERENCE_IMAGE": "reference.jpg",
        "REFERENCE_IMAGE_SHA256": IMAGE_SHA256,
        "REFERENCE_TOP1_INDEX": "281",
        "REFERENCE_TOP1_LABEL": "tabby",
    }


def test_hook_outlives_a_cold_invocation_of_the_new_version(raw: dict[str, Any]) -> None:
    props = hook(raw)
    predict_timeout = raw["Resources"]["PredictFunction"]["Properties"]["Timeout"]
    invoke_timeout = int(props["Environment"]["Variables"]["INVOKE_TIMEOUT_SECONDS"])
    # The invocation may take a cold start plus the function's timeout; the hook keeps time
    # after it to report (rollout_hook/hook.py REPORT_RESERVE_S = 15 s).
    assert invoke_timeout > predict_timeout + 30
    assert props["Timeout"] >= invoke_timeout + 15


def test_hook_may_only_log_invoke_the_new_version_and_report(raw: dict[str, Any]) -> None:
    role_id = logical_id_of(hook(raw)["Role"])
    role = raw["Resources"][role_id]["Properties"]
    assert "ManagedPolicyArns" not in role
    assert role["AssumeRolePolicyDocument"]["Statement"] == [
        {
            "Action": "sts:AssumeRole",
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
        }
    ]
    group_id = hook(raw)["LoggingConfig"]["LogGroup"]["Ref"]
    assert policy_statements(raw, role_id) == [
        {
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Effect": "Allow",
            "Resource": {"Fn::GetAtt": [group_id, "Arn"]},
        },
        {
            "Action": "lambda:InvokeFunction",
            "Effect": "Allow",
            "Resource": {"Ref": new_version_id(raw)},
            "Sid": "InvokeTheNewVersion",
        },
        {
            "Action": "codedeploy:PutLifecycleEventHookExecutionStatus",
            "Effect": "Allow",
            "Resource": deployment_group_arn(raw),
        },
    ]


def test_codedeploy_may_invoke_the_hook_and_no_other_function(raw: dict[str, Any]) -> None:
    _, group = only(raw, "AWS::CodeDeploy::DeploymentGroup")
    role_id = logical_id_of(group["Properties"]["ServiceRoleArn"])
    hook_arn = {"Fn::GetAtt": [hook_id(raw), "Arn"]}
    # AWSCodeDeployRoleForLambdaLimited alone invokes only functions named CodeDeployHook_*.
    assert policy_statements(raw, role_id) == [
        {
            "Action": "lambda:InvokeFunction",
            "Effect": "Allow",
            "Resource": [hook_arn, {"Fn::Join": ["", [hook_arn, ":*"]]}],
        }
    ]


def test_hook_logs_to_its_own_group_with_the_stage_retention(
    stage: str, raw: dict[str, Any]
) -> None:
    config = hook(raw)["LoggingConfig"]
    assert config["LogFormat"] == "JSON"
    group = raw["Resources"][config["LogGroup"]["Ref"]]
    assert group["Properties"]["RetentionInDays"] == EXPECTED[stage]["log_retention_days"]
    assert group["DeletionPolicy"] == EXPECTED[stage]["deletion_policy"]


def test_alias_update_waits_for_the_hook_and_its_permissions(raw: dict[str, Any]) -> None:
    _, alias = only(raw, "AWS::Lambda::Alias")
    role_id = logical_id_of(hook(raw)["Role"])
    (policy_id,) = [
        logical_id
        for logical_id, policy in resources_of(raw, "AWS::IAM::Policy").items()
        if {"Ref": role_id} in policy["Properties"]["Roles"]
    ]
    assert {hook_id(raw), policy_id} <= set(alias["DependsOn"])


# --- where the values come from ---------------------------------------------------------


def test_a_model_without_reference_gets_a_hook_without_top1(tmp_path: Path) -> None:
    fake = write_fake_model(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    del manifest["reference"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    model = ModelSource.from_artifact_dir(tmp_path)
    assert model.reference is None
    variables = hook_environment(model=model, target_function_arn="arn:version")
    assert variables["EXPECTED_MODEL_SHA256"] == fake.sha256
    assert "REFERENCE_TOP1_INDEX" not in variables


def test_a_reference_recorded_for_another_image_is_refused(tmp_path: Path) -> None:
    write_fake_model(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["reference"]["image_sha256"] = hashlib.sha256(b"an older photograph").hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelSourceError, match=r"another version of rollout_hook/reference\.jpg"):
        ModelSource.from_artifact_dir(tmp_path)


@pytest.mark.parametrize(
    "reference",
    [
        "reference.jpg",
        {**FAKE_REFERENCE, "top1": {"label": "tabby"}},
        {**FAKE_REFERENCE, "top1": {"index": "281"}},
        {**FAKE_REFERENCE, "image": "../README.md"},
    ],
)
def test_a_malformed_reference_is_refused_with_the_remedy(tmp_path: Path, reference: Any) -> None:
    write_fake_model(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["reference"] = reference
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelSourceError, match="make model"):
        ModelSource.from_artifact_dir(tmp_path)


def test_a_published_model_takes_its_reference_top1_from_context() -> None:
    sha256 = "ab" * 32
    model = ModelSource.published(
        key=f"models/{sha256}/model.onnx", sha256=sha256, reference_top1="281"
    )
    variables = hook_environment(model=model, target_function_arn="arn:version")
    assert variables["REFERENCE_TOP1_INDEX"] == "281"
    assert variables["REFERENCE_IMAGE_SHA256"] == IMAGE_SHA256
    unchecked = ModelSource.published(key=f"models/{sha256}/model.onnx", sha256=sha256)
    assert "REFERENCE_TOP1_INDEX" not in hook_environment(
        model=unchecked, target_function_arn="arn:version"
    )


@pytest.mark.parametrize("value", ["tabby", "-1", "2.5", True])
def test_a_published_models_reference_top1_must_be_a_class_index(value: object) -> None:
    sha256 = "ab" * 32
    with pytest.raises(ModelSourceError, match="model_reference_top1 must be a class index"):
        ModelSource.published(
            key=f"models/{sha256}/model.onnx", sha256=sha256, reference_top1=value
        )


def test_app_refuses_a_bad_reference_top1_in_one_line(tmp_path: Path) -> None:
    sha256 = "ab" * 32
    cdk_json = json.loads((ROOT / "cdk.json").read_text(encoding="utf-8"))
    context = {
        **cdk_json["context"],
        "model_key": f"models/{sha256}/model.onnx",
        "model_sha256": sha256,
        "model_reference_top1": "tabby",
    }
    result = subprocess.run(
        [sys.executable, str(ROOT / "app.py")],
        cwd=tmp_path,
        env={**os.environ, "CDK_CONTEXT_JSON": json.dumps(context), "CDK_OUTDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: model_reference_top1 must be a class index >= 0, got 'tabby'"
    )
