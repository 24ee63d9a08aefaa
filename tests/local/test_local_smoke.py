"""`make smoke`: against `make serve` (the real handler and model), and every bad input."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from serve_helpers import REPO_ROOT, ServedEndpoint

REFERENCE = REPO_ROOT / "rollout_hook" / "reference.jpg"
EXECUTE_API = "https://abc123defg.execute-api.eu-west-1.amazonaws.com/v1/"


def smoke(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT):
    return subprocess.run(
        [sys.executable, "-m", "classifier_client.smoke", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        # Only what is passed: no AWS credentials or endpoints leak in from the machine.
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO_ROOT), **(env or {})},
    )


def rows(stdout: str) -> dict[str, str]:
    """check name -> PASS/FAIL/SKIP from the table."""
    found = {}
    for line in stdout.splitlines():
        for result in ("PASS", "FAIL", "SKIP"):
            name, sep, _ = line.strip().partition(f"  {result}  ")
            if sep:
                found[name.strip()] = result
    return found


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# --- against `make serve` ----------------------------------------------------------------


def test_smoke_passes_against_make_serve(served: ServedEndpoint, fp32_model_dir: Path) -> None:
    done = smoke(
        "--stage",
        "local",
        "--outputs-file",
        str(served.outputs_file),
        "--model-dir",
        str(fp32_model_dir),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert rows(done.stdout) == {
        "deployed model": "PASS",
        "GET /health": "PASS",
        "POST /predict": "PASS",
        "model sha256": "PASS",
        "top-1": "PASS",
    }
    manifest = json.loads((fp32_model_dir / "manifest.json").read_text())
    top1 = manifest["reference"]["top1"]
    assert f"{top1['index']} {top1['label']} == reference" in done.stdout
    assert done.stdout.strip().endswith("smoke: PASS (5 checks)")


def test_smoke_fails_when_the_endpoint_serves_another_model(
    served: ServedEndpoint, int8_model_dir: Path
) -> None:
    # The endpoint serves the FP32 export; this manifest is the INT8 one.
    done = smoke(
        "--stage",
        "local",
        "--outputs-file",
        str(served.outputs_file),
        "--model-dir",
        str(int8_model_dir),
    )
    assert done.returncode == 1, done.stdout + done.stderr
    table = rows(done.stdout)
    assert table["model sha256"] == "FAIL"
    assert table["deployed model"] == "FAIL"
    assert table["GET /health"] == "PASS"
    assert "smoke: FAIL" in done.stdout
    assert "Traceback" not in done.stderr


def test_smoke_fails_with_a_wrong_api_key(
    served: ServedEndpoint, fp32_model_dir: Path, tmp_path: Path
) -> None:
    outputs = json.loads(served.outputs_file.read_text())
    outputs["ResnetServingLocal"]["ApiKey"] = "not-the-key"
    path = tmp_path / "cdk-outputs-local.json"
    path.write_text(json.dumps(outputs))
    done = smoke(
        "--stage", "local", "--outputs-file", str(path), "--model-dir", str(fp32_model_dir)
    )
    assert done.returncode == 1
    assert rows(done.stdout)["GET /health"] == "FAIL"
    assert "HTTP 403" in done.stdout


# --- bad input: one line, exit 2, no traceback ---------------------------------------------


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A manifest as an export writes it (sha256 + reference for the shipped photograph)."""
    directory = tmp_path / "model"
    directory.mkdir()
    manifest = {
        "format_version": 1,
        "sha256": "ab" * 32,
        "reference": {
            "image": "reference.jpg",
            "image_sha256": hashlib.sha256(REFERENCE.read_bytes()).hexdigest(),
            "top1": {"index": 281, "label": "tabby"},
        },
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def deployed_outputs(tmp_path: Path, stack: str = "ResnetServingDev") -> Path:
    path = tmp_path / "cdk-outputs-dev.json"
    outputs = {"EndpointUrl": EXECUTE_API, "ApiKeyId": "k3y1d", "ModelKey": "models/x/model.onnx"}
    path.write_text(json.dumps({stack: outputs}))
    return path


def test_missing_outputs_file(tmp_path: Path, model_dir: Path) -> None:
    done = smoke("--stage", "dev", "--model-dir", str(model_dir), cwd=tmp_path)
    assert one_error_line(done) == (
        "error: cdk-outputs-dev.json not found: deploy first (make deploy STAGE=dev; make serve "
        "for STAGE=local) or pass --outputs-file"
    )


def test_wrong_stage_for_the_outputs_file(tmp_path: Path, model_dir: Path) -> None:
    path = deployed_outputs(tmp_path)
    done = smoke("--stage", "prod", "--outputs-file", str(path), "--model-dir", str(model_dir))
    assert one_error_line(done) == (
        f"error: stack 'ResnetServingProd' not in {path} (has: ResnetServingDev)"
    )


def test_a_stage_that_cannot_be_a_stack(tmp_path: Path, model_dir: Path) -> None:
    done = smoke("--stage", "Prod!", "--model-dir", str(model_dir), cwd=tmp_path)
    assert "stage must be lowercase letters and digits" in one_error_line(done)


def test_missing_manifest(tmp_path: Path) -> None:
    path = deployed_outputs(tmp_path)
    done = smoke("--stage", "dev", "--outputs-file", str(path), "--model-dir", str(tmp_path))
    assert "manifest.json: smoke compares the endpoint" in one_error_line(done)


def test_missing_credentials(tmp_path: Path, model_dir: Path) -> None:
    path = deployed_outputs(tmp_path)
    no_credentials = {
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    done = smoke(
        "--stage",
        "dev",
        "--outputs-file",
        str(path),
        "--model-dir",
        str(model_dir),
        env=no_credentials,
    )
    line = one_error_line(done)
    assert line.startswith("error: could not read API key k3y1d: Unable to locate credentials")
    assert "aws sts get-caller-identity" in line


@pytest.fixture
def expired_token_api() -> Iterator[str]:
    """An API Gateway control-plane endpoint that answers like AWS does to an expired session."""

    class Expired(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"message":"The security token included in the request is expired"}'
            self.send_response(403)
            self.send_header("x-amzn-ErrorType", "ExpiredTokenException")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Expired)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_expired_credentials(tmp_path: Path, model_dir: Path, expired_token_api: str) -> None:
    path = deployed_outputs(tmp_path)
    session = {
        "AWS_ACCESS_KEY_ID": "ASIAEXAMPLEEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_SESSION_TOKEN": "expired-session-token",
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_ENDPOINT_URL_API_GATEWAY": expired_token_api,
    }
    done = smoke(
        "--stage", "dev", "--outputs-file", str(path), "--model-dir", str(model_dir), env=session
    )
    line = one_error_line(done)
    assert "could not read API key k3y1d" in line
    assert "ExpiredTokenException" in line
    assert "security token included in the request is expired" in line


def test_unreachable_endpoint(tmp_path: Path, model_dir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # released when the block ends: nothing listens there
    path = tmp_path / "cdk-outputs-local.json"
    endpoint = f"http://127.0.0.1:{port}/v1/"
    path.write_text(json.dumps({"ResnetServingLocal": {"EndpointUrl": endpoint, "ApiKey": "k"}}))
    done = smoke(
        "--stage",
        "local",
        "--outputs-file",
        str(path),
        "--model-dir",
        str(model_dir),
        "--max-attempts",
        "1",
    )
    line = one_error_line(done)
    assert line.startswith(f"error: GET {endpoint}health failed after 1 attempts")
    assert "Connection refused" in line
