"""The model bucket, its access-log bucket, and the upload of the exported model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aws_cdk.assertions import Template
from infra_helpers import EXPECTED, only, resources_of

AES256 = {
    "ServerSideEncryptionConfiguration": [
        {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
    ]
}
ALL_BLOCKED = {
    "BlockPublicAcls": True,
    "BlockPublicPolicy": True,
    "IgnorePublicAcls": True,
    "RestrictPublicBuckets": True,
}


def bucket(raw: dict[str, Any], logical_id: str) -> dict[str, Any]:
    resource = raw["Resources"][logical_id]
    assert resource["Type"] == "AWS::S3::Bucket"
    return resource


def tls_deny_statement_for(raw: dict[str, Any], bucket_logical_id: str) -> dict[str, Any]:
    for policy in resources_of(raw, "AWS::S3::BucketPolicy").values():
        if policy["Properties"]["Bucket"] == {"Ref": bucket_logical_id}:
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
                if statement.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}:
                    return statement
    raise AssertionError(f"no TLS-only deny statement on {bucket_logical_id}")


def test_model_bucket_keeps_its_pinned_logical_id(raw: dict[str, Any]) -> None:
    assert raw["Resources"]["ModelBucket"]["Type"] == "AWS::S3::Bucket"
    assert raw["Resources"]["ModelAccessLogBucket"]["Type"] == "AWS::S3::Bucket"


def test_model_bucket_is_versioned(raw: dict[str, Any]) -> None:
    props = bucket(raw, "ModelBucket")["Properties"]
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}


def test_model_bucket_is_encrypted(raw: dict[str, Any]) -> None:
    assert bucket(raw, "ModelBucket")["Properties"]["BucketEncryption"] == AES256


def test_model_bucket_blocks_every_public_access(raw: dict[str, Any]) -> None:
    props = bucket(raw, "ModelBucket")["Properties"]
    assert props["PublicAccessBlockConfiguration"] == ALL_BLOCKED
    assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}


def test_model_bucket_rejects_non_tls_requests(raw: dict[str, Any]) -> None:
    statement = tls_deny_statement_for(raw, "ModelBucket")
    assert statement["Effect"] == "Deny"
    assert statement["Action"] == "s3:*"
    assert statement["Principal"] == {"AWS": "*"}
    # Both the bucket and every object in it.
    assert statement["Resource"][0] == {"Fn::GetAtt": ["ModelBucket", "Arn"]}
    assert statement["Resource"][1]["Fn::Join"][1][-1] == "/*"


def test_model_bucket_sends_server_access_logs_to_the_log_bucket(raw: dict[str, Any]) -> None:
    logging = bucket(raw, "ModelBucket")["Properties"]["LoggingConfiguration"]
    assert logging["DestinationBucketName"] == {"Ref": "ModelAccessLogBucket"}
    assert logging["LogFilePrefix"]


def test_access_log_bucket_is_itself_private_encrypted_and_tls_only(raw: dict[str, Any]) -> None:
    props = bucket(raw, "ModelAccessLogBucket")["Properties"]
    assert props["BucketEncryption"] == AES256
    assert props["PublicAccessBlockConfiguration"] == ALL_BLOCKED
    assert tls_deny_statement_for(raw, "ModelAccessLogBucket")["Effect"] == "Deny"


def test_access_log_bucket_admits_only_log_delivery_from_the_stacks_buckets(
    raw: dict[str, Any],
) -> None:
    statements = [
        statement
        for policy in resources_of(raw, "AWS::S3::BucketPolicy").values()
        if policy["Properties"]["Bucket"] == {"Ref": "ModelAccessLogBucket"}
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if statement["Effect"] == "Allow"
        and statement.get("Principal") == {"Service": "logging.s3.amazonaws.com"}
    ]
    # Each source bucket may write only under its own prefix (batch buckets: docs/batch.md).
    sources = {
        statement["Condition"]["ArnLike"]["aws:SourceArn"]["Fn::GetAtt"][0]: statement["Resource"][
            "Fn::Join"
        ][1][1]
        for statement in statements
    }
    assert sources == {
        "ModelBucket": "/model-bucket/*",
        "BatchInputBucket": "/batch-input/*",
        "BatchOutputBucket": "/batch-output/*",
    }
    assert len(statements) == len(sources)


def test_noncurrent_model_versions_expire_after_the_stage_days(
    stage: str, raw: dict[str, Any]
) -> None:
    rules = bucket(raw, "ModelBucket")["Properties"]["LifecycleConfiguration"]["Rules"]
    days = [rule["NoncurrentVersionExpiration"]["NoncurrentDays"] for rule in rules]
    assert days == [EXPECTED[stage]["noncurrent_days"]]
    # Current objects (models a rollback may need) never expire.
    assert all("ExpirationInDays" not in rule for rule in rules)


def test_prod_retains_both_buckets_on_destroy(prod: Template) -> None:
    prod.has_resource(
        "AWS::S3::Bucket", {"DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain"}
    )
    assert all(
        resource["DeletionPolicy"] == "Retain"
        for resource in prod.find_resources("AWS::S3::Bucket").values()
    )
    prod.resource_count_is("Custom::S3AutoDeleteObjects", 0)


def test_dev_empties_and_deletes_both_buckets_on_destroy(dev: Template) -> None:
    buckets = dev.find_resources("AWS::S3::Bucket")
    assert {resource["DeletionPolicy"] for resource in buckets.values()} == {"Delete"}
    auto_delete = dev.find_resources("Custom::S3AutoDeleteObjects")
    assert {str(r["Properties"]["BucketName"]["Ref"]) for r in auto_delete.values()} == set(buckets)


def test_buckets_have_no_hard_coded_names(raw: dict[str, Any]) -> None:
    assert all(
        "BucketName" not in resource["Properties"]
        for resource in resources_of(raw, "AWS::S3::Bucket").values()
    )


def test_exported_model_is_uploaded_to_its_content_addressed_prefix(
    template: Template, fake_model: Any
) -> None:
    template.has_resource_properties(
        "Custom::CDKBucketDeployment",
        {
            "DestinationBucketName": {"Ref": "ModelBucket"},
            "DestinationBucketKeyPrefix": f"models/{fake_model.sha256}",
            # Old models stay for rollbacks.
            "RetainOnDelete": True,
            "Prune": False,
        },
    )


def test_upload_carries_only_the_model_and_its_manifest(synthesized: Any, fake_model: Any) -> None:
    staged = [
        path
        for path in Path(synthesized.outdir).glob("asset.*")
        if path.is_dir() and (path / "model.onnx").exists()
    ]
    assert len(staged) == 1
    assert sorted(p.name for p in staged[0].iterdir()) == ["manifest.json", "model.onnx"]
    assert (staged[0] / "model.onnx").read_bytes() == (
        fake_model.directory / "model.onnx"
    ).read_bytes()


def test_function_waits_for_the_model_upload(raw: dict[str, Any]) -> None:
    upload_id, _ = only(raw, "Custom::CDKBucketDeployment")
    assert upload_id in raw["Resources"]["PredictFunction"]["DependsOn"]


def test_upload_provider_logs_to_a_group_with_the_stage_retention(
    stage: str, raw: dict[str, Any]
) -> None:
    providers = [
        resource["Properties"]
        for resource in resources_of(raw, "AWS::Lambda::Function").values()
        if resource["Properties"].get("Layers")  # the provider carries the AWS CLI layer
    ]
    assert len(providers) == 1
    group_id = providers[0]["LoggingConfig"]["LogGroup"]["Ref"]
    retention = raw["Resources"][group_id]["Properties"]["RetentionInDays"]
    assert retention == EXPECTED[stage]["log_retention_days"]
