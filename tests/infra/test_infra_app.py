"""app.py's context handling, the stage configs and the model source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import FrozenInstanceError, replace
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Match, Template
from infra_helpers import FakeModel, write_fake_model

from stacks.app_builder import add_stages, new_app
from stacks.config import DEV, PROD, STAGES, StageConfig
from stacks.model_source import ModelSource, ModelSourceError
from stacks.synth_guard import GUARD_MESSAGE, GUARD_PARAMETER, GUARD_RULE, parse_flag

ROOT = Path(__file__).resolve().parents[2]


def run_app(outdir: Path, **context: str) -> subprocess.CompletedProcess[str]:
    """Run app.py the way the CDK CLI does: context in CDK_CONTEXT_JSON, output in CDK_OUTDIR."""
    cdk_json = json.loads((ROOT / "cdk.json").read_text(encoding="utf-8"))
    env = {
        **os.environ,
        "CDK_CONTEXT_JSON": json.dumps({**cdk_json["context"], **context}),
        "CDK_OUTDIR": str(outdir),
    }
    return subprocess.run(
        [sys.executable, str(ROOT / "app.py")],
        cwd=outdir,  # app.py must not depend on the working directory
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def stacks_in(outdir: Path) -> list[str]:
    manifest = json.loads((outdir / "manifest.json").read_text(encoding="utf-8"))
    return sorted(
        name
        for name, artifact in manifest["artifacts"].items()
        if artifact["type"] == "aws:cloudformation:stack"
    )


def test_app_without_a_model_says_in_one_line_how_to_get_one(tmp_path: Path) -> None:
    result = run_app(tmp_path, model_dir=str(tmp_path / "nothing-here"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "make model" in lines[0]
    assert "-c model_key=" in lines[0]
    assert "Traceback" not in result.stderr


def test_app_rejects_an_unknown_stage(tmp_path: Path, fake_model: FakeModel) -> None:
    result = run_app(tmp_path, stage="qa", model_dir=str(fake_model.directory))
    assert result.returncode == 2
    assert "unknown stage 'qa'" in result.stderr
    assert "Traceback" not in result.stderr


def test_app_needs_both_model_key_and_sha256(tmp_path: Path) -> None:
    result = run_app(tmp_path, model_key="models/x/model.onnx")
    assert result.returncode == 2
    assert "model_sha256" in result.stderr


def test_app_serves_a_published_model_for_the_one_stage_asked_for(tmp_path: Path) -> None:
    sha256 = "ab" * 32
    result = run_app(
        tmp_path, stage="dev", model_key=f"models/{sha256}/model.onnx", model_sha256=sha256
    )
    assert result.returncode == 0, result.stderr
    assert stacks_in(tmp_path) == ["ResnetServingDev"]
    template = Template.from_json(
        json.loads((tmp_path / "ResnetServingDev.template.json").read_text(encoding="utf-8"))
    )
    template.resource_count_is("Custom::CDKBucketDeployment", 0)
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Environment": {
                "Variables": Match.object_like(
                    {"MODEL_KEY": f"models/{sha256}/model.onnx", "MODEL_SHA256": sha256}
                )
            }
        },
    )


def email_subscriptions(outdir: Path, stack_id: str) -> list[str]:
    template = json.loads((outdir / f"{stack_id}.template.json").read_text(encoding="utf-8"))
    return [
        resource["Properties"]["Endpoint"]
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::SNS::Subscription"
        and resource["Properties"]["Protocol"] == "email"
    ]


def slack_channels(outdir: Path, stack_id: str) -> list[tuple[str, str]]:
    template = json.loads((outdir / f"{stack_id}.template.json").read_text(encoding="utf-8"))
    return [
        (resource["Properties"]["SlackWorkspaceId"], resource["Properties"]["SlackChannelId"])
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::Chatbot::SlackChannelConfiguration"
    ]


@pytest.mark.slow
def test_alarm_destinations_from_context_apply_to_every_stage_synthesized(
    tmp_path: Path, fake_model: FakeModel
) -> None:
    result = run_app(
        tmp_path,
        model_dir=str(fake_model.directory),
        alarm_email="oncall+resnet@example.com",
        slack_workspace_id="T0123ABCD",
        slack_channel_id="C0123ABCD",
    )
    assert result.returncode == 0, result.stderr
    for stack_id in ("ResnetServingDev", "ResnetServingProd"):
        assert email_subscriptions(tmp_path, stack_id) == ["oncall+resnet@example.com"]
        assert slack_channels(tmp_path, stack_id) == [("T0123ABCD", "C0123ABCD")]


def test_slack_workspace_without_channel_is_refused_in_one_line(
    tmp_path: Path, fake_model: FakeModel
) -> None:
    result = run_app(
        tmp_path, stage="dev", model_dir=str(fake_model.directory), slack_workspace_id="T0123"
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "set both slack_workspace_id and slack_channel_id" in lines[0]


def test_malformed_alarm_email_is_refused_in_one_line(
    tmp_path: Path, fake_model: FakeModel
) -> None:
    result = run_app(
        tmp_path, stage="dev", model_dir=str(fake_model.directory), alarm_email="oncall@example"
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "alarm_email 'oncall@example' is not an e-mail address" in lines[0]
    assert not (tmp_path / "ResnetServingDev.template.json").exists()


@pytest.mark.parametrize("target", ["deploy", "diff"])
def test_make_passes_alarm_email_to_the_cdk_context(target: str, fake_model: FakeModel) -> None:
    def cdk_line(*variables: str) -> str:
        # -n prints the recipe without running it (no AWS, no Docker).
        result = subprocess.run(
            ["make", "-n", target, "STAGE=dev", f"MODEL_DIR={fake_model.directory}", *variables],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return next(line for line in result.stdout.splitlines() if f"cdk {target}" in line)

    assert "-c alarm_email='oncall@example.com'" in cdk_line("ALARM_EMAIL=oncall@example.com")
    assert "alarm_email" not in cdk_line()


def guard_of(template: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The deploy guard's parameter and rule assertions, as synthesized."""
    return (
        template["Parameters"][GUARD_PARAMETER],
        template["Rules"][GUARD_RULE]["Assertions"],
    )


def test_bootstrap_synth_needs_no_model_and_its_serving_templates_cannot_be_deployed(
    tmp_path: Path,
) -> None:
    # What `make bootstrap` runs on a clean checkout: the CLI synthesizes the app first.
    result = run_app(tmp_path, without_model="true")
    assert result.returncode == 0, result.stderr
    assert stacks_in(tmp_path) == ["ResnetServingAccount", "ResnetServingDev", "ResnetServingProd"]
    for stack_id in ("ResnetServingDev", "ResnetServingProd"):
        template = json.loads((tmp_path / f"{stack_id}.template.json").read_text("utf-8"))
        parameter, assertions = guard_of(template)
        # The parameter can only ever be "true" and the rule demands "false": CloudFormation
        # rejects every create, update and change set of this template.
        assert parameter["AllowedValues"] == [parameter["Default"]] == ["true"]
        assert assertions == [
            {
                "Assert": {"Fn::Equals": [{"Ref": GUARD_PARAMETER}, "false"]},
                "AssertDescription": GUARD_MESSAGE,
            }
        ]
        assert "Custom::CDKBucketDeployment" not in json.dumps(template)
    account = (tmp_path / "ResnetServingAccount.template.json").read_text("utf-8")
    assert GUARD_RULE not in account  # deployed by make bootstrap itself


def test_destroy_synth_of_one_stage_needs_no_model(tmp_path: Path) -> None:
    result = run_app(tmp_path, stage="prod", without_model="true")
    assert result.returncode == 0, result.stderr
    assert stacks_in(tmp_path) == ["ResnetServingProd"]


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"without_model": "maybe"}, "-c without_model= takes true or false"),
        ({"without_model": "true", "model_dir": "build/model"}, "takes no model_dir/model_key"),
    ],
)
def test_app_rejects_inconsistent_without_model_context_in_one_line(
    tmp_path: Path, context: dict[str, str], message: str
) -> None:
    result = run_app(tmp_path, **context)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_deployable_templates_carry_no_deploy_guard(synthesized: Any) -> None:
    for raw in synthesized.raw.values():
        assert GUARD_RULE not in raw.get("Rules", {})
        assert GUARD_PARAMETER not in raw.get("Parameters", {})


def test_without_model_flag_parsing() -> None:
    assert [parse_flag("x", v) for v in (None, True, "true", "1", "YES")] == [
        False,
        True,
        True,
        True,
        True,
    ]
    assert [parse_flag("x", v) for v in (False, "false", "0", "no")] == [False] * 4
    with pytest.raises(ModelSourceError, match="takes true or false"):
        parse_flag("x", "sometimes")


def test_default_run_synthesizes_every_stage(synthesized: Any) -> None:
    assert sorted(stack.stack_name for stack in synthesized.stacks.values()) == [
        "ResnetServingDev",
        "ResnetServingProd",
    ]


# --- StageConfig -----------------------------------------------------------------------


def test_stage_configs_are_frozen() -> None:
    with pytest.raises(FrozenInstanceError):
        PROD.memory_mb = 128  # type: ignore[misc]


def test_stages_are_dev_and_prod_with_matching_stack_ids() -> None:
    assert {name: config.stack_id for name, config in STAGES.items()} == {
        "dev": "ResnetServingDev",
        "prod": "ResnetServingProd",
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"timeout_seconds": 29}, "timeout_seconds must be 1-28"),
        ({"provisioned_concurrency_min": 5, "provisioned_concurrency_max": 2}, "provisioned"),
        ({"reserved_concurrency": 1}, "reserved_concurrency must cover"),
        ({"deployment_config": "CANARY_50PERCENT"}, "deployment_config must be one of"),
        ({"architecture": "sparc"}, "architecture"),
        ({"latency_slo_ms": 20_000}, "latency_slo_ms must be below"),
        ({"alarm_email": "oncall"}, "alarm_email 'oncall' is not an e-mail address"),
        ({"alarm_email": "On Call <oncall@example.com>"}, "is not an e-mail address"),
        ({"alarm_email": "a@example.com,b@example.com"}, "is not an e-mail address"),
        ({"slack_channel_id": "C0123ABCD"}, "set both slack_workspace_id and slack_channel_id"),
        (
            {"slack_workspace_id": "t0123abcd", "slack_channel_id": "C0123ABCD"},
            "is not a Slack workspace ID",
        ),
        (
            {"slack_workspace_id": "T0123ABCD", "slack_channel_id": "#alarms"},
            "is not a Slack channel ID",
        ),
    ],
)
def test_stage_config_rejects_inconsistent_values(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(PROD, **change)


def test_a_variant_stage_with_arm64_iam_auth_and_alarm_email_synthesizes(
    tmp_path: Path, fake_model: FakeModel
) -> None:
    variant = StageConfig(
        name="qa",
        architecture="arm64",
        iam_auth=True,
        alarm_email="oncall@example.com",
        provisioned_concurrency_min=1,
        provisioned_concurrency_max=3,
        reserved_concurrency=5,
    )
    app = new_app(outdir=tmp_path)
    (stack,) = add_stages(
        app, stages=[variant], model=ModelSource.from_artifact_dir(fake_model.directory)
    )
    template = Template.from_stack(stack)
    template.has_resource_properties("AWS::Lambda::Function", {"Architectures": ["arm64"]})
    template.all_resources_properties(
        "AWS::ApiGateway::Method",
        Match.object_like({"AuthorizationType": "AWS_IAM", "ApiKeyRequired": True}),
    )
    template.has_resource_properties(
        "AWS::SNS::Subscription", {"Protocol": "email", "Endpoint": "oncall@example.com"}
    )
    assets = json.loads((tmp_path / "ResnetServingQa.assets.json").read_text(encoding="utf-8"))
    (image,) = assets["dockerImages"].values()
    assert image["source"]["platform"] == "linux/arm64"


# --- ModelSource -----------------------------------------------------------------------


def test_model_source_reads_key_and_digest_from_the_manifest(fake_model: FakeModel) -> None:
    source = ModelSource.from_artifact_dir(fake_model.directory)
    assert source.key == f"models/{fake_model.sha256}/model.onnx"
    assert source.sha256 == fake_model.sha256
    assert source.size_bytes == fake_model.size_bytes


def test_model_whose_bytes_do_not_match_the_manifest_is_refused(tmp_path: Path) -> None:
    model = write_fake_model(tmp_path / "m")
    (model.directory / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(ModelSourceError, match="re-export with `make model`"):
        ModelSource.from_artifact_dir(model.directory)


def test_manifest_that_is_not_json_is_refused_with_the_remedy(tmp_path: Path) -> None:
    model = write_fake_model(tmp_path / "m")
    (model.directory / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelSourceError, match=r"is not an exporter manifest.*make model"):
        ModelSource.from_artifact_dir(model.directory)


def test_published_key_must_be_content_addressed_by_its_digest() -> None:
    with pytest.raises(ModelSourceError, match="not content-addressed"):
        ModelSource.published(key="models/latest/model.onnx", sha256="cd" * 32)


def test_published_key_must_sit_under_a_prefix() -> None:
    # The function may read the whole content-addressed prefix; a bare <sha256>/ key would
    # make that the whole bucket.
    sha256 = "cd" * 32
    with pytest.raises(ModelSourceError, match="must sit under a prefix"):
        ModelSource.published(key=f"{sha256}/model.onnx", sha256=sha256)


def test_store_prefix_is_the_folder_above_the_digest(fake_model: FakeModel) -> None:
    sha256 = "cd" * 32
    custom = ModelSource.published(key=f"team/models/{sha256}/model.onnx", sha256=sha256)
    assert custom.store_prefix == "team/models"
    assert ModelSource.from_artifact_dir(fake_model.directory).store_prefix == "models"


def test_published_digest_must_be_sha256_hex() -> None:
    with pytest.raises(ModelSourceError, match="64 lowercase hex"):
        ModelSource.published(key="models/abc/model.onnx", sha256="abc")


def test_ephemeral_storage_floor_is_twice_the_model_plus_headroom() -> None:
    source = ModelSource(key="models/x/model.onnx", sha256="ef" * 32, size_bytes=45 * 1024 * 1024)
    assert source.min_ephemeral_storage_mb == 2 * 45 + 256
    assert DEV.ephemeral_storage_mb >= source.min_ephemeral_storage_mb


def test_prod_is_termination_protected_and_dev_is_not(synthesized: Any) -> None:
    assert synthesized.stacks["prod"].termination_protection is True
    assert synthesized.stacks["dev"].termination_protection is False


def test_stacks_carry_project_and_stage_tags(synthesized: Any) -> None:
    for stage, stack in synthesized.stacks.items():
        manifest = json.loads((synthesized.outdir / "manifest.json").read_text(encoding="utf-8"))
        artifact = manifest["artifacts"][stack.stack_name]
        assert artifact["properties"]["tags"] == {"project": "resnet-serving", "stage": stage}
