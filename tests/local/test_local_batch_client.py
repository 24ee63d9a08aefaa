"""`python -m classifier_client batch`: Step Functions through botocore's Stubber (the control plane
cannot run here; the Stubber checks every request and response against the service model),
results read from the local S3 server (moto over HTTP)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from classifier_client.batch import AwsClients, Progress, execution_input, read_batch_outputs
from classifier_client.cli import main as cli_main
from local_mode.s3 import LocalS3, local_s3

REGION = "eu-west-1"
MACHINE = f"arn:aws:states:{REGION}:123456789012:stateMachine:BatchStateMachine-abc"
RUN = "run-2026-test"
EXECUTION = f"arn:aws:states:{REGION}:123456789012:execution:BatchStateMachine-abc:{RUN}"
MAP_RUN = f"arn:aws:states:{REGION}:123456789012:mapRun:BatchStateMachine-abc/ListedObjects:1f2e"
INPUT, OUTPUT = "photos-input", "photos-output"
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
MANIFEST = "manifests/a.jsonl"


@pytest.fixture(scope="module")
def s3_server() -> Iterator[LocalS3]:
    with local_s3(bucket=OUTPUT) as server:
        yield server


@pytest.fixture
def outputs_file(tmp_path: Path) -> Path:
    path = tmp_path / "cdk-outputs-dev.json"
    outputs = {
        "ResnetServingDev": {
            "EndpointUrl": "https://x.execute-api.eu-west-1.amazonaws.com/v1/",
            "BatchStateMachineArn": MACHINE,
            "BatchInputBucketName": INPUT,
            "BatchInputPrefix": "/",
            "BatchOutputBucketName": OUTPUT,
        }
    }
    path.write_text(json.dumps(outputs))
    return path


def line(key: str, label: str | None = None, error: str | None = None) -> str:
    if error:
        return json.dumps({"key": key, "error": {"code": error, "message": "..."}})
    return json.dumps(
        {
            "key": key,
            "predictions": [{"label": label, "index": 1, "probability": 0.9}],
            "model": {"name": "resnet18", "sha256": "0" * 64},
        }
    )


@pytest.fixture
def results(s3_server: LocalS3) -> dict[str, str]:
    """What a finished run left in the output bucket: two batches' JSONL and the map manifest."""
    client = s3_server.client()
    client.put_object(
        Bucket=OUTPUT,
        Key=f"results/{RUN}/aaaa.jsonl",
        Body="\n".join(
            [line("p/1.jpg", "tabby"), line("p/2.jpg", "tabby"), line("p/3.jpg", error="x")]
        ),
    )
    client.put_object(
        Bucket=OUTPUT,
        Key=f"results/{RUN}/bbbb.jsonl",
        Body="\n".join([line("p/4.jpg", "goldfish"), line("p/5.jpg", error="corrupt_image")]),
    )
    manifest_key = "results/map-runs/1f2e/manifest.json"
    client.put_object(
        Bucket=OUTPUT,
        Key=manifest_key,
        Body=json.dumps(
            {
                "DestinationBucket": OUTPUT,
                "MapRunArn": MAP_RUN,
                "ResultFiles": {
                    "FAILED": [],
                    "PENDING": [],
                    "SUCCEEDED": [{"Key": "results/map-runs/1f2e/SUCCEEDED_0.json", "Size": 1}],
                },
            }
        ),
    )
    return {"manifest": manifest_key}


def counts(**values: int) -> dict[str, int]:
    base = dict.fromkeys(
        ("pending", "running", "succeeded", "failed", "timedOut", "aborted", "total"), 0
    )
    base["resultsWritten"] = 0
    return base | values


def describe_execution(status: str, output: dict[str, Any] | None = None, **extra: Any):
    response = {
        "executionArn": EXECUTION,
        "stateMachineArn": MACHINE,
        "status": status,
        "startDate": NOW,
        **extra,
    }
    if output is not None:
        response["output"] = json.dumps(output)
    return response


def describe_map_run(status: str, items: dict[str, int], batches: dict[str, int]):
    return {
        "mapRunArn": MAP_RUN,
        "executionArn": EXECUTION,
        "status": status,
        "startDate": NOW,
        "maxConcurrency": 10,
        "toleratedFailurePercentage": 5.0,
        "toleratedFailureCount": 0,
        "itemCounts": counts(**items),
        "executionCounts": counts(**batches),
    }


def queue_follow(stub: Stubber, *, final: str, output: dict[str, Any] | None, **extra: Any):
    ex = {"executionArn": EXECUTION}
    map_runs = {
        "mapRuns": [
            {
                "executionArn": EXECUTION,
                "mapRunArn": MAP_RUN,
                "stateMachineArn": MACHINE,
                "startDate": NOW,
            }
        ]
    }
    # 1: still listing the prefix (no Map Run yet)
    stub.add_response("describe_execution", describe_execution("RUNNING"), ex)
    stub.add_response("list_map_runs", {"mapRuns": []}, ex)
    # 2: half-way
    stub.add_response("describe_execution", describe_execution("RUNNING"), ex)
    stub.add_response("list_map_runs", map_runs, ex)
    stub.add_response(
        "describe_map_run",
        describe_map_run(
            "RUNNING", {"succeeded": 3, "running": 2, "total": 5}, {"succeeded": 1, "running": 1}
        ),
        {"mapRunArn": MAP_RUN},
    )
    # 3: the end
    stub.add_response("describe_execution", describe_execution(final, output, **extra), ex)
    stub.add_response("list_map_runs", map_runs, ex)
    done = "SUCCEEDED" if final == "SUCCEEDED" else "FAILED"
    batches = {"succeeded": 2, "total": 2} if done == "SUCCEEDED" else {"failed": 1, "total": 2}
    stub.add_response(
        "describe_map_run",
        describe_map_run(done, {"succeeded": 5, "total": 5}, batches),
        {"mapRunArn": MAP_RUN},
    )


@pytest.fixture
def aws(s3_server: LocalS3) -> Iterator[tuple[Stubber, AwsClients]]:
    sfn = boto3.client(
        "stepfunctions",
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    with Stubber(sfn) as stub:
        yield stub, AwsClients(sfn, s3_server.client())
        stub.assert_no_pending_responses()


def run_cli(argv: list[str], clients: AwsClients) -> tuple[int, str]:
    out = io.StringIO()
    code = cli_main(argv, stdout=out, aws_clients=lambda region: clients)
    return code, out.getvalue()


def test_a_prefix_run_is_started_followed_and_summarized(
    aws: tuple[Stubber, AwsClients],
    outputs_file: Path,
    results: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    stub, clients = aws
    stub.add_response(
        "start_execution",
        {"executionArn": EXECUTION, "startDate": NOW},
        {
            "stateMachineArn": MACHINE,
            "name": RUN,
            "input": json.dumps({"source": "prefix", "prefix": "p/"}),
        },
    )
    output = {
        "source": "prefix",
        "prefix": "p/",
        "map": {
            "MapRunArn": MAP_RUN,
            "ResultWriterDetails": {"Bucket": OUTPUT, "Key": results["manifest"]},
        },
    }
    queue_follow(stub, final="SUCCEEDED", output=output)

    code, text = run_cli(
        [
            "batch",
            f"s3://{INPUT}/p/",
            "--outputs-file",
            str(outputs_file),
            "--run-id",
            RUN,
            "--poll",
            "0.001",
        ],
        clients,
    )
    assert code == 0
    progress = capsys.readouterr().err
    assert "listing the input" in progress
    assert "3/5 images" in progress
    assert "5/5 images" in progress
    assert f"run {RUN}: SUCCEEDED" in text
    assert f"s3://{OUTPUT}/results/{RUN}/" in text
    assert f"s3://{OUTPUT}/{results['manifest']}" in text
    assert "images: 5 in 2 files, 3 predicted, 2 errors" in text
    assert "tabby" in text
    assert "corrupt_image" in text

    code, as_json = run_cli_json(stub, clients, outputs_file, results)
    report = json.loads(as_json)
    assert report["summary"]["labels"] == {"tabby": 2, "goldfish": 1}
    assert report["summary"]["errors"] == {"x": 1, "corrupt_image": 1}
    assert report["summary"]["duplicate_keys"] == 0
    assert report["batches"]["succeeded"] == 2


def run_cli_json(
    stub: Stubber, clients: AwsClients, outputs_file: Path, results: dict[str, str]
) -> tuple[int, str]:
    """--follow the same finished run with --json (no start_execution)."""
    output = {"map": {"ResultWriterDetails": {"Bucket": OUTPUT, "Key": results["manifest"]}}}
    queue_follow(stub, final="SUCCEEDED", output=output)
    return run_cli(
        ["batch", "--follow", RUN, "--outputs-file", str(outputs_file), "--json", "-q",
         "--poll", "0.001"],
        clients,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (f"s3://{INPUT}/", {"source": "prefix", "prefix": ""}),
        (f"s3://{INPUT}/cam/2026/", {"source": "prefix", "prefix": "cam/2026/"}),
        (f"s3://{INPUT}/manifests/a.jsonl", {"source": "jsonl", "manifest_key": MANIFEST}),
        (f"s3://{INPUT}/manifests/b.CSV", {"source": "csv", "manifest_key": "manifests/b.CSV"}),
    ],
)
def test_the_uri_becomes_the_state_machines_input(
    outputs_file: Path, uri: str, expected: dict[str, str]
) -> None:
    assert execution_input(uri, read_batch_outputs(outputs_file)) == expected


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://other-bucket/p/", f"reads s3://{INPUT}/ only"),
        (f"s3://{INPUT}/p", "neither a prefix ending in '/'"),
        (f"s3://{INPUT}/lists/a.jsonl", "manifests must be under"),
        ("https://example.com/x", "not an S3 URI"),
    ],
)
def test_a_uri_the_run_could_not_read_is_one_line_and_no_aws_call(
    aws: tuple[Stubber, AwsClients],
    outputs_file: Path,
    uri: str,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _stub, clients = aws  # nothing queued: any AWS call would fail the test
    code, _ = run_cli(["batch", uri, "--outputs-file", str(outputs_file)], clients)
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: ")
    assert message in err
    assert "Traceback" not in err


def test_a_prefix_outside_the_stacks_input_prefix_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "outputs.json"
    path.write_text(
        json.dumps(
            {
                "S": {
                    "BatchStateMachineArn": MACHINE,
                    "BatchInputBucketName": INPUT,
                    "BatchInputPrefix": "camera/",
                    "BatchOutputBucketName": OUTPUT,
                }
            }
        )
    )
    target = read_batch_outputs(path)
    assert execution_input(f"s3://{INPUT}/camera/x/", target)["prefix"] == "camera/x/"
    with pytest.raises(Exception, match="may only read"):
        execution_input(f"s3://{INPUT}/other/", target)
    with pytest.raises(Exception, match="camera/manifests/"):
        execution_input(f"s3://{INPUT}/manifests/a.jsonl", target)


def test_a_failed_run_says_how_to_redrive_and_exits_1(
    aws: tuple[Stubber, AwsClients], outputs_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stub, clients = aws
    stub.add_response(
        "start_execution",
        {"executionArn": EXECUTION, "startDate": NOW},
        {
            "stateMachineArn": MACHINE,
            "name": RUN,
            "input": json.dumps({"source": "jsonl", "manifest_key": "manifests/a.jsonl"}),
        },
    )
    queue_follow(
        stub,
        final="FAILED",
        output=None,
        error="States.ExceedToleratedFailureThreshold",
        cause="The number of failed items exceeds the tolerated threshold",
    )
    code, text = run_cli(
        ["batch", f"s3://{INPUT}/manifests/a.jsonl", "--outputs-file", str(outputs_file),
         "--run-id", RUN, "--poll", "0.001", "--no-summary"],
        clients,
    )  # fmt: skip
    assert code == 1
    assert f"run {RUN}: FAILED" in text
    assert "States.ExceedToleratedFailureThreshold" in text
    assert f"batch --redrive {RUN}" in text
    assert f"aws stepfunctions redrive-execution --execution-arn {EXECUTION}" in text


def test_redrive_redrives_the_execution_then_follows_it(
    aws: tuple[Stubber, AwsClients], outputs_file: Path, results: dict[str, str]
) -> None:
    stub, clients = aws
    stub.add_response("redrive_execution", {"redriveDate": NOW}, {"executionArn": EXECUTION})
    output = {"map": {"ResultWriterDetails": {"Bucket": OUTPUT, "Key": results["manifest"]}}}
    queue_follow(stub, final="SUCCEEDED", output=output)
    code, text = run_cli(
        ["batch", "--redrive", RUN, "--outputs-file", str(outputs_file), "-q", "--poll", "0.001"],
        clients,
    )
    assert code == 0
    assert f"run {RUN}: SUCCEEDED" in text


def test_no_wait_prints_the_run_and_returns(
    aws: tuple[Stubber, AwsClients], outputs_file: Path
) -> None:
    stub, clients = aws
    stub.add_response(
        "start_execution",
        {"executionArn": EXECUTION, "startDate": NOW},
        {"stateMachineArn": MACHINE, "name": RUN, "input": json.dumps({"source": "prefix",
                                                                       "prefix": ""})},
    )  # fmt: skip
    code, text = run_cli(
        ["batch", f"s3://{INPUT}/", "--outputs-file", str(outputs_file), "--run-id", RUN,
         "--no-wait"],
        clients,
    )  # fmt: skip
    assert code == 0
    assert json.loads(text) == {"run_id": RUN, "execution_arn": EXECUTION}


def test_the_stage_names_the_outputs_file_and_a_missing_one_is_one_line(
    aws: tuple[Stubber, AwsClients],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _stub, clients = aws
    monkeypatch.chdir(tmp_path)
    code, _ = run_cli(["batch", f"s3://{INPUT}/", "--stage", "dev"], clients)
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip() == (
        "error: outputs file not found: cdk-outputs-dev.json "
        "(written by `make deploy STAGE=<stage>`)"
    )


def test_progress_line_shows_images_and_batches() -> None:
    state = Progress(
        status="RUNNING",
        map_run_status="RUNNING",
        items={"succeeded": 250, "failed": 0, "total": 1000},
        batches={"succeeded": 2, "running": 3, "failed": 1},
    )
    text = state.line(width=10)
    assert "[##--------] 250/1,000 images" in text
    assert "2 done, 3 running, 1 failed" in text
