"""The INT8 artifact (session fixture): smaller, really quantized, verified, agreement reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from export_helpers import sha256_of
from torchvision.models import ResNet18_Weights

from model_export import ExportError, export_model
from model_export.__main__ import main
from model_export.photos import photographs

# Each module exports real models (or uses the session fixtures that do).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def manifest(int8_model_dir: Path) -> dict:
    return json.loads((int8_model_dir / "manifest.json").read_text())


def _quantize_linear_zero_point_types(proto: onnx.ModelProto) -> set[int]:
    """Element types of every QuantizeLinear zero point: the activation type actually used."""
    initializers = {init.name: init for init in proto.graph.initializer}
    return {
        initializers[node.input[2]].data_type
        for node in proto.graph.node
        if node.op_type == "QuantizeLinear"
    }


def _weight_value_range(proto: onnx.ModelProto) -> tuple[int, int]:
    """Smallest and largest quantized value over the int8 conv/fc weight tensors."""
    weights = [
        onnx.numpy_helper.to_array(init)
        for init in proto.graph.initializer
        if init.data_type == onnx.TensorProto.INT8 and len(init.dims) > 1
    ]
    assert len(weights) >= 20
    return min(int(w.min()) for w in weights), max(int(w.max()) for w in weights)


def _photo_batch() -> np.ndarray:
    from PIL import Image

    transform = ResNet18_Weights.IMAGENET1K_V1.transforms()
    return np.stack(
        [transform(Image.open(p).convert("RGB")).numpy() for p in photographs()]
    ).astype(np.float32)


def test_int8_is_smaller_single_file(int8_model_dir: Path, fp32_model_dir: Path) -> None:
    assert sorted(p.name for p in int8_model_dir.iterdir()) == ["manifest.json", "model.onnx"]
    int8_size = (int8_model_dir / "model.onnx").stat().st_size
    fp32_size = (fp32_model_dir / "model.onnx").stat().st_size
    # int8 weights are a quarter of float32; scales and zero points add a little.
    assert int8_size < 0.35 * fp32_size


def test_int8_graph_is_qdq_with_per_channel_weights(int8_model_dir: Path) -> None:
    proto = onnx.load(str(int8_model_dir / "model.onnx"))
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("QuantizeLinear") > 10
    assert ops.count("DequantizeLinear") > 10
    initializers = {init.name: init for init in proto.graph.initializer}
    int8_weights = [i for i in initializers.values() if i.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 20  # every conv and the fc
    # Per-channel: a weight DequantizeLinear has one scale per output channel.
    per_channel = [
        node
        for node in proto.graph.node
        if node.op_type == "DequantizeLinear"
        and node.input[0] in initializers
        and initializers[node.input[0]].data_type == onnx.TensorProto.INT8
        and len(initializers[node.input[1]].dims) == 1
        and initializers[node.input[1]].dims[0] > 1
    ]
    assert per_channel
    meta = {entry.key: entry.value for entry in proto.metadata_props}
    assert meta["quantization"] == "int8"
    assert meta["weights_trained"] == "false"
    assert len(json.loads(meta["labels"])) == 1000
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]


def test_int8_manifest_describes_quantization_and_file(
    int8_model_dir: Path, manifest: dict, fp32_model_dir: Path
) -> None:
    assert manifest["sha256"] == sha256_of(int8_model_dir / "model.onnx")
    assert manifest["size_bytes"] == (int8_model_dir / "model.onnx").stat().st_size
    quant = manifest["quantization"]
    assert quant["mode"] == "int8"
    assert quant["format"] == "QDQ"
    assert quant["per_channel"] is True
    # The default recipe: U8S8 (unsigned activations, signed weights) with 7-bit weights.
    assert quant["activation_type"] == "QUInt8"
    assert quant["weight_type"] == "QInt8"
    assert quant["scheme"] == "U8S8"
    assert quant["reduce_range"] is True
    assert quant["calibration"]["source"] == "shipped photographs"
    assert quant["calibration"]["images"] == len(photographs())
    # The same seed gives the same FP32 graph the INT8 one was quantized from.
    assert quant["fp32_sha256"] == sha256_of(fp32_model_dir / "model.onnx")


def test_int8_default_graph_really_is_u8s8_with_7bit_weights(int8_model_dir: Path) -> None:
    proto = onnx.load(str(int8_model_dir / "model.onnx"))
    # Every activation QuantizeLinear quantizes to uint8 (none left signed).
    assert _quantize_linear_zero_point_types(proto) == {onnx.TensorProto.UINT8}
    # reduce_range: symmetric 7-bit weights stay within [-64, 64] instead of [-127, 127].
    low, high = _weight_value_range(proto)
    assert -64 <= low < 0 < high <= 64
    meta = {entry.key: entry.value for entry in proto.metadata_props}
    assert json.loads(meta["quantization_settings"]) == {
        "scheme": "U8S8",
        "activation_type": "QUInt8",
        "weight_type": "QInt8",
        "reduce_range": True,
    }


def test_int8_report_agreement_size_and_speed(
    int8_model_dir: Path, fp32_model_dir: Path, manifest: dict
) -> None:
    report = manifest["verification"]["int8_vs_fp32"]
    assert "fallback" in report["calibration"]
    assert report["scheme"] == "U8S8, reduce_range=True"
    assert "UNTRAINED" in report["note"]
    assert report["fp32_size_bytes"] == (fp32_model_dir / "model.onnx").stat().st_size
    assert report["int8_size_bytes"] == (int8_model_dir / "model.onnx").stat().st_size
    latency = report["latency_batch1_median_ms"]
    assert latency["fp32"] > 0
    assert latency["int8"] > 0
    assert report["speedup"] == pytest.approx(latency["fp32"] / latency["int8"], rel=0.01)
    # Recompute agreement independently and check the report tells the truth.
    batch = _photo_batch()
    fp32 = ort.InferenceSession(
        str(fp32_model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    int8 = ort.InferenceSession(
        str(int8_model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (ref,) = fp32.run(["logits"], {"input": batch})
    (got,) = int8.run(["logits"], {"input": batch})
    agreement = float(np.mean(ref.argmax(1) == got.argmax(1)))
    assert report["top1_agreement"] == pytest.approx(agreement)
    cosine = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    assert report["logit_cosine_min"] == pytest.approx(float(cosine.min()), abs=1e-4)
    # A broken quantization (wrong scales) would scramble the logits entirely.
    assert cosine.min() > 0.99


def test_int8_s8s8_full_range_with_calibration_dir(tmp_path: Path) -> None:
    # One export covers both the non-default recipe and a calibration directory (exports are slow).
    calibration = tmp_path / "calib" / "nested"
    calibration.mkdir(parents=True)
    for photo in photographs()[:3]:
        shutil.copy(photo, calibration / photo.name)
    out = tmp_path / "out"
    manifest = export_model(
        "random",
        out,
        "int8",
        calibration_dir=tmp_path / "calib",
        int8_activations="int8",
        reduce_range=False,
        log=lambda _m: None,
    )
    assert manifest["quantization"]["calibration"]["source"] == "directory"
    assert manifest["quantization"]["calibration"]["images"] == 3
    assert "--calibration-dir" in manifest["verification"]["int8_vs_fp32"]["calibration"]
    assert manifest["sha256"] == sha256_of(out / "model.onnx")
    quant = manifest["quantization"]
    assert (quant["activation_type"], quant["weight_type"]) == ("QInt8", "QInt8")
    assert (quant["scheme"], quant["reduce_range"]) == ("S8S8", False)
    assert manifest["verification"]["int8_vs_fp32"]["passed"] is True
    proto = onnx.load(str(out / "model.onnx"))
    assert _quantize_linear_zero_point_types(proto) == {onnx.TensorProto.INT8}
    # Full 8-bit weights: per-channel symmetric scaling puts each channel's extreme at +-127.
    low, high = _weight_value_range(proto)
    assert max(-low, high) == 127
    meta = {entry.key: entry.value for entry in proto.metadata_props}
    assert json.loads(meta["quantization_settings"])["reduce_range"] is False


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quantize": "none", "int8_activations": "uint8"}, "only apply with quantize='int8'"),
        ({"quantize": "none", "reduce_range": False}, "only apply with quantize='int8'"),
        ({"quantize": "int8", "int8_activations": "fp8"}, "unknown INT8 activation type 'fp8'"),
    ],
)
def test_int8_options_rejected_before_any_work(tmp_path: Path, kwargs: dict, message: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=message):
        export_model("random", out, log=lambda _m: None, **kwargs)
    assert not out.exists()


def test_cli_int8_activations_without_int8_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["--weights", "random", "--int8-activations", "int8", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: INT8 activation type and reduce_range only apply with quantize='int8'"
    assert not out.exists()
