"""bench.models reuses a built model only if its manifest records the same INT8 recipe."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

import pytest

from bench.models import SEED, VARIANTS, expected_quantization, reusable

# What the exporter records (docs/export.md), spelled out here rather than taken from the code.
U8S8_REDUCED = {
    "mode": "int8",
    "tool": "onnxruntime.quantization.quantize_static",
    "format": "QDQ",
    "per_channel": True,
    "activation_type": "QUInt8",
    "weight_type": "QInt8",
    "scheme": "U8S8",
    "reduce_range": True,
    "calibrate_method": "MinMax",
    "pre_process": "onnxruntime.quantization.shape_inference.quant_pre_process",
}
# An INT8 build from before the exporter's default changed (S8S8, full 8-bit weights).
OLD_S8S8 = U8S8_REDUCED | {"activation_type": "QInt8", "scheme": "S8S8", "reduce_range": False}


def _artifact(directory: Path, quantization: dict, payload: bytes = b"onnx bytes") -> Path:
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(payload)
    manifest = {
        "sha256": hashlib.sha256(payload).hexdigest(),
        "weights": {"source": "random", "trained": False, "seed": SEED},
        "quantization": quantization,
        "versions": {
            "torch": metadata.version("torch"),
            "onnxruntime": metadata.version("onnxruntime"),
        },
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def test_int8_reuse_requires_the_exporters_current_recipe(tmp_path: Path) -> None:
    current = _artifact(tmp_path / "current", U8S8_REDUCED | {"calibration": {"images": 9}})
    old = _artifact(tmp_path / "old", OLD_S8S8)
    assert reusable(current, "random", "int8")
    assert not reusable(old, "random", "int8")  # stale recipe: re-export, never silently reuse
    # ... while the same directory is what the S8S8 alternative variant asks for.
    quantize, activations, reduce_range = VARIANTS["int8_s8s8"]
    assert reusable(
        old, "random", quantize, expected_quantization(quantize, activations, reduce_range)
    )
    assert not reusable(
        current, "random", quantize, expected_quantization(quantize, activations, reduce_range)
    )


@pytest.mark.parametrize(
    "change",
    [
        {"reduce_range": False},
        {"activation_type": "QInt8"},
        {"per_channel": False},
        {"calibrate_method": "Entropy"},
    ],
)
def test_any_recipe_field_change_prevents_reuse(tmp_path: Path, change: dict) -> None:
    assert not reusable(_artifact(tmp_path / "m", U8S8_REDUCED | change), "random", "int8")


def test_fp32_reuse_and_integrity(tmp_path: Path) -> None:
    fp32 = _artifact(tmp_path / "fp32", {"mode": "none"})
    assert reusable(fp32, "random", "none")
    assert not reusable(fp32, "random", "int8")
    assert not reusable(fp32, "imagenet", "none")
    (fp32 / "model.onnx").write_bytes(b"tampered")
    assert not reusable(fp32, "random", "none")
