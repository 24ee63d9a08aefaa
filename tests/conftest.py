"""Session fixtures shared by every area: real models exported once per test session.

Both are untrained (weights="random", seed 0) so they need no network; their manifests and
ONNX metadata say so ("weights_trained": "false").
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def fp32_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with model.onnx (FP32, 1000 classes, verified) and manifest.json."""
    from model_export import export_model

    out = tmp_path_factory.mktemp("fp32-model")
    export_model(weights="random", out_dir=out, quantize="none", seed=0, log=lambda _msg: None)
    return out


@pytest.fixture(scope="session")
def int8_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with model.onnx (static INT8, QDQ, U8S8, per-channel 7-bit weights, verified)."""
    from model_export import export_model

    out = tmp_path_factory.mktemp("int8-model")
    export_model(weights="random", out_dir=out, quantize="int8", seed=0, log=lambda _msg: None)
    return out
