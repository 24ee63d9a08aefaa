"""torch -> ONNX as one self-contained file with the serving metadata inside it."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Mapping
from pathlib import Path

import onnx
import torch
from torch import nn

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 18
IMAGE_SHAPE = (3, 224, 224)
# The exporter needs a finite upper bound for a symbolic dimension; far above any real batch.
MAX_BATCH = 4096


def export_onnx(model: nn.Module, destination: Path, metadata: Mapping[str, str]) -> None:
    """Export with the dynamo-based exporter and save as ONE file (no external .data).

    The weights (~45 MB for ResNet18) are far below protobuf's 2 GB limit, so they can live
    inside the model file; a single file is what gets hashed, uploaded and cached.
    """
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    example = torch.zeros((2, *IMAGE_SHAPE), dtype=torch.float32)
    # The exporter narrates each stage on stdout; progress is reported by our caller instead.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamo=True,
            dynamic_shapes=({0: batch},),
            external_data=False,
            verbose=False,
        )
    if program is None:  # only the legacy exporter returns None
        raise RuntimeError("torch.onnx.export returned no program")
    proto = program.model_proto
    set_metadata(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    save_single_file(proto, destination)


def set_metadata(proto: onnx.ModelProto, metadata: Mapping[str, str]) -> None:
    """Replace the given metadata_props keys, keeping any others, in a stable (sorted) order."""
    merged = {entry.key: entry.value for entry in proto.metadata_props}
    merged.update(metadata)
    del proto.metadata_props[:]
    for key in sorted(merged):
        proto.metadata_props.add(key=key, value=merged[key])


def save_single_file(proto: onnx.ModelProto, destination: Path) -> None:
    onnx.save_model(proto, str(destination), save_as_external_data=False)


def read_metadata(path: Path) -> dict[str, str]:
    proto = onnx.load(str(path), load_external_data=False)
    return {entry.key: entry.value for entry in proto.metadata_props}


def metadata_for(
    *,
    model_name: str,
    labels: list[str],
    preprocessing: Mapping[str, object],
    trained: bool,
    quantization: str,
    weights_source: str,
) -> dict[str, str]:
    """The metadata_props contract: everything the handler needs, covered by the model sha256."""
    return {
        "model_name": model_name,
        "labels": json.dumps(labels, ensure_ascii=False),
        "preprocessing": json.dumps(dict(preprocessing)),
        "weights_trained": "true" if trained else "false",
        "weights_source": weights_source,
        "quantization": quantization,
        "manifest_format_version": "1",
    }
