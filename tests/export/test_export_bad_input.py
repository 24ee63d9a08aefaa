"""Every bad input: one clear line on stderr, exit 1, no traceback, no model.onnx left behind.

A few cases run the real `python -m model_export` subprocess; the rest call the same entry point
(model_export.__main__.main) in-process, which spares a torch import per case.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from export_helpers import closed_port, error_line, offline_env, run_cli, run_main, sha256_of

import model_export.verify
from model_export import ExportError, export_model
from model_export.publishing import parse_s3_url


@pytest.fixture
def fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[[list[str]], str]:
    for key, value in offline_env(tmp_path / "torch-home").items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "out"

    def run(args: list[str]) -> str:
        line = error_line(run_main([*args, "--out", str(out)], capsys))
        assert not (out / "model.onnx").exists()
        return line

    return run


@pytest.mark.slow
def test_missing_checkpoint_subprocess(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli(
        ["--weights", str(tmp_path / "nope.pt"), "--out", str(out)], offline_env(tmp_path / "th")
    )
    line = error_line(result)
    assert "nope.pt" in line
    assert "does not exist" in line
    assert not (out / "model.onnx").exists()


def test_corrupt_checkpoint(tmp_path: Path, fails: Callable[[list[str]], str]) -> None:
    checkpoint = tmp_path / "corrupt.pt"
    checkpoint.write_bytes(b"PK\x03\x04 this is not a real zip archive" * 10)
    line = fails(["--weights", str(checkpoint)])
    assert "corrupt.pt" in line
    assert "corrupt or not a PyTorch file" in line


@pytest.mark.parametrize(
    "content",
    [b"hello, not a checkpoint\n", b"\x80\x02}q\x00", b""],
    ids=["text", "truncated-legacy-pickle", "empty"],
)
def test_non_pytorch_files(
    tmp_path: Path, fails: Callable[[list[str]], str], content: bytes
) -> None:
    checkpoint = tmp_path / "weird.pt"
    checkpoint.write_bytes(content)
    line = fails(["--weights", str(checkpoint)])
    assert "weird.pt" in line
    assert "corrupt or not a PyTorch file" in line or "not a valid PyTorch file" in line


def test_truncated_checkpoint(tmp_path: Path, fails: Callable[[list[str]], str]) -> None:
    good = tmp_path / "good.pt"
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    line = fails(["--weights", str(truncated)])
    assert "truncated.pt" in line
    assert "corrupt or not a PyTorch file" in line


def test_other_architecture_state_dict(tmp_path: Path, fails: Callable[[list[str]], str]) -> None:
    checkpoint = tmp_path / "resnet34.pt"
    torch.save(torchvision.models.resnet34(num_classes=10).state_dict(), checkpoint)
    line = fails(["--weights", str(checkpoint)])
    assert "is not a ResNet18" in line
    assert "unexpected keys" in line


def test_tiny_module_state_dict(tmp_path: Path, fails: Callable[[list[str]], str]) -> None:
    checkpoint = tmp_path / "tiny.pt"
    torch.save(torch.nn.Linear(4, 2).state_dict(), checkpoint)
    line = fails(["--weights", str(checkpoint)])
    assert "not a ResNet18" in line


def test_pickled_other_module(tmp_path: Path, fails: Callable[[list[str]], str]) -> None:
    checkpoint = tmp_path / "seq.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 2)), checkpoint)
    line = fails(["--weights", str(checkpoint)])
    assert "Sequential" in line
    assert "not a torchvision ResNet18" in line


def test_pickled_model_with_foreign_classes_is_not_executed(
    tmp_path: Path, fails: Callable[[list[str]], str]
) -> None:
    checkpoint = tmp_path / "gelu.pt"
    torch.save(torch.nn.Sequential(torch.nn.GELU()), checkpoint)
    line = fails(["--weights", str(checkpoint)])
    assert "GELU" in line
    assert "state_dict" in line


def test_labels_count_mismatch(tmp_path: Path, fails: Callable[[list[str]], str]) -> None:
    checkpoint = tmp_path / "ten.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), checkpoint)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    line = fails(["--weights", str(checkpoint), "--labels", str(labels)])
    assert "3 names" in line
    assert "10 classes" in line


def test_labels_mismatch_for_random_thousand_class_head(
    tmp_path: Path, fails: Callable[[list[str]], str]
) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    line = fails(["--weights", "random", "--labels", str(labels)])
    assert "2 names" in line
    assert "1000" in line


def test_missing_labels_file(tmp_path: Path, fails: Callable[[list[str]], str]) -> None:
    line = fails(["--weights", "random", "--labels", str(tmp_path / "labels.txt")])
    assert "labels file" in line
    assert "does not exist" in line


def test_labels_file_with_duplicates(tmp_path: Path, fails: Callable[[list[str]], str]) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\ncat\n")
    line = fails(["--weights", "random", "--labels", str(labels)])
    assert "repeats class names: cat" in line


def test_output_path_that_is_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in offline_env(tmp_path / "th").items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "taken"
    out.write_text("a file, not a directory")
    line = error_line(run_main(["--weights", "random", "--out", str(out)], capsys))
    assert "cannot write to output directory" in line
    assert out.read_text() == "a file, not a directory"


@pytest.mark.parametrize("kind", ["missing", "file", "no-images", "corrupt-image"])
def test_unreadable_calibration_dir(
    tmp_path: Path, fails: Callable[[list[str]], str], kind: str
) -> None:
    calibration = tmp_path / "calib"
    if kind == "file":
        calibration.write_text("not a directory")
    elif kind == "no-images":
        calibration.mkdir()
        (calibration / "notes.txt").write_text("no images here")
    elif kind == "corrupt-image":
        calibration.mkdir()
        (calibration / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    line = fails(
        ["--weights", "random", "--quantize", "int8", "--calibration-dir", str(calibration)]
    )
    assert "calib" in line


def test_calibration_dir_without_int8_is_rejected(
    tmp_path: Path, fails: Callable[[list[str]], str]
) -> None:
    line = fails(["--weights", "random", "--calibration-dir", str(tmp_path)])
    assert "int8" in line


@pytest.mark.slow
def test_malformed_s3_url_fails_before_exporting(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli(
        ["--weights", "random", "--out", str(out), "--upload", "s3:/bucket/models"],
        offline_env(tmp_path / "th"),
    )
    line = error_line(result)
    assert "malformed S3 URL 's3:/bucket/models'" in line
    assert "[1/4]" not in result.stderr  # rejected before the slow export started
    assert not out.exists()


@pytest.mark.parametrize(
    "url",
    [
        "models/bucket",
        "http://bucket/models",
        "s3://",
        "s3://Bad_Bucket/models",
        "s3://ab/x",
        "s3://bucket/models?x=1",
        "s3://bucket..name/m",
    ],
)
def test_malformed_s3_urls_are_rejected(url: str) -> None:
    with pytest.raises(ExportError, match="malformed S3 URL"):
        parse_s3_url(url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://my-bucket", ("my-bucket", "models")),
        ("s3://my-bucket/", ("my-bucket", "models")),
        ("s3://my-bucket/team/resnet/", ("my-bucket", "team/resnet")),
    ],
)
def test_s3_url_prefix_defaults_to_models(url: str, expected: tuple[str, str]) -> None:
    assert parse_s3_url(url) == expected


@pytest.mark.slow
def test_unreachable_s3_endpoint(tmp_path: Path, fp32_model_dir: Path) -> None:
    env = offline_env(
        tmp_path / "th",
        AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{closed_port()}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    result = run_cli(
        ["--publish-only", "--out", str(fp32_model_dir), "--upload", "s3://models-bucket/m"],
        env,
        timeout=120,
    )
    line = error_line(result)
    assert "cannot reach the S3 endpoint" in line
    assert "AWS_ENDPOINT_URL_S3" in line


@pytest.mark.slow
def test_failed_verification_keeps_previous_pair_and_leaves_no_partial_files(
    tmp_path: Path, fp32_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    shutil.copytree(fp32_model_dir, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # No real export differs by exactly 0.0; a zero tolerance forces the failure path.
    monkeypatch.setattr(model_export.verify, "FP32_MAX_ABS_DIFF", 0.0)
    with pytest.raises(ExportError, match="FP32 verification failed"):
        export_model("random", out, seed=1, log=lambda _m: None)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before  # same pair, no temporary files left behind
    manifest = json.loads(after["manifest.json"])
    assert manifest["sha256"] == sha256_of(out / "model.onnx")
