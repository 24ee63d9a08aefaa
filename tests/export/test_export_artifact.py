"""The FP32 artifact (session fixture): one self-contained file, its manifest, and real parity."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from export_helpers import sha256_of
from PIL import Image
from torchvision.models import ResNet18_Weights

from model_export.photos import photographs

# Each module exports real models (or uses the session fixtures that do).
pytestmark = pytest.mark.slow

PREPROCESSING = {
    "resize": 256,
    "crop": 224,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "interpolation": "bilinear",
    "antialias": True,
}


@pytest.fixture(scope="module")
def manifest(fp32_model_dir: Path) -> dict:
    return json.loads((fp32_model_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def proto(fp32_model_dir: Path) -> onnx.ModelProto:
    return onnx.load(str(fp32_model_dir / "model.onnx"))


def _torchvision_batch() -> torch.Tensor:
    # torchvision's own preset for these weights, independent of model_export.preprocess.
    transform = ResNet18_Weights.IMAGENET1K_V1.transforms()
    images = [Image.open(path).convert("RGB") for path in photographs()]
    return torch.stack([transform(image) for image in images])


def test_artifact_dir_holds_exactly_model_and_manifest(fp32_model_dir: Path) -> None:
    assert sorted(p.name for p in fp32_model_dir.iterdir()) == ["manifest.json", "model.onnx"]


def test_model_is_self_contained_single_file(fp32_model_dir: Path, proto: onnx.ModelProto) -> None:
    external = [
        init.name
        for init in proto.graph.initializer
        if init.data_location == onnx.TensorProto.EXTERNAL
    ]
    assert external == []
    # All ~11.7M ResNet18 parameters are stored inside the file as float32.
    assert (fp32_model_dir / "model.onnx").stat().st_size > 11_000_000 * 4


def test_graph_contract(proto: onnx.ModelProto) -> None:
    onnx.checker.check_model(proto)
    opset = {entry.domain: entry.version for entry in proto.opset_import}[""]
    assert opset >= 17
    (graph_input,) = proto.graph.input
    (graph_output,) = proto.graph.output
    assert graph_input.name == "input"
    assert graph_output.name == "logits"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims = graph_input.type.tensor_type.shape.dim
    assert in_dims[0].dim_param != ""  # symbolic batch dimension
    assert [d.dim_value for d in in_dims[1:]] == [3, 224, 224]
    out_dims = graph_output.type.tensor_type.shape.dim
    assert out_dims[0].dim_param == in_dims[0].dim_param
    assert out_dims[1].dim_value == 1000


def test_metadata_props_carry_what_the_handler_needs(proto: onnx.ModelProto) -> None:
    meta = {entry.key: entry.value for entry in proto.metadata_props}
    assert meta["model_name"] == "resnet18"
    labels = json.loads(meta["labels"])
    assert labels == ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    assert json.loads(meta["preprocessing"]) == PREPROCESSING
    assert meta["weights_trained"] == "false"
    assert meta["quantization"] == "none"
    assert meta["manifest_format_version"] == "1"


def test_manifest_every_field(fp32_model_dir: Path, manifest: dict, proto: onnx.ModelProto) -> None:
    model = fp32_model_dir / "model.onnx"
    assert manifest["format_version"] == 1
    assert manifest["model_name"] == "resnet18"
    assert manifest["file"] == "model.onnx"
    assert manifest["sha256"] == sha256_of(model)
    assert manifest["size_bytes"] == model.stat().st_size
    assert manifest["opset"] == {e.domain: e.version for e in proto.opset_import}[""]
    assert manifest["input"] == {
        "name": "input",
        "shape": ["batch", 3, 224, 224],
        "dtype": "float32",
    }
    assert manifest["output"] == {"name": "logits", "shape": ["batch", 1000], "dtype": "float32"}
    assert manifest["preprocessing"] == PREPROCESSING
    assert manifest["labels"] == ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    assert manifest["num_classes"] == 1000
    assert manifest["weights"]["source"] == "random"
    assert manifest["weights"]["trained"] is False
    assert manifest["weights"]["seed"] == 0
    assert manifest["quantization"] == {"mode": "none"}
    versions = manifest["versions"]
    assert versions["torch"] == torch.__version__.split("+")[0]
    assert versions["torchvision"] == torchvision.__version__.split("+")[0]
    assert versions["onnx"] == onnx.__version__
    assert versions["onnxruntime"] == ort.__version__
    assert versions["python"] == platform.python_version()
    assert manifest["created_at"].endswith("+00:00")
    assert any("UNTRAINED" in note for note in manifest["notes"])


def test_manifest_verification_report(manifest: dict) -> None:
    verification = manifest["verification"]
    assert verification["passed"] is True
    assert verification["weights_trained"] is False
    assert "UNTRAINED" in verification["note"]
    fp32 = verification["fp32_vs_pytorch"]
    assert fp32["num_images"] == len(photographs()) >= 8
    assert [row["image"] for row in fp32["per_image"]] == [p.name for p in photographs()]
    assert fp32["top1_agreement"] == 1.0
    assert fp32["max_abs_logit_diff"] <= 1e-3
    assert fp32["top5_overlap_min"] == 1.0
    assert "UNTRAINED" in fp32["note"]


def test_fp32_parity_on_real_photographs_recomputed_independently(fp32_model_dir: Path) -> None:
    """Rebuild the seeded model with torchvision, preprocess with torchvision's preset, and
    compare PyTorch eager with ONNX Runtime on the same tensor."""
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()
    batch = _torchvision_batch()
    with torch.inference_mode():
        expected = reference(batch).numpy()
    session = ort.InferenceSession(
        str(fp32_model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (got,) = session.run(["logits"], {"input": batch.numpy()})
    assert got.shape == (len(photographs()), 1000)
    assert np.abs(got - expected).max() <= 1e-3
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()
    top5_expected = np.argsort(-expected, axis=1)[:, :5]
    top5_got = np.argsort(-got, axis=1)[:, :5]
    for a, b in zip(top5_expected, top5_got, strict=True):
        assert set(a) == set(b)


def test_batch_dimension_is_dynamic(fp32_model_dir: Path) -> None:
    session = ort.InferenceSession(
        str(fp32_model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    batch = _torchvision_batch().numpy()
    (three,) = session.run(["logits"], {"input": batch[:3]})
    (one,) = session.run(["logits"], {"input": batch[1:2]})
    assert three.shape == (3, 1000)
    assert one.shape == (1, 1000)
    np.testing.assert_allclose(one[0], three[1], atol=1e-4)
