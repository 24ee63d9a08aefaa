"""The verification gates can fail: a model that disagrees is caught, with the reason."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torchvision
from onnx import numpy_helper

from model_export.photos import photographs
from model_export.preprocess import preprocess
from model_export.verify import verify_fp32, verify_int8

pytestmark = pytest.mark.slow  # uses the exported session fixtures


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return preprocess(photographs())


@pytest.fixture(scope="module")
def names() -> list[str]:
    return [p.name for p in photographs()]


@pytest.fixture(scope="module")
def seeded_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


LABELS = [f"c{i}" for i in range(1000)]


def test_fp32_gate_passes_for_the_model_that_was_exported(
    fp32_model_dir: Path, seeded_model: torch.nn.Module, batch: np.ndarray, names: list[str]
) -> None:
    report = verify_fp32(
        seeded_model, fp32_model_dir / "model.onnx", batch, names, LABELS, trained=False
    )
    assert report["passed"] is True
    assert report["failures"] == []


def test_fp32_gate_fails_on_small_logit_drift(
    fp32_model_dir: Path, seeded_model: torch.nn.Module, batch: np.ndarray, names: list[str]
) -> None:
    drifted = copy.deepcopy(seeded_model)
    with torch.no_grad():
        drifted.fc.bias[500] += 0.01  # ten times the tolerance, too small to change top-1
    report = verify_fp32(
        drifted, fp32_model_dir / "model.onnx", batch, names, LABELS, trained=False
    )
    assert report["passed"] is False
    assert report["max_abs_logit_diff"] == pytest.approx(0.01, abs=1e-4)
    assert any("max abs logit diff" in failure for failure in report["failures"])


def test_fp32_gate_names_images_whose_top1_differs(
    fp32_model_dir: Path, seeded_model: torch.nn.Module, batch: np.ndarray, names: list[str]
) -> None:
    other = copy.deepcopy(seeded_model)
    with torch.no_grad():
        other.fc.bias[7] += 100.0  # class 7 wins every image in PyTorch, not in ONNX
    report = verify_fp32(other, fp32_model_dir / "model.onnx", batch, names, LABELS, trained=False)
    assert report["passed"] is False
    assert report["top1_agreement"] == 0.0
    top1_failure = next(f for f in report["failures"] if f.startswith("top-1 differs"))
    assert all(name in top1_failure for name in names)


def test_int8_gate_fails_when_quantization_scales_are_wrong(
    tmp_path: Path, fp32_model_dir: Path, int8_model_dir: Path, batch: np.ndarray, names: list[str]
) -> None:
    proto = onnx.load(str(int8_model_dir / "model.onnx"))
    scale_name = next(
        node.input[1]
        for node in proto.graph.node
        if node.op_type == "DequantizeLinear" and node.output[0].startswith("fc.weight")
    )
    scale = next(init for init in proto.graph.initializer if init.name == scale_name)
    # Flip the sign of every per-channel scale of the classifier: logits point the other way.
    scale.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(scale), scale_name))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    report = verify_int8(
        fp32_model_dir / "model.onnx",
        broken,
        batch,
        names,
        LABELS,
        trained=False,
        calibration="test",
        runs=1,
    )
    assert report["passed"] is False
    assert report["logit_cosine_min"] < 0.95
    assert "min cosine" in report["failures"][0]
