"""The predict function, its role, alias ``live`` and provisioned concurrency."""

from __future__ import annotations

import fnmatch
import json
from dataclasses import replace
from typing import Any

import pytest
from aws_cdk.assertions import Template
from infra_helpers import (
    EXPECTED,
    FakeModel,
    dumps,
    logical_id_of,
    only,
    resources_of,
    write_fake_model,
)

from stacks.app_builder import add_stages, new_app
from stacks.config import PROD
from stacks.model_source import ModelSource


def function(raw: dict[str, Any]) -> dict[str, Any]:
    resource = raw["Resources"]["PredictFunction"]
    assert resource["Type"] == "AWS::Lambda::Function"
    return dict(resource["Properties"])


def alias(raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return only(raw, "AWS::Lambda::Alias")


def test_function_keeps_its_pinned_logical_id(raw: dict[str, Any]) -> None:
    assert raw["Resources"]["PredictFunction"]["Properties"]["PackageType"] == "Image"


def test_function_is_the_container_image_built_from_lambda_src(
    synthesized: Any, stage: str, raw: dict[str, Any]
) -> None:
    image_uri = function(raw)["Code"]["ImageUri"]["Fn::Sub"]
    assert "container-assets" in image_uri
    stack_id = EXPECTED[stage]["stack_id"]
    manifest = (synthesized.outdir / f"{stack_id}.assets.json").read_text(encoding="utf-8")
    assert '"directory": "asset.' in manifest
    images = json.loads(manifest)["dockerImages"]
    assert len(images) == 1
    (image,) = images.values()
    assert image["source"]["platform"] == "linux/amd64"
    staged = synthesized.outdir / image["source"]["directory"]
    assert (staged / "Dockerfile").is_file()
    assert (staged / "handler.py").is_file()


def test_function_runs_on_the_stage_architecture(raw: dict[str, Any]) -> None:
    assert function(raw)["Architectures"] == ["x86_64"]


def test_function_memory_timeout_and_storage_follow_the_stage(
    stage: str, raw: dict[str, Any]
) -> None:
    props = function(raw)
    expected = EXPECTED[stage]
    assert props["MemorySize"] == expected["memory_mb"]
    assert props["Timeout"] == expected["timeout_s"]
    assert props["EphemeralStorage"] == {"Size": expected["ephemeral_mb"]}


def test_function_timeout_stays_under_api_gateways_29_seconds(raw: dict[str, Any]) -> None:
    assert function(raw)["Timeout"] < 29


def test_function_reserved_concurrency_follows_the_stage(stage: str, raw: dict[str, Any]) -> None:
    assert (
        function(raw).get("ReservedConcurrentExecutions") == EXPECTED[stage]["reserved_concurrency"]
    )


def test_function_has_active_xray_tracing(raw: dict[str, Any]) -> None:
    assert function(raw)["TracingConfig"] == {"Mode": "Active"}


def test_function_logs_to_its_own_group_with_the_stage_retention(
    stage: str, raw: dict[str, Any]
) -> None:
    group_id = function(raw)["LoggingConfig"]["LogGroup"]["Ref"]
    group = raw["Resources"][group_id]
    assert group["Type"] == "AWS::Logs::LogGroup"
    assert group["Properties"]["RetentionInDays"] == EXPECTED[stage]["log_retention_days"]
    assert group["DeletionPolicy"] == EXPECTED[stage]["deletion_policy"]


def test_function_environment_matches_the_manifest(
    stage: str, raw: dict[str, Any], fake_model: FakeModel
) -> None:
    assert function(raw)["Environment"]["Variables"] == {
        "MODEL_BUCKET": {"Ref": "ModelBucket"},
        "MODEL_KEY": f"models/{fake_model.sha256}/model.onnx",
        "MODEL_SHA256": fake_model.sha256,
        "MODEL_CACHE_DIR": "/tmp/model-cache",
        "POWERTOOLS_SERVICE_NAME": EXPECTED[stage]["service"],
        "POWERTOOLS_METRICS_NAMESPACE": "ResnetServing",
        "POWERTOOLS_LOG_LEVEL": EXPECTED[stage]["log_level"],
    }


def test_function_has_no_hard_coded_name(raw: dict[str, Any]) -> None:
    assert "FunctionName" not in function(raw)


def function_statements(raw: dict[str, Any]) -> list[dict[str, Any]]:
    role_id = logical_id_of(function(raw)["Role"])
    assert raw["Resources"][role_id]["Properties"].get("ManagedPolicyArns") is None
    return [
        statement
        for policy in resources_of(raw, "AWS::IAM::Policy").values()
        if {"Ref": role_id} in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]


MODELS_UNDER_BUCKET = {"Fn::Join": ["", [{"Fn::GetAtt": ["ModelBucket", "Arn"]}, "/models/*"]]}


def s3_statements(raw: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        s for s in function_statements(raw) if any(a.startswith("s3:") for a in _list(s["Action"]))
    ]


def test_function_reads_only_content_addressed_models_and_nothing_else_in_s3(
    raw: dict[str, Any],
) -> None:
    # One statement, one action, one resource: objects under models/ in the model bucket.
    # Not the bucket, not every object, no List/Put/Delete.
    (statement,) = s3_statements(raw)
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == "s3:GetObject"
    assert statement["Resource"] == MODELS_UNDER_BUCKET


def readable_keys_pattern(raw: dict[str, Any]) -> str:
    """The object-key glob the function's single s3:GetObject grant allows in ModelBucket."""
    (statement,) = s3_statements(raw)
    bucket_arn, suffix = statement["Resource"]["Fn::Join"][1]
    assert bucket_arn == {"Fn::GetAtt": ["ModelBucket", "Arn"]}
    assert suffix.startswith("/")
    return str(suffix[1:])


def test_a_new_models_template_still_lets_the_previous_version_read_its_model(
    tmp_path_factory: pytest.TempPathFactory, synthesized: Any, fake_model: FakeModel
) -> None:
    # During a canary or after a rollback the previous version runs with the new template's
    # role (all versions share it), so its MODEL_KEY must stay readable.
    other = write_fake_model(tmp_path_factory.mktemp("next-model"), b"the next model")
    app = new_app(outdir=tmp_path_factory.mktemp("cdk-out-next"))
    (stack,) = add_stages(app, stages=[PROD], model=ModelSource.from_artifact_dir(other.directory))
    after = Template.from_stack(stack).to_json()
    before_key = function(synthesized.raw["prod"])["Environment"]["Variables"]["MODEL_KEY"]
    after_key = function(after)["Environment"]["Variables"]["MODEL_KEY"]
    assert before_key == f"models/{fake_model.sha256}/model.onnx" != after_key
    pattern = readable_keys_pattern(after)
    assert fnmatch.fnmatchcase(before_key, pattern)
    assert fnmatch.fnmatchcase(after_key, pattern)
    assert not fnmatch.fnmatchcase("uploads/other.bin", pattern)


def test_function_writes_only_to_its_own_log_group(raw: dict[str, Any]) -> None:
    group_id = function(raw)["LoggingConfig"]["LogGroup"]["Ref"]
    logs = [
        s
        for s in function_statements(raw)
        if any(a.startswith("logs:") for a in _list(s["Action"]))
    ]
    assert logs == [
        {
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Effect": "Allow",
            "Resource": {"Fn::GetAtt": [group_id, "Arn"]},
        }
    ]


def _list(value: Any) -> list[str]:
    return value if isinstance(value, list) else [value]


def test_alias_live_points_at_the_published_version(raw: dict[str, Any]) -> None:
    _, resource = alias(raw)
    props = resource["Properties"]
    assert props["Name"] == "live"
    assert props["FunctionName"] == {"Ref": "PredictFunction"}
    version_id = logical_id_of(props["FunctionVersion"])
    version = raw["Resources"][version_id]
    assert version["Type"] == "AWS::Lambda::Version"
    assert version["Properties"]["FunctionName"] == {"Ref": "PredictFunction"}
    # Old versions stay so CodeDeploy can roll back to them.
    assert version["DeletionPolicy"] == "Retain"


def test_prod_alias_has_provisioned_concurrency(prod: Template) -> None:
    prod.has_resource_properties(
        "AWS::Lambda::Alias",
        {"ProvisionedConcurrencyConfig": {"ProvisionedConcurrentExecutions": 2}},
    )


def test_dev_alias_has_no_provisioned_concurrency(synthesized: Any) -> None:
    raw = synthesized.raw["dev"]
    _, resource = alias(raw)
    assert "ProvisionedConcurrencyConfig" not in resource["Properties"]
    assert resources_of(raw, "AWS::ApplicationAutoScaling::ScalableTarget") == {}


def test_prod_provisioned_concurrency_autoscales_between_stage_min_and_max(
    prod: Template,
) -> None:
    targets = prod.find_resources("AWS::ApplicationAutoScaling::ScalableTarget")
    assert len(targets) == 1
    (target,) = targets.values()
    props = target["Properties"]
    assert (props["MinCapacity"], props["MaxCapacity"]) == (2, 20)
    assert props["ScalableDimension"] == "lambda:function:ProvisionedConcurrency"
    assert props["ResourceId"]["Fn::Join"][1][-1] == ":live"


def test_prod_provisioned_concurrency_tracks_utilization(prod: Template) -> None:
    prod.has_resource_properties(
        "AWS::ApplicationAutoScaling::ScalingPolicy",
        {
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": {
                "PredefinedMetricSpecification": {
                    "PredefinedMetricType": "LambdaProvisionedConcurrencyUtilization"
                },
                "TargetValue": 0.7,
            },
        },
    )


def test_a_new_model_publishes_a_new_version(
    tmp_path_factory: pytest.TempPathFactory, synthesized: Any, fake_model: FakeModel
) -> None:

    other = write_fake_model(tmp_path_factory.mktemp("other-model"), b"a retrained model")
    app = new_app(outdir=tmp_path_factory.mktemp("cdk-out-other"))
    (stack,) = add_stages(app, stages=[PROD], model=ModelSource.from_artifact_dir(other.directory))
    retrained = Template.from_stack(stack).to_json()
    before = alias(synthesized.raw["prod"])[1]["Properties"]["FunctionVersion"]
    after = alias(retrained)[1]["Properties"]["FunctionVersion"]
    assert logical_id_of(before) != logical_id_of(after)
    assert (
        retrained["Resources"]["PredictFunction"]["Properties"]["Environment"]["Variables"][
            "MODEL_SHA256"
        ]
        == other.sha256
    )

    # The bucket is the same resource; only BucketDeployment's ownership tag moves with the
    # new prefix (an in-place tag update).
    def without_tags(raw: dict[str, Any]) -> str:
        props = dict(raw["Resources"]["ModelBucket"]["Properties"])
        props.pop("Tags", None)
        return dumps(props)

    assert without_tags(retrained) == without_tags(synthesized.raw["prod"])


def test_ephemeral_storage_too_small_for_the_model_fails_synth(fake_model: FakeModel) -> None:
    huge = ModelSource(
        key=f"models/{fake_model.sha256}/model.onnx",
        sha256=fake_model.sha256,
        size_bytes=600 * 1024 * 1024,
    )
    app = new_app()
    with pytest.raises(ValueError, match="ephemeral_storage_mb=1024 cannot hold"):
        add_stages(app, stages=[replace(PROD, ephemeral_storage_mb=1024)], model=huge)
