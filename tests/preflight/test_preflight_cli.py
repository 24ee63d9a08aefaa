"""make preflight: one line per check against a local AWS API; each blocker; bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from preflight_helpers import LAMBDA_TRUST, FakeAccount, FakeDocker, write_model

from preflight.cli import main
from stacks.config import STAGES

ROOT = Path(__file__).resolve().parents[2]
PROD_FUNCTION = "ResnetServingProd-PredictFunction-XYZ"
PROD_BATCH_FUNCTION = "ResnetServingProd-BatchFunction-XYZ"
DEV_BATCH_FUNCTION = "ResnetServingDev-BatchFunction-XYZ"
SEVERITY = {"OK": 0, "WARN": 1, "BLOCKER": 2}


def run(
    capsys: pytest.CaptureFixture[str],
    aws: FakeAccount,
    stage: str,
    model_dir: Path,
    **session: Any,
) -> tuple[int, dict[str, tuple[str, str]], str]:
    """Run preflight in-process; (exit code, {check: (worst level, its line)}, stdout)."""
    code = main(
        ["--stage", stage, "--model-dir", str(model_dir)],
        session_factory=aws.session_factory(**session),
    )
    out = capsys.readouterr().out
    found: dict[str, tuple[str, str]] = {}
    for line in out.splitlines()[1:-1]:
        level, check = line.split()[:2]
        if check not in found or SEVERITY[level] > SEVERITY[found[check][0]]:
            found[check] = (level, line)
    assert "Traceback" not in out
    return code, found, out


def levels(found: dict[str, tuple[str, str]]) -> dict[str, str]:
    return {check: level for check, (level, _) in found.items()}


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_model(tmp_path / "model")


def test_ready_account_passes_every_check_for_prod(
    aws: FakeAccount, docker: FakeDocker, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aws.ready()
    aws.function("some-big-function", memory_mb=4096)  # the account is past 3,008 MB
    code, found, out = run(capsys, aws, "prod", model)
    assert levels(found) == {
        "account": "OK",
        "bootstrap": "OK",
        "concurrency": "OK",
        "memory": "OK",
        "api-logging": "OK",
        "docker": "OK",
        "builder": "OK",
        "image-format": "OK",
        "model": "OK",
    }, out
    assert code == 0
    assert "version 30 (these templates need >= 6)" in found["bootstrap"][1]
    # Both functions' reservations: predict 50 + batch 50.
    assert "prod reserves 100 (predict 50 + batch 50; 0 already held)" in found["concurrency"][1]
    assert "1000 unreserved -> 900 left" in found["concurrency"][1]
    assert "(ResnetServingAccount)" in found["api-logging"][1]
    assert out.splitlines()[-1] == (
        "preflight: 0 blockers, 0 warnings: ready for `make deploy STAGE=prod`"
    )


def test_account_without_cdk_bootstrap_is_a_blocker(
    aws: FakeAccount, docker: FakeDocker, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aws.ready()
    aws.client("ssm").delete_parameter(Name="/cdk-bootstrap/hnb659fds/version")
    code, found, _ = run(capsys, aws, "dev", model)
    assert code == 1
    level, line = found["bootstrap"]
    assert level == "BLOCKER"
    assert "not CDK-bootstrapped" in line
    assert line.endswith("-> fix: make bootstrap")


def test_bootstrap_older_than_the_template_rule_is_a_blocker(
    aws: FakeAccount, docker: FakeDocker, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aws.ready()
    aws.client("ssm").put_parameter(
        Name="/cdk-bootstrap/hnb659fds/version", Value="5", Type="String", Overwrite=True
    )
    code, found, _ = run(capsys, aws, "dev", model)
    assert code == 1
    assert found["bootstrap"][0] == "BLOCKER"
    assert "version 5; these templates need >= 6" in found["bootstrap"][1]


def test_prod_on_a_new_account_concurrency_quota_is_a_blocker_with_the_quota_to_ask_for(
    aws: FakeAccount, docker: FakeDocker, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aws.ready()
    new = {"ConcurrentExecutions": 10, "UnreservedConcurrentExecutions": 10}
    code, found, _ = run(capsys, aws, "prod", model, account_limit=new)
    assert code == 1
    level, line = found["concurrency"]
    assert level == "BLOCKER"
    assert "prod reserves 100 concurrent executions (predict 50 + batch 50;" in line
    # 50 + 50 reserved + the 100 Lambda keeps unreserved.
    assert "--quota-code L-B99A9384 --desired-value 200" in line


def test_dev_reserves_nothing_so_a_new_account_quota_is_fine(
    aws: FakeAccount, docker: FakeDocker, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aws.ready()
    new = {"ConcurrentExecutions": 10, "UnreservedConcurrentExecutions": 10}
    code, found, _ = run(capsys, aws, "dev", model, account_limit=new)
    level, line = found["concurrency"]
    assert level == "OK"
    assert "dev reserves none" in line
    assert "a batch run takes at most 5 from it" in line
    assert code == 0  # the memory line below is a warning


def test_dev_batch_function_memory_above_the_new_account_limit_is_a_warning(
    aws: FakeAccount,
    docker: FakeDocker,
    model: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The predict function (1769 MB) fits a new account; a 3538 MB batch function does not.
    monkeypatch.setitem(STAGES, "dev", replace(STAGES["dev"], batch_memory_mb=3538))
    aws.ready()
    new = {"ConcurrentExecutions": 10, "UnreservedConcurrentExecutions": 10}
    code, found, out = run(capsys, aws, "dev", model, account_limit=new)
    level, line = found["memory"]
    assert level == "WARN"
    assert "dev uses batch 3538 MB; new accounts are held to 3008 MB" in line
    assert "predict" not in line.split(" -> fix: ")[0]
    assert line.endswith("or set batch_memory_mb=3008 for dev in stacks/config.py")
    assert "below the 1,000 default" in line
    assert code == 0
    assert "0 blockers, 1 warning" in out


def test_prod_redeploy_counts_the_reservations_both_functions_already_hold(
    aws: FakeAccount, docker: FakeDocker, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aws.ready()
    aws.function(PROD_FUNCTION, memory_mb=3538, reserved=50)
    aws.function(PROD_BATCH_FUNCTION, memory_mb=3538, reserved=50)
    aws.deployed_stack(
        "ResnetServingProd",
        {"FunctionName": PROD_FUNCTION, "BatchFunctionName": PROD_BATCH_FUNCTION},
    )
    # A 200 quota after prod's first deploy: 100 left unreserved, 100 held by prod itself.
    after_first_deploy = {"ConcurrentExecutions": 200, "UnreservedConcurrentExecutions": 100}
    code, found, out = run(capsys, aws, "prod", model, account_limit=after_first_deploy)
    assert levels(found)["concurrency"] == "OK", out
    assert "(predict 50 + batch 50; 100 already held)" in found["concurrency"][1]
    assert "100 unreserved -> 100 left" in found["concurrency"][1]
    assert found["memory"][0] == "OK"
    assert "(this stage's function) at 3538 MB" in found["memory"][1]
    assert code == 0


def test_prod_redeploy_that_adds_the_batch_reservation_needs_its_50_more(
    aws: FakeAccount, docker: FakeDocker, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prod deployed before batch predictions: a 150 quota, the predict function holds 50.
    aws.ready()
    aws.function(PROD_FUNCTION, memory_mb=3538, reserved=50)
    aws.deployed_stack("ResnetServingProd", {"FunctionName": PROD_FUNCTION})
    before_batch = {"ConcurrentExecutions": 150, "UnreservedConcurrentExecutions": 100}
    code, found, out = run(capsys, aws, "prod", model, account_limit=before_batch)
    level, line = found["concurrency"]
    assert level == "BLOCKER", out
    assert "(predict 50 + batch 50; 50 already held)" in line
    assert "--desired-value 200" in line
    assert code == 1


def test_deployed_batch_function_is_the_evidence_for_its_own_memory(
    aws: FakeAccount,
    docker: FakeDocker,
    model: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A redeploy of a dev sized at 3538 MB: the account already created that batch function,
    # so the new-account memory limit is lifted (or never applied).
    monkeypatch.setitem(STAGES, "dev", replace(STAGES["dev"], batch_memory_mb=3538))
    aws.ready()
    aws.function(DEV_BATCH_FUNCTION, memory_mb=3538)
    aws.deployed_stack("ResnetServingDev", {"BatchFunctionName": DEV_BATCH_FUNCTION})
    code, found, _ = run(capsys, aws, "dev", model)
    level, line = found["memory"]
    assert level == "OK"
    assert line.endswith(
        f"predict 1769 MB, batch 3538 MB: the account already runs {DEV_BATCH_FUNCTION} "
        "(this stage's function) at 3538 MB"
    )
    assert code == 0


def test_dev_as_shipped_fits_a_new_account(
    aws: FakeAccount, docker: FakeDocker, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Issue #9: the first deploy of dev in a new account (quota 10, 3,008 MB) must not fail.
    aws.ready()
    new = {"ConcurrentExecutions": 10, "UnreservedConcurrentExecutions": 10}
    code, found, out = run(capsys, aws, "dev", model, account_limit=new)
    assert found["memory"][0] == "OK", out
    assert found["concurrency"][0] == "OK", out
    assert code == 0


def test_memory_above_the_new_account_limit_without_evidence_is_a_warning(
    aws: FakeAccount, docker: FakeDocker, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aws.ready()
    code, found, out = run(capsys, aws, "prod", model)
    level, line = found["memory"]
    assert level == "WARN"
    assert "prod uses predict 3538 MB, batch 3538 MB; new accounts are held to 3008 MB" in line
    assert "set memory_mb=3008 and batch_memory_mb=3008 for prod" in line
    assert code == 0  # a warning does not block
    assert "0 blockers, 1 warning" in out


def test_missing_api_gateway_logging_role_is_a_blocker(
    aws: FakeAccount, docker: FakeDocker, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aws.bootstrap()
    code, found, _ = run(capsys, aws, "dev", model)
    assert code == 1
    level, line = found["api-logging"]
    assert level == "BLOCKER"
    assert "no CloudWatch Logs role" in line
    assert "make bootstrap" in line


def test_api_gateway_logging_role_that_was_deleted_is_a_blocker(
    aws: FakeAccount, docker: FakeDocker, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # What deleting a stack that owned the account setting leaves behind.
    aws.bootstrap()
    aws.api_logging_role("arn:aws:iam::123456789012:role/OtherApp-CloudWatchRole-GONE")
    code, found, _ = run(capsys, aws, "dev", model)
    assert code == 1
    assert found["api-logging"][0] == "BLOCKER"
    assert "no longer exists" in found["api-logging"][1]


def test_api_gateway_logging_role_api_gateway_cannot_assume_is_a_blocker(
    aws: FakeAccount, docker: FakeDocker, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aws.bootstrap()
    aws.api_logging_role(aws.role("not-for-api-gateway", LAMBDA_TRUST))
    code, found, _ = run(capsys, aws, "dev", model)
    assert code == 1
    assert "may not assume" in found["api-logging"][1]


def test_missing_model_is_a_blocker(
    aws: FakeAccount, docker: FakeDocker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aws.ready()
    code, found, _ = run(capsys, aws, "dev", tmp_path / "nothing")
    assert code == 1
    assert found["model"] == (
        "BLOCKER",
        f"BLOCKER  model        no exported model in {tmp_path / 'nothing'} "
        "-> fix: make model WEIGHTS=imagenet",
    )


def test_model_whose_digest_does_not_match_its_manifest_is_a_blocker(
    aws: FakeAccount, docker: FakeDocker, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aws.ready()
    (model / "model.onnx").write_bytes(b"tampered")
    code, found, _ = run(capsys, aws, "dev", model)
    assert code == 1
    assert found["model"][0] == "BLOCKER"
    assert "has sha256" in found["model"][1]


def test_untrained_model_is_a_warning(
    aws: FakeAccount, docker: FakeDocker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aws.ready()
    model = write_model(tmp_path / "random", trained=False)
    code, found, _ = run(capsys, aws, "dev", model)
    assert code == 0
    assert found["model"][0] == "WARN"
    assert "untrained" in found["model"][1]


def test_docker_container_builder_is_a_blocker(
    aws: FakeAccount, docker: FakeDocker, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aws.ready()
    docker.builder(driver="docker-container")
    code, found, _ = run(capsys, aws, "dev", model)
    assert code == 1
    assert found["builder"][0] == "BLOCKER"
    assert "docker buildx use default" in found["builder"][1]


# --- bad input: one clear line, non-zero exit, no traceback ------------------------------


def test_no_docker_on_path_is_one_blocker_line(
    aws: FakeAccount,
    model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    aws.ready()
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    code, found, _ = run(capsys, aws, "dev", model)
    assert code == 1
    assert found["docker"] == (
        "BLOCKER",
        "BLOCKER  docker       `docker` not found on PATH; cdk deploy builds the function image "
        "with it -> fix: install Docker (Engine with the buildx plugin, or Docker Desktop)",
    )
    assert "builder" not in found
    assert "image-format" not in found


def test_docker_daemon_not_running_is_one_blocker_line(
    aws: FakeAccount,
    docker: FakeDocker,
    model: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    aws.ready()
    docker.daemon_down()
    code, found, _ = run(capsys, aws, "dev", model)
    assert code == 1
    level, line = found["docker"]
    assert level == "BLOCKER"
    assert "Docker daemon not reachable: Cannot connect to the Docker daemon" in line


@pytest.mark.skipif(shutil.which("docker") is None, reason="needs the docker CLI")
def test_real_docker_cli_without_an_engine_is_one_blocker_line(
    aws: FakeAccount,
    model: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # This machine has the docker client and no engine: the real thing, not the fake.
    aws.ready()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")
    code, found, _ = run(capsys, aws, "dev", model)
    assert code == 1
    assert found["docker"][0] == "BLOCKER"
    assert "Docker daemon not reachable" in found["docker"][1]


def test_unknown_stage_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--stage", "qa"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "error: unknown stage 'qa': pass STAGE=dev or STAGE=prod\n"


def test_missing_stage_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert capsys.readouterr().err == "error: the following arguments are required: --stage\n"


def test_expired_credentials_are_one_blocker_line_and_skip_the_aws_checks(
    aws: FakeAccount, docker: FakeDocker, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expired = {
        "Code": "ExpiredToken",
        "Message": "The security token included in the request is expired",
    }
    code, found, _ = run(capsys, aws, "dev", model, identity_error=expired)
    assert code == 1
    assert found["credentials"] == (
        "BLOCKER",
        "BLOCKER  credentials  the AWS credentials have expired -> fix: refresh your credentials "
        "(aws sso login / aws configure) or pick another AWS_PROFILE",
    )
    assert not {"account", "bootstrap", "concurrency", "memory", "api-logging"} & set(found)
    assert {"docker", "model"} <= set(found)  # the local checks still run


def test_missing_credentials_from_the_command_line_are_one_line(
    docker: FakeDocker, model: Path, tmp_path: Path
) -> None:
    # A real process with no credentials anywhere: nothing stubbed on the AWS side.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("AWS_") and key != "AWS_PROFILE"
    }
    env.update(
        AWS_CONFIG_FILE=str(tmp_path / "no-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        AWS_REGION="eu-west-1",
    )
    result = subprocess.run(
        [sys.executable, "-m", "preflight", "--stage", "dev", "--model-dir", str(model)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    credential_lines = [line for line in result.stdout.splitlines() if "credentials" in line]
    assert credential_lines == [
        "BLOCKER  credentials  no AWS credentials found -> fix: refresh your credentials "
        "(aws sso login / aws configure) or pick another AWS_PROFILE"
    ]


def test_unknown_aws_profile_is_one_blocker_line(
    aws: FakeAccount,
    docker: FakeDocker,
    model: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    code = main(["--stage", "dev", "--model-dir", str(model)])  # the real session factory
    out = capsys.readouterr().out
    assert code == 1
    credential_lines = [line for line in out.splitlines() if "credentials" in line]
    assert len(credential_lines) == 1
    assert credential_lines[0].startswith("BLOCKER  credentials")
    assert "no-such-profile" in credential_lines[0]
    assert "Traceback" not in out
