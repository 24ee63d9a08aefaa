"""Batch predictions: the Distributed Map state machine (read from the rendered DefinitionString),
the batch function (same image, command batch.handler), buckets and least-privilege IAM."""

from __future__ import annotations

import fnmatch
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import Stack
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk.assertions import Annotations, Match, Template
from infra_helpers import FakeModel, dumps, logical_id_of, only, resources_of

from scripts import image_check
from stacks.app_builder import add_stages, new_app
from stacks.batch import RESULT_WRITER_V2_FLAG
from stacks.config import DEV, StageConfig
from stacks.model_source import ModelSource

ROOT = Path(__file__).resolve().parents[2]
# Written out by hand (not read from stacks/config.py): a config edit must be acknowledged here.
BATCH_EXPECTED: dict[str, dict[str, Any]] = {
    "dev": {"memory_mb": 3008, "timeout_s": 60, "reserved": None, "max_concurrency": 5,
            "items_per_batch": 100, "tolerated_failure_percentage": 5, "results_days": 14},
    "prod": {"memory_mb": 3538, "timeout_s": 60, "reserved": 50, "max_concurrency": 50,
             "items_per_batch": 100, "tolerated_failure_percentage": 5, "results_days": 90},
}  # fmt: skip
MAP_STATES = {"ListedObjects": "prefix", "JsonlManifest": "jsonl", "CsvManifest": "csv"}
STEP_FUNCTIONS_PAYLOAD_LIMIT = 256 * 1024


# ---------------------------------------------------------------- the rendered definition


def _placeholder(token: dict[str, Any]) -> str:
    if "Ref" in token:
        return f"<Ref:{token['Ref']}>"
    if "Fn::GetAtt" in token:
        return f"<GetAtt:{'.'.join(token['Fn::GetAtt'])}>"
    raise AssertionError(f"unexpected token in the definition: {token}")


def definition_of(template: dict[str, Any]) -> dict[str, Any]:
    """The ASL exactly as CloudFormation will receive it, tokens shown as <Ref:X>/<GetAtt:X.Y>."""
    _, machine = only(template, "AWS::StepFunctions::StateMachine")
    parts = machine["Properties"]["DefinitionString"]["Fn::Join"][1]
    text = "".join(p if isinstance(p, str) else _placeholder(p) for p in parts)
    return json.loads(text)


@pytest.fixture
def asl(raw: dict[str, Any]) -> dict[str, Any]:
    return definition_of(raw)


def maps(asl: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: state for name, state in asl["States"].items() if state["Type"] == "Map"}


def test_every_map_state_writes_its_results_to_the_output_bucket(asl: dict[str, Any]) -> None:
    # aws-cdk-lib drops ResultWriter silently for one result_writer/flag combination: the
    # rendered definition is the only proof it is there.
    assert set(maps(asl)) == set(MAP_STATES)
    for state in maps(asl).values():
        assert state["ResultWriter"] == {
            "Resource": "arn:<Ref:AWS::Partition>:states:::s3:putObject",
            "Parameters": {"Bucket": "<Ref:BatchOutputBucket>", "Prefix": "results/map-runs"},
        }
        assert state["ResultPath"] == "$.map"


def test_each_source_reads_items_with_its_item_reader(asl: dict[str, Any]) -> None:
    m = maps(asl)
    assert m["ListedObjects"]["ItemReader"] == {
        "Resource": "arn:<Ref:AWS::Partition>:states:::s3:listObjectsV2",
        "Parameters": {"Bucket": "<Ref:BatchInputBucket>", "Prefix.$": "$.prefix"},
    }
    assert m["JsonlManifest"]["ItemReader"] == {
        "Resource": "arn:<Ref:AWS::Partition>:states:::s3:getObject",
        "ReaderConfig": {"InputType": "JSONL"},
        "Parameters": {"Bucket": "<Ref:BatchInputBucket>", "Key.$": "$.manifest_key"},
    }
    assert m["CsvManifest"]["ItemReader"] == {
        "Resource": "arn:<Ref:AWS::Partition>:states:::s3:getObject",
        "ReaderConfig": {"InputType": "CSV", "CSVHeaderLocation": "FIRST_ROW"},
        "Parameters": {"Bucket": "<Ref:BatchInputBucket>", "Key.$": "$.manifest_key"},
    }


def test_the_execution_input_chooses_the_reader_and_anything_else_fails(
    asl: dict[str, Any],
) -> None:
    assert asl["StartAt"] == "Source"
    choice = asl["States"]["Source"]
    routes = {
        c["Next"]: {(v["Variable"], next(k for k in v if k != "Variable")) for v in c["And"]}
        for c in choice["Choices"]
    }
    assert routes == {
        "ListedObjects": {("$.source", "StringEquals"), ("$.prefix", "IsString")},
        "JsonlManifest": {("$.source", "StringEquals"), ("$.manifest_key", "IsString")},
        "CsvManifest": {("$.source", "StringEquals"), ("$.manifest_key", "IsString")},
    }
    sources = {c["Next"]: c["And"][0]["StringEquals"] for c in choice["Choices"]}
    assert sources == MAP_STATES
    unknown = asl["States"][choice["Default"]]
    assert unknown["Type"] == "Fail"
    assert unknown["Error"] == "BatchInputError"
    for state in maps(asl).values():
        assert asl["States"][state["Next"]]["Type"] == "Succeed"


def test_item_batcher_sends_sized_batches_with_where_to_read_and_write(
    stage: str, asl: dict[str, Any]
) -> None:
    expected = BATCH_EXPECTED[stage]
    for state in maps(asl).values():
        batcher = state["ItemBatcher"]
        assert batcher["MaxItemsPerBatch"] == expected["items_per_batch"]
        assert batcher["BatchInput"] == {
            "bucket": "<Ref:BatchInputBucket>",
            "output_bucket": "<Ref:BatchOutputBucket>",
            "output_prefix": "results/",
            "run_id.$": "$$.Execution.Name",
        }
        # Worst case: S3 keys of 1,024 bytes plus the listing's other fields (~200 bytes) per
        # item, and the BatchInput, must fit the 256 KiB child workflow input.
        worst = batcher["MaxItemsPerBatch"] * (1024 + 200) + 1024
        assert worst < STEP_FUNCTIONS_PAYLOAD_LIMIT
        assert batcher["MaxInputBytesPerBatch"] <= STEP_FUNCTIONS_PAYLOAD_LIMIT - 32 * 1024


def test_children_are_express_with_the_stage_tolerance_and_a_label(
    stage: str, asl: dict[str, Any]
) -> None:
    for name, state in maps(asl).items():
        assert state["ItemProcessor"]["ProcessorConfig"] == {
            "Mode": "DISTRIBUTED",
            "ExecutionType": "EXPRESS",
        }
        expected = BATCH_EXPECTED[stage]["tolerated_failure_percentage"]
        assert state["ToleratedFailurePercentage"] == expected
        assert state["Label"] == name


def test_map_concurrency_never_exceeds_the_batch_functions_reservation(
    stage: str, raw: dict[str, Any], asl: dict[str, Any]
) -> None:
    reserved = raw["Resources"]["BatchFunction"]["Properties"].get("ReservedConcurrentExecutions")
    assert reserved == BATCH_EXPECTED[stage]["reserved"]
    for state in maps(asl).values():
        # Without a reservation MaxConcurrency alone bounds the run: each child invokes once.
        assert state["MaxConcurrency"] == BATCH_EXPECTED[stage]["max_concurrency"]
        assert 1 <= state["MaxConcurrency"] <= (reserved or state["MaxConcurrency"])


def test_dev_reserves_no_concurrency_so_it_deploys_on_a_new_accounts_quota(
    synthesized: Any,
) -> None:
    # Lambda keeps 100 executions unreserved: any reservation needs a quota above 100, and new
    # accounts start lower (docs/infrastructure.md, "First deploy in a new account").
    functions = resources_of(synthesized.raw["dev"], "AWS::Lambda::Function")
    assert {"PredictFunction", "BatchFunction"} <= set(functions)
    reserving = {
        name: props["Properties"]["ReservedConcurrentExecutions"]
        for name, props in functions.items()
        if "ReservedConcurrentExecutions" in props["Properties"]
    }
    assert reserving == {}


def _task(state: dict[str, Any]) -> dict[str, Any]:
    processor = state["ItemProcessor"]
    task = processor["States"][processor["StartAt"]]
    assert task.get("End") is True
    return dict(task)


def test_each_batch_invokes_the_batch_function_with_the_whole_batch(asl: dict[str, Any]) -> None:
    for state in maps(asl).values():
        task = _task(state)
        assert task["Resource"] == "arn:<Ref:AWS::Partition>:states:::lambda:invoke"
        assert task["Parameters"] == {
            "FunctionName": "<GetAtt:BatchFunction.Arn>",
            "Payload.$": "$",
        }
        assert task["OutputPath"] == "$.Payload"


def test_batches_retry_lambda_service_errors_with_backoff_and_the_workers_own(
    asl: dict[str, Any],
) -> None:
    for state in maps(asl).values():
        service, worker = _task(state)["Retry"]
        assert service == {
            "ErrorEquals": [
                "Lambda.ServiceException",
                "Lambda.AWSLambdaException",
                "Lambda.SdkClientException",
                "Lambda.TooManyRequestsException",
            ],
            "IntervalSeconds": 2,
            "MaxAttempts": 6,
            "BackoffRate": 2,
            "JitterStrategy": "FULL",
        }
        assert worker["ErrorEquals"] == ["BatchRetryableError"]
        assert worker["BackoffRate"] == 2
        assert worker["MaxAttempts"] >= 1
    # The name the worker raises (the Lambda error type Step Functions matches on).
    source = (ROOT / "lambda_src" / "batch.py").read_text(encoding="utf-8")
    assert "class BatchRetryableError(Exception):" in source


def test_a_run_is_bounded_in_time(raw: dict[str, Any], asl: dict[str, Any]) -> None:
    assert asl["TimeoutSeconds"] == 24 * 3600
    function = raw["Resources"]["BatchFunction"]["Properties"]
    # Both attempts of the worker's retry fit an EXPRESS child's 5 minutes.
    worker_retry = _task(next(iter(maps(asl).values())))["Retry"][1]
    attempts = 1 + worker_retry["MaxAttempts"]
    assert attempts * function["Timeout"] < 300


# ---------------------------------------------------------------- the batch function


def test_batch_function_is_the_predict_image_with_command_batch_handler(
    raw: dict[str, Any],
) -> None:
    batch = raw["Resources"]["BatchFunction"]["Properties"]
    predict = raw["Resources"]["PredictFunction"]["Properties"]
    assert batch["PackageType"] == "Image"
    assert batch["Code"]["ImageUri"] == predict["Code"]["ImageUri"]
    assert batch["ImageConfig"] == {"Command": ["batch.handler"]}
    assert "ImageConfig" not in predict  # the image's own CMD, handler.handler
    assert batch["ImageConfig"]["Command"][0] in image_check.COMMAND_OVERRIDES
    assert batch["Architectures"] == predict["Architectures"]


def test_batch_function_sizing_and_tracing_follow_the_stage(
    stage: str, raw: dict[str, Any]
) -> None:
    props = raw["Resources"]["BatchFunction"]["Properties"]
    expected = BATCH_EXPECTED[stage]
    assert props["MemorySize"] == expected["memory_mb"]
    assert props["Timeout"] == expected["timeout_s"]
    assert props["TracingConfig"] == {"Mode": "Active"}
    assert "FunctionName" not in props


def test_batch_function_loads_the_same_model_as_the_predict_function(
    stage: str, raw: dict[str, Any]
) -> None:
    batch = raw["Resources"]["BatchFunction"]["Properties"]["Environment"]["Variables"]
    predict = raw["Resources"]["PredictFunction"]["Properties"]["Environment"]["Variables"]
    for name in ("MODEL_BUCKET", "MODEL_KEY", "MODEL_SHA256", "MODEL_CACHE_DIR"):
        assert batch[name] == predict[name]
    assert batch["POWERTOOLS_SERVICE_NAME"] == f"resnet-serving-{stage}-batch"
    assert batch["POWERTOOLS_METRICS_NAMESPACE"] == "ResnetServing"
    assert {"BATCH_FETCH_THREADS", "BATCH_SUB_BATCH"} <= set(batch)


def _statements(raw: dict[str, Any], role_id: str) -> list[dict[str, Any]]:
    return [
        statement
        for policy in resources_of(raw, "AWS::IAM::Policy").values()
        if {"Ref": role_id} in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]


def _arn(bucket_id: str, suffix: str = "") -> Any:
    arn = {"Fn::GetAtt": [bucket_id, "Arn"]}
    return {"Fn::Join": ["", [arn, suffix]]} if suffix else arn


def _canonical(statements: list[dict[str, Any]]) -> list[str]:
    out = []
    for s in statements:
        s = dict(s)
        s.pop("Sid", None)
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        s["Action"] = sorted(actions)
        out.append(dumps(s))
    return sorted(out)


def test_batch_function_role_grants_exactly_its_reads_and_writes(raw: dict[str, Any]) -> None:
    props = raw["Resources"]["BatchFunction"]["Properties"]
    role_id = logical_id_of(props["Role"])
    assert raw["Resources"][role_id]["Properties"].get("ManagedPolicyArns") is None
    log_group = props["LoggingConfig"]["LogGroup"]["Ref"]
    expected = [
        {
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Effect": "Allow",
            "Resource": {"Fn::GetAtt": [log_group, "Arn"]},
        },
        {
            # Every content-addressed model, as the predict function (next test).
            "Action": "s3:GetObject",
            "Effect": "Allow",
            "Resource": _arn("ModelBucket", "/models/*"),
        },
        {"Action": "s3:GetObject", "Effect": "Allow", "Resource": _arn("BatchInputBucket", "/*")},
        {"Action": "s3:ListBucket", "Effect": "Allow", "Resource": _arn("BatchInputBucket")},
        {
            "Action": "s3:PutObject",
            "Effect": "Allow",
            "Resource": _arn("BatchOutputBucket", "/results/*"),
        },
        {
            "Action": ["xray:PutTelemetryRecords", "xray:PutTraceSegments"],
            "Effect": "Allow",
            "Resource": "*",
        },
    ]
    assert _canonical(_statements(raw, role_id)) == _canonical(expected)


def _model_bucket_statements(raw: dict[str, Any], function_id: str) -> list[dict[str, Any]]:
    role_id = logical_id_of(raw["Resources"][function_id]["Properties"]["Role"])
    return [
        statement
        for statement in _statements(raw, role_id)
        if "ModelBucket" in dumps(statement["Resource"])
    ]


def test_batch_function_reads_models_exactly_as_the_predict_function(
    raw: dict[str, Any], fake_model: FakeModel
) -> None:
    # One grant for both (stacks/model_store.py grant_read_models): during a stack update the
    # batch function's new MODEL_KEY and its policy change in separate steps, so a grant on
    # only the deployed key would 403 a cold start in between.
    batch = _model_bucket_statements(raw, "BatchFunction")
    assert batch == _model_bucket_statements(raw, "PredictFunction")
    (statement,) = batch
    suffix = statement["Resource"]["Fn::Join"][1][1]
    key = raw["Resources"]["BatchFunction"]["Properties"]["Environment"]["Variables"]["MODEL_KEY"]
    assert fnmatch.fnmatchcase(key, suffix.lstrip("/"))
    assert fnmatch.fnmatchcase(f"models/{'0' * 64}/model.onnx", suffix.lstrip("/"))
    assert key == f"models/{fake_model.sha256}/model.onnx"


def test_state_machine_role_grants_exactly_what_the_map_needs(raw: dict[str, Any]) -> None:
    machine_id, machine = only(raw, "AWS::StepFunctions::StateMachine")
    role_id = logical_id_of(machine["Properties"]["RoleArn"])
    executions = [
        "arn:",
        {"Ref": "AWS::Partition"},
        ":states:",
        {"Ref": "AWS::Region"},
        ":",
        {"Ref": "AWS::AccountId"},
        ":execution:",
        {"Fn::Select": [6, {"Fn::Split": [":", {"Ref": machine_id}]}]},
    ]
    expected = [
        {
            "Action": [
                "s3:AbortMultipartUpload",
                "s3:GetObject",
                "s3:ListMultipartUploadParts",
                "s3:PutObject",
            ],
            "Effect": "Allow",
            "Resource": _arn("BatchOutputBucket", "/results/map-runs/*"),
        },
        {"Action": "s3:ListBucket", "Effect": "Allow", "Resource": _arn("BatchInputBucket")},
        {
            "Action": "s3:GetObject",
            "Effect": "Allow",
            "Resource": _arn("BatchInputBucket", "/manifests/*"),
        },
        {
            "Action": "lambda:InvokeFunction",
            "Effect": "Allow",
            "Resource": [
                {"Fn::GetAtt": ["BatchFunction", "Arn"]},
                {"Fn::Join": ["", [{"Fn::GetAtt": ["BatchFunction", "Arn"]}, ":*"]]},
            ],
        },
        {
            "Action": [
                "logs:CreateLogDelivery",
                "logs:DeleteLogDelivery",
                "logs:DescribeLogGroups",
                "logs:DescribeResourcePolicies",
                "logs:GetLogDelivery",
                "logs:ListLogDeliveries",
                "logs:PutResourcePolicy",
                "logs:UpdateLogDelivery",
                "xray:GetSamplingRules",
                "xray:GetSamplingTargets",
                "xray:PutTelemetryRecords",
                "xray:PutTraceSegments",
            ],
            "Effect": "Allow",
            "Resource": "*",
        },
        {"Action": "states:StartExecution", "Effect": "Allow", "Resource": {"Ref": machine_id}},
        {
            "Action": ["states:DescribeExecution", "states:StopExecution"],
            "Effect": "Allow",
            "Resource": {"Fn::Join": ["", [*executions, ":*"]]},
        },
        {
            "Action": "states:RedriveExecution",
            "Effect": "Allow",
            "Resource": [
                {"Fn::Join": ["", [*executions, f"/{label}:*"]]}
                for label in ("CsvManifest", "JsonlManifest", "ListedObjects")
            ],
        },
    ]
    assert _canonical(_statements(raw, role_id)) == _canonical(expected)


def test_state_machine_logs_every_event_and_traces_with_xray(
    stage: str, raw: dict[str, Any]
) -> None:
    _, machine = only(raw, "AWS::StepFunctions::StateMachine")
    props = machine["Properties"]
    assert props["StateMachineType"] == "STANDARD"
    assert props["TracingConfiguration"] == {"Enabled": True}
    logging = props["LoggingConfiguration"]
    assert logging["Level"] == "ALL"
    assert logging["IncludeExecutionData"] is False
    group_id = logging["Destinations"][0]["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0]
    expected_days = {"dev": 7, "prod": 90}[stage]
    assert raw["Resources"][group_id]["Properties"]["RetentionInDays"] == expected_days


# ---------------------------------------------------------------- buckets and outputs


@pytest.mark.parametrize(
    ("bucket_id", "log_prefix"),
    [("BatchInputBucket", "batch-input/"), ("BatchOutputBucket", "batch-output/")],
)
def test_batch_buckets_are_encrypted_private_logged_and_tls_only(
    template: Template, raw: dict[str, Any], bucket_id: str, log_prefix: str
) -> None:
    props = raw["Resources"][bucket_id]["Properties"]
    assert props["BucketEncryption"] == {
        "ServerSideEncryptionConfiguration": [
            {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
        ]
    }
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert props["LoggingConfiguration"] == {
        "DestinationBucketName": {"Ref": "ModelAccessLogBucket"},
        "LogFilePrefix": log_prefix,
    }
    template.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "Bucket": {"Ref": bucket_id},
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Effect": "Deny",
                                "Action": "s3:*",
                                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                            }
                        )
                    ]
                )
            },
        },
    )


def test_results_expire_after_the_stage_retention(stage: str, raw: dict[str, Any]) -> None:
    rules = raw["Resources"]["BatchOutputBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    (rule,) = [r for r in rules if r.get("Prefix") == "results/"]
    assert rule["ExpirationInDays"] == BATCH_EXPECTED[stage]["results_days"]
    assert rule["Status"] == "Enabled"


def test_outputs_tell_the_client_where_to_start_and_read(raw: dict[str, Any]) -> None:
    outputs = raw["Outputs"]
    machine_id, _ = only(raw, "AWS::StepFunctions::StateMachine")
    assert outputs["BatchStateMachineArn"]["Value"] == {"Ref": machine_id}
    assert outputs["BatchInputBucketName"]["Value"] == {"Ref": "BatchInputBucket"}
    assert outputs["BatchOutputBucketName"]["Value"] == {"Ref": "BatchOutputBucket"}
    assert outputs["BatchInputPrefix"]["Value"] == "/"


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_max_concurrency": 11, "batch_reserved_concurrency": 10}, "batch_max_concurrency"),
        ({"batch_max_concurrency": 0, "batch_reserved_concurrency": None}, "batch_max_concurrency"),
        ({"batch_max_concurrency": 1, "batch_reserved_concurrency": 0}, "batch_max_concurrency"),
        ({"batch_items_per_batch": 500}, "256 KiB"),
        ({"batch_timeout_seconds": 91}, "batch_timeout_seconds must be 1-90"),
        ({"batch_input_prefix": "photos"}, "end with '/'"),
        ({"batch_tolerated_failure_percentage": 101}, "0-100"),
    ],
)
def test_stage_config_rejects_inconsistent_batch_values(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        replace(DEV, **change)


@pytest.fixture(scope="module")
def variants(
    tmp_path_factory: pytest.TempPathFactory, fake_model: FakeModel
) -> dict[str, tuple[Stack, dict[str, Any]]]:
    """Two more stages: batch over existing buckets under a prefix, and batch switched off."""
    existing = StageConfig(
        name="shared",
        batch_input_bucket_name="team-photos",
        batch_input_prefix="camera/",
        batch_output_bucket_name="team-results",
    )
    off = StageConfig(name="nobatch", batch_enabled=False)
    outdir = tmp_path_factory.mktemp("cdk-out-batch")
    app = new_app(outdir=outdir)
    stacks = add_stages(
        app, stages=[existing, off], model=ModelSource.from_artifact_dir(fake_model.directory)
    )
    assembly = app.synth()
    return {
        stack.config.name: (stack, assembly.get_stack_by_name(stack.stack_name).template)
        for stack in stacks
    }


def _imported(name: str, suffix: str = "") -> dict[str, Any]:
    return {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, f":s3:::{name}{suffix}"]]}


def test_existing_buckets_are_used_and_iam_is_scoped_to_the_prefix(
    variants: dict[str, tuple[Stack, dict[str, Any]]],
) -> None:
    stack, raw = variants["shared"]
    assert not {"BatchInputBucket", "BatchOutputBucket"} & set(raw["Resources"])
    function_role = logical_id_of(raw["Resources"]["BatchFunction"]["Properties"]["Role"])
    statements = _statements(raw, function_role)
    assert {
        "Action": "s3:GetObject",
        "Effect": "Allow",
        "Resource": _imported("team-photos", "/camera/*"),
        "Sid": "ReadInputImages",
    } in statements
    assert {
        "Action": "s3:ListBucket",
        "Condition": {"StringLike": {"s3:prefix": ["camera/*"]}},
        "Effect": "Allow",
        "Resource": _imported("team-photos"),
        "Sid": "ListInputImages",
    } in statements
    assert {
        "Action": "s3:PutObject",
        "Effect": "Allow",
        "Resource": _imported("team-results", "/results/*"),
        "Sid": "WriteBatchResults",
    } in statements
    _, machine = only(raw, "AWS::StepFunctions::StateMachine")
    machine_statements = _statements(raw, logical_id_of(machine["Properties"]["RoleArn"]))
    assert {
        "Action": "s3:ListBucket",
        "Condition": {"StringLike": {"s3:prefix": ["camera/*"]}},
        "Effect": "Allow",
        "Resource": _imported("team-photos"),
    } in machine_statements
    assert {
        "Action": "s3:GetObject",
        "Effect": "Allow",
        "Resource": _imported("team-photos", "/camera/manifests/*"),
    } in machine_statements
    assert raw["Outputs"]["BatchInputPrefix"]["Value"] == "camera/"
    # cdk-nag is satisfied with the imported buckets' ARNs too.
    errors = Annotations.from_stack(stack).find_error(
        "*", Match.string_like_regexp("AwsSolutions-.*")
    )
    assert errors == []


def test_a_stage_can_switch_batch_off(
    variants: dict[str, tuple[Stack, dict[str, Any]]],
) -> None:
    _, raw = variants["nobatch"]
    assert resources_of(raw, "AWS::StepFunctions::StateMachine") == {}
    assert "BatchFunction" not in raw["Resources"]
    assert not [name for name in raw["Outputs"] if name.startswith("Batch")]


def test_synth_refuses_to_drop_the_result_writer_when_the_flag_is_off(
    fake_model: FakeModel,
) -> None:
    app = new_app(context={RESULT_WRITER_V2_FLAG: False})
    with pytest.raises(Exception, match="useDistributedMapResultWriterV2"):
        add_stages(app, stages=[DEV], model=ModelSource.from_artifact_dir(fake_model.directory))


def test_aws_cdk_lib_still_drops_result_writer_v2_without_the_flag() -> None:
    # Why the guard above exists. If aws-cdk-lib stops dropping it, this fails: revisit the guard.
    rendered = {}
    for flag in (True, False):
        app = new_app(context={RESULT_WRITER_V2_FLAG: flag})
        stack = Stack(app, "Probe")
        bucket = s3.Bucket(stack, "Out")
        state = sfn.DistributedMap(
            stack, "Map", result_writer_v2=sfn.ResultWriterV2(bucket=bucket, prefix="p")
        )
        state.item_processor(sfn.Pass(stack, "Item"))
        rendered[flag] = state.to_state_json()
    assert "ResultWriter" in rendered[True]
    assert "ResultWriter" not in rendered[False]
