"""Publishing to an S3 API server (moto on 127.0.0.1) via AWS_ENDPOINT_URL_S3, as boto3 reads it."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from export_helpers import closed_port, error_line, run_main, sha256_of
from moto.server import ThreadedMotoServer

from model_export import ExportError, publish

# Each module exports real models (or uses the session fixtures that do).
pytestmark = pytest.mark.slow

BUCKET = "model-artifacts"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = closed_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    # Only the standard variables: publish() must find the endpoint by itself.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield client
    listed = client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    for item in listed:
        client.delete_object(Bucket=BUCKET, Key=item["Key"])
    client.delete_bucket(Bucket=BUCKET)


def test_publish_uses_content_addressed_keys_and_round_trips(
    s3: object, fp32_model_dir: Path, tmp_path: Path
) -> None:
    client = s3
    local_sha = sha256_of(fp32_model_dir / "model.onnx")
    bucket, key = publish(fp32_model_dir, f"s3://{BUCKET}/serving/models", log=lambda _m: None)
    assert (bucket, key) == (BUCKET, f"serving/models/{local_sha}/model.onnx")
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET)["Contents"])
    assert keys == [
        f"serving/models/{local_sha}/manifest.json",
        f"serving/models/{local_sha}/model.onnx",
    ]
    downloaded = tmp_path / "model.onnx"
    client.download_file(BUCKET, key, str(downloaded))
    assert hashlib.sha256(downloaded.read_bytes()).hexdigest() == local_sha
    manifest = json.loads(
        client.get_object(Bucket=BUCKET, Key=f"serving/models/{local_sha}/manifest.json")[
            "Body"
        ].read()
    )
    assert manifest["sha256"] == local_sha
    head = client.head_object(Bucket=BUCKET, Key=key)
    assert head["Metadata"]["sha256"] == local_sha
    assert head["ContentLength"] == (fp32_model_dir / "model.onnx").stat().st_size


def test_cli_publish_only_defaults_prefix_to_models(
    s3: object, fp32_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_main(
        ["--publish-only", "--out", str(fp32_model_dir), "--upload", f"s3://{BUCKET}"], capsys
    )
    assert result.returncode == 0, result.stderr
    sha = sha256_of(fp32_model_dir / "model.onnx")
    assert f"s3://{BUCKET}/models/{sha}/model.onnx" in result.stdout
    assert "100%" in result.stderr  # transfer progress
    body = s3.get_object(Bucket=BUCKET, Key=f"models/{sha}/model.onnx")["Body"].read()  # type: ignore[attr-defined]
    assert hashlib.sha256(body).hexdigest() == sha


def test_publish_refuses_a_manifest_that_does_not_match_the_model(
    s3: object, fp32_model_dir: Path, tmp_path: Path
) -> None:
    tampered = tmp_path / "artifact"
    shutil.copytree(fp32_model_dir, tampered)
    with (tampered / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ExportError, match="sha256 differs"):
        publish(tampered, f"s3://{BUCKET}/models", log=lambda _m: None)
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)  # type: ignore[attr-defined]


def test_publish_to_missing_bucket_is_a_clear_error(
    s3: object, fp32_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_main(
        ["--publish-only", "--out", str(fp32_model_dir), "--upload", "s3://no-such-bucket/m"],
        capsys,
    )
    line = error_line(result)
    assert "no-such-bucket" in line
    assert "does not exist" in line
