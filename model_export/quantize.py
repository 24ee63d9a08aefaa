"""Static INT8 quantization with ONNX Runtime's own tooling (QDQ, per-channel weights)."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from .onnx_export import INPUT_NAME
from .preprocess import preprocess

# S8S8 in QDQ format is ORT's recommended first choice; MinMax calibration is deterministic.
SETTINGS: dict[str, Any] = {
    "tool": "onnxruntime.quantization.quantize_static",
    "format": "QDQ",
    "per_channel": True,
    "activation_type": "QInt8",
    "weight_type": "QInt8",
    "calibrate_method": "MinMax",
    "pre_process": "onnxruntime.quantization.shape_inference.quant_pre_process",
}


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds preprocessed images one at a time, in a fixed order, so calibration is reproducible."""

    def __init__(self, images: Sequence[Path]) -> None:
        self._images = list(images)
        self._iterator: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for path in self._images:
            yield {INPUT_NAME: preprocess([path])}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iterator, None)

    def rewind(self) -> None:
        self._iterator = self._batches()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # The quantizer logs per-tensor chatter at INFO and prints hints on stdout.
    logger = logging.getLogger()
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(previous)


def quantize_int8(fp32_path: Path, int8_path: Path, calibration_images: Sequence[Path]) -> None:
    """Pre-process (shape inference + graph optimisation) as ORT recommends, then quantize."""
    prepared = int8_path.with_name(int8_path.stem + ".prep.onnx")
    with _quiet():
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        quantize_static(
            str(prepared),
            str(int8_path),
            ImageCalibrationReader(calibration_images),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            use_external_data_format=False,
        )
    prepared.unlink(missing_ok=True)
