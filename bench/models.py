"""The models the benchmark runs, and the model's arithmetic cost counted from its ONNX graph.

``python -m bench.models --out DIR --weights auto|random|imagenet`` exports (or reuses) the FP32
and INT8 artifacts with model_export, in its own process so the benchmark driver never loads
torch. A directory is reused when its manifest says it was made from the same weights, with the
same quantization, by the same torch/onnxruntime versions, and model.onnx still has its sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

IMAGENET_CHECKPOINT = "resnet18-f37072fd.pth"  # torchvision IMAGENET1K_V1 file name
SEED = 0


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_weights(weights: str) -> str:
    """auto -> imagenet if torchvision's checkpoint is cached (there is no network), else random."""
    if weights != "auto":
        return weights
    torch_home = Path(os.environ.get("TORCH_HOME") or Path.home() / ".cache" / "torch")
    cached = torch_home / "hub" / "checkpoints" / IMAGENET_CHECKPOINT
    return "imagenet" if cached.is_file() else "random"


def reusable(model_dir: Path, weights: str, quantize: str) -> bool:
    manifest_path = model_dir / "manifest.json"
    model_path = model_dir / "model.onnx"
    if not (manifest_path.is_file() and model_path.is_file()):
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        versions = manifest["versions"]
        source = manifest["weights"]["source"]
        ok = (
            manifest["quantization"]["mode"] == quantize
            and versions.get("torch") == metadata.version("torch")
            and versions.get("onnxruntime") == metadata.version("onnxruntime")
            and (source == "random" if weights == "random" else source.startswith("imagenet"))
            and (weights != "random" or manifest["weights"].get("seed") == SEED)
        )
    except (OSError, ValueError, KeyError, TypeError, metadata.PackageNotFoundError):
        return False
    return ok and _sha256(model_path) == manifest["sha256"]


def prepare(out: Path, weights: str, log: Any = print) -> dict[str, Path]:
    """Export (or reuse) out/fp32 and out/int8; return {"fp32": dir, "int8": dir}."""
    weights = resolve_weights(weights)
    dirs = {"fp32": out / "fp32", "int8": out / "int8"}
    for name, quantize in (("fp32", "none"), ("int8", "int8")):
        if reusable(dirs[name], weights, quantize):
            log(f"reusing {dirs[name]} (manifest matches)")
            continue
        from model_export import export_model

        log(f"exporting {name} ({weights} weights) to {dirs[name]} ...")
        export_model(
            weights=weights, out_dir=dirs[name], quantize=quantize, seed=SEED, log=lambda _m: None
        )
    dirs["int8_u8s8"] = make_u8s8(dirs["fp32"], out / "int8_u8s8", log)
    return dirs


def make_u8s8(fp32_dir: Path, out_dir: Path, log: Any = print) -> Path:
    """The exporter's INT8 recipe with unsigned 8-bit activations (U8S8) instead of S8S8.

    Same tool (onnxruntime.quantization.quantize_static), QDQ, per-channel weights, MinMax, the
    same calibration photographs; only activation_type differs. x86 VNNI (vpdpbusd) multiplies
    u8 x s8 natively, so ONNX Runtime's U8S8 kernels avoid the S8S8 path's extra work. Kept
    here as a benchmarked proposal; the deployed INT8 model is whatever model_export makes.
    """
    manifest = json.loads((fp32_dir / "manifest.json").read_text())
    target = out_dir / "manifest.json"
    if target.is_file() and (out_dir / "model.onnx").is_file():
        previous = json.loads(target.read_text())
        if previous.get("quantization", {}).get("fp32_sha256") == manifest["sha256"]:
            log(f"reusing {out_dir} (made from this FP32 model)")
            return out_dir
    import tempfile

    import numpy as np
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from model_export.photos import photographs
    from model_export.preprocess import preprocess

    log(f"quantizing U8S8 variant to {out_dir} ...")
    batches = [preprocess([p]) for p in photographs()]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        prepared, quantized = Path(tmp) / "prep.onnx", Path(tmp) / "q.onnx"
        quant_pre_process(str(fp32_dir / "model.onnx"), str(prepared), skip_symbolic_shape=False)
        quantize_static(
            str(prepared),
            str(quantized),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        # The handler reads labels/preprocessing from the model's metadata: carry it over.
        source = onnx.load(str(fp32_dir / "model.onnx"), load_external_data=False)
        model = onnx.load(str(quantized))
        meta = {p.key: p.value for p in source.metadata_props} | {"quantization": "int8"}
        del model.metadata_props[:]
        for key, value in meta.items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, str(out_dir / "model.onnx"))
    path = out_dir / "model.onnx"
    target.write_text(
        json.dumps(
            manifest
            | {
                "sha256": _sha256(path),
                "size_bytes": path.stat().st_size,
                "quantization": {
                    "mode": "int8",
                    "activation_type": "QUInt8",
                    "weight_type": "QInt8",
                    "format": "QDQ",
                    "per_channel": True,
                    "fp32_sha256": manifest["sha256"],
                    "made_by": "bench.models.make_u8s8 (benchmark proposal)",
                },
            },
            indent=2,
        )
        + "\n"
    )
    return out_dir


# ---------------------------------------------------------------- arithmetic cost


def count_macs(model_path: Path) -> dict[str, Any]:
    """Multiply-accumulates for one image, summed over Conv, Gemm and MatMul from graph shapes.

    Shapes come from ONNX shape inference with the batch fixed to 1. Conv: output elements x
    (input channels / groups) x kernel area; Gemm/MatMul: M x N x K. Element-wise ops (ReLU, Add,
    pooling, BatchNorm if unfused) are left out, as in the usual published counts.
    """
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(model_path))
    graph = model.graph
    for dim in graph.input[0].type.tensor_type.shape.dim[:1]:
        dim.ClearField("dim_param")
        dim.dim_value = 1
    inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True).graph
    shapes: dict[str, list[int]] = {}
    for value in [*inferred.input, *inferred.value_info, *inferred.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)

    per_op: dict[str, int] = {}
    total = 0
    for node in inferred.node:
        if node.op_type == "Conv":
            weight = shapes.get(node.input[1])
            output = shapes.get(node.output[0])
            if not weight or not output or min(output) < 0:
                raise ValueError(f"Conv {node.name}: shapes unknown ({weight}, {output})")
            macs = 1
            for d in output:
                macs *= d
            for d in weight[1:]:  # Cin/groups x kH x kW
                macs *= d
        elif node.op_type in ("Gemm", "MatMul"):
            a = shapes.get(node.input[0])
            b = shapes.get(node.input[1])
            if not a or not b:
                raise ValueError(f"{node.op_type} {node.name}: shapes unknown ({a}, {b})")
            trans_b = any(att.name == "transB" and att.i for att in node.attribute)
            k = a[-1]
            n = b[0] if trans_b else b[-1]
            m = 1
            for d in a[:-1]:
                m *= d
            macs = m * n * k
        else:
            continue
        per_op[node.op_type] = per_op.get(node.op_type, 0) + macs
        total += macs
    return {"macs": total, "gmacs": total / 1e9, "gflops": 2 * total / 1e9, "by_op": per_op}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.models")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--weights", default="auto", choices=("auto", "random", "imagenet"))
    args = parser.parse_args(argv)
    try:
        dirs = prepare(args.out, args.weights, log=lambda m: print(m, file=sys.stderr))
    except Exception as exc:  # ExportError and friends: one line, non-zero exit
        print(f"error: could not prepare the benchmark models: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: str(v) for k, v in dirs.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
