"""Each --weights mode: imagenet (offline -> clear error), auto (falls back, says so), random
(deterministic), and checkpoints (state_dict or a whole saved model, 10-class head + labels)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from export_helpers import error_line, offline_env, run_cli, run_main, sha256_of
from PIL import Image
from torchvision.models import ResNet18_Weights

from model_export import ExportError, export_model
from model_export.export import load_weights
from model_export.photos import photographs
from model_export.weights import checkpoint_model, read_labels

# Each module exports real models (or uses the session fixtures that do).
pytestmark = pytest.mark.slow

LABELS = [f"part-{index}" for index in range(10)]


@pytest.fixture(scope="module")
def ten_class_model() -> torch.nn.Module:
    torch.manual_seed(7)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


@pytest.fixture
def labels_file(tmp_path: Path) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("\n".join(LABELS) + "\n\n", encoding="utf-8")
    return path


def test_imagenet_offline_fails_with_clear_message(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli(["--weights", "imagenet", "--out", str(out)], offline_env(tmp_path / "th"))
    line = error_line(result)
    assert "ImageNet weights" in line
    assert "--weights random" in line
    assert "--weights PATH" in line
    assert not (out / "model.onnx").exists()


def test_auto_offline_exports_labelled_untrained_model(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fp32_model_dir: Path,
) -> None:
    for key, value in offline_env(tmp_path / "th").items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "out"
    result = run_main(["--weights", "auto", "--out", str(out)], capsys)
    assert result.returncode == 0, result.stderr
    assert "UNTRAINED" in result.stderr  # said while it happens
    assert "[2/4] exporting to ONNX" in result.stderr  # progress on the long step
    assert "UNTRAINED" in result.stdout  # and in the report
    assert "FP32 verification" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights"]["trained"] is False
    assert manifest["weights"]["source"] == "random"
    assert any("--weights auto" in note and "UNTRAINED" in note for note in manifest["notes"])
    assert manifest["sha256"] == sha256_of(out / "model.onnx")
    # The fallback is exactly the seeded random model the session fixture exported.
    assert manifest["sha256"] == sha256_of(fp32_model_dir / "model.onnx")


def test_random_export_is_deterministic(tmp_path: Path, fp32_model_dir: Path) -> None:
    manifest = export_model("random", tmp_path / "again", seed=0, log=lambda _m: None)
    assert manifest["sha256"] == sha256_of(fp32_model_dir / "model.onnx")
    assert (tmp_path / "again" / "model.onnx").read_bytes() == (
        fp32_model_dir / "model.onnx"
    ).read_bytes()


def test_state_dict_checkpoint_loads_ten_class_head_with_labels(
    tmp_path: Path, ten_class_model: torch.nn.Module, labels_file: Path
) -> None:
    checkpoint = tmp_path / "finetuned.pt"
    # Training scripts often wrap the weights and save them from nn.DataParallel ("module.").
    wrapped = {f"module.{k}": v for k, v in ten_class_model.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": wrapped}, checkpoint)
    loaded = checkpoint_model(checkpoint, read_labels(labels_file))
    assert loaded.num_classes == 10
    assert loaded.labels == LABELS
    assert loaded.trained is True
    assert loaded.checkpoint == "finetuned.pt"
    assert loaded.checkpoint_sha256 == sha256_of(checkpoint)
    expected = ten_class_model.state_dict()
    got = loaded.model.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert not loaded.model.training


def test_checkpoint_without_labels_gets_placeholder_names(
    tmp_path: Path, ten_class_model: torch.nn.Module
) -> None:
    checkpoint = tmp_path / "plain.pt"
    torch.save(ten_class_model.state_dict(), checkpoint)
    loaded = checkpoint_model(checkpoint)
    assert loaded.labels == [f"class_{i}" for i in range(10)]
    assert any("--labels" in note for note in loaded.notes)


def test_whole_saved_model_checkpoint_via_cli(
    tmp_path: Path, ten_class_model: torch.nn.Module, labels_file: Path
) -> None:
    checkpoint = tmp_path / "whole.pt"
    torch.save(ten_class_model, checkpoint)  # the whole module, pickled
    out = tmp_path / "out"
    result = run_cli(
        ["--weights", str(checkpoint), "--labels", str(labels_file), "--out", str(out), "--json"],
        offline_env(tmp_path / "th"),
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    stored = json.loads((out / "manifest.json").read_text())
    assert printed["sha256"] == stored["sha256"] == sha256_of(out / "model.onnx")
    assert stored["labels"] == LABELS
    assert stored["num_classes"] == 10
    assert stored["output"]["shape"] == ["batch", 10]
    assert stored["weights"]["source"] == "checkpoint"
    assert stored["weights"]["trained"] is True
    assert stored["weights"]["checkpoint_sha256"] == sha256_of(checkpoint)
    assert stored["verification"]["fp32_vs_pytorch"]["top1_agreement"] == 1.0
    # Parity with the test's own eager model, through torchvision's own preprocessing.
    transform = ResNet18_Weights.IMAGENET1K_V1.transforms()
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in photographs()])
    with torch.inference_mode():
        expected = ten_class_model(batch).numpy()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"input": batch.numpy()})
    assert got.shape == (len(photographs()), 10)
    assert np.abs(got - expected).max() <= 1e-3
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_imagenet_and_auto_use_the_pretrained_weights_when_they_can_be_fetched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The online branch, with torchvision's downloader replaced (this machine has no internet)."""
    import torchvision.models._api

    torch.manual_seed(3)
    published = torchvision.models.resnet18(weights=None).state_dict()
    requested: list[str] = []

    def fake_download(url: str, *args: object, **kwargs: object) -> dict:
        requested.append(url)
        return published

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fake_download)
    for mode in ("imagenet", "auto"):
        loaded = load_weights(mode, None, 0, log=lambda _m: None)
        assert loaded.trained is True
        assert loaded.source == "imagenet:IMAGENET1K_V1"
        assert loaded.labels == ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
        assert loaded.notes == ()
        assert torch.equal(loaded.model.state_dict()["fc.weight"], published["fc.weight"])
    assert requested == [ResNet18_Weights.IMAGENET1K_V1.url] * 2


def test_malicious_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    checkpoint = tmp_path / "evil.pt"
    torch.save({"fc.weight": torch.zeros(2, 2), "extra": Payload()}, checkpoint)
    with pytest.raises(ExportError, match="would run arbitrary code"):
        checkpoint_model(checkpoint)
    assert not marker.exists()
