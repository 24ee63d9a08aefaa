"""The manifest's reference prediction for rollout_hook/reference.jpg (session fixtures)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from export_helpers import REPO, sha256_of
from PIL import Image
from torchvision.models import ResNet18_Weights

from model_export.reference import reference_prediction

pytestmark = pytest.mark.slow

SHIPPED = REPO / "rollout_hook" / "reference.jpg"


def _manifest(model_dir: Path) -> dict:
    return json.loads((model_dir / "manifest.json").read_text())


def _independent_top5(model_dir: Path, image: Path) -> list[int]:
    """torchvision's preset transform and a default ONNX Runtime session: no serving code."""
    tensor = ResNet18_Weights.IMAGENET1K_V1.transforms()(Image.open(image).convert("RGB"))
    session = ort.InferenceSession(
        str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (logits,) = session.run(None, {"input": tensor.numpy()[None, ...].astype(np.float32)})
    return [int(i) for i in np.argsort(-logits[0], kind="stable")[:5]]


@pytest.fixture(params=["fp32", "int8"])
def model_dir(request: pytest.FixtureRequest) -> Path:
    return Path(request.getfixturevalue(f"{request.param}_model_dir"))


def test_reference_names_the_shipped_photograph_and_its_digest(model_dir: Path) -> None:
    reference = _manifest(model_dir)["reference"]
    assert reference["image"] == "reference.jpg"
    assert reference["image_sha256"] == sha256_of(SHIPPED)


def test_reference_top1_and_top5_match_an_independent_onnx_runtime_run(model_dir: Path) -> None:
    manifest = _manifest(model_dir)
    reference = manifest["reference"]
    expected = _independent_top5(model_dir, SHIPPED)
    assert reference["top1"]["index"] == expected[0]
    assert reference["top1"]["label"] == manifest["labels"][expected[0]]
    assert [entry["index"] for entry in reference["top5"]] == expected
    assert [entry["label"] for entry in reference["top5"]] == [
        manifest["labels"][i] for i in expected
    ]


def test_fp32_and_int8_each_record_their_own_model(
    fp32_model_dir: Path, int8_model_dir: Path
) -> None:
    fp32, int8 = _manifest(fp32_model_dir)["reference"], _manifest(int8_model_dir)["reference"]
    # Different models, different softmax outputs: each manifest describes its own model.
    assert fp32["top5"] != int8["top5"]
    assert fp32["image_sha256"] == int8["image_sha256"]


def test_another_image_gets_its_own_digest_and_answer(tmp_path: Path, fp32_model_dir: Path) -> None:
    # The same photograph, mirrored and re-encoded: other bytes, another answer to record.
    other = tmp_path / "reference.jpg"
    buffer = io.BytesIO()
    Image.open(SHIPPED).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(buffer, "JPEG")
    other.write_bytes(buffer.getvalue())
    recorded = reference_prediction(fp32_model_dir / "model.onnx", other)
    assert recorded["image_sha256"] == sha256_of(other) != sha256_of(SHIPPED)
    assert recorded["top5"][0]["index"] == _independent_top5(fp32_model_dir, other)[0]
    assert recorded["top5"] != _manifest(fp32_model_dir)["reference"]["top5"]
