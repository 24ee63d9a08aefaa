"""The models the benchmark runs, and the model's arithmetic cost counted from its ONNX graph.

``python -m bench.models --out DIR --weights auto|random|imagenet`` exports (or reuses) the FP32
model, the INT8 model exactly as the exporter ships it by default, and one alternative INT8 recipe
(S8S8), all with model_export, in its own process so the benchmark driver never loads torch. A
directory is reused only when its manifest says it was made from the same weights, with the same
quantization recipe (the manifest's whole ``quantization`` recipe, so a changed exporter default
re-exports), by the same torch/onnxruntime versions, and model.onnx still has its sha256.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from model_export.checksum import sha256_file

IMAGENET_CHECKPOINT = "resnet18-f37072fd.pth"  # torchvision IMAGENET1K_V1 file name
SEED = 0

# name -> (quantize, int8_activations, reduce_range); None = the exporter's own default, so
# "int8" always measures what `make model QUANTIZE=int8` ships.
# "int8_s8s8" is the alternative the exporter offers (--int8-activations int8 --no-reduce-range):
# ONNX Runtime's usual recommendation on arm64, kept so the run shows what it costs on x86 VNNI.
VARIANTS: dict[str, tuple[str, str | None, bool | None]] = {
    "fp32": ("none", None, None),
    "int8": ("int8", None, None),
    "int8_s8s8": ("int8", "int8", False),
}


def resolve_weights(weights: str) -> str:
    """auto -> imagenet if torchvision's checkpoint is cached (there is no network), else random."""
    if weights != "auto":
        return weights
    torch_home = Path(os.environ.get("TORCH_HOME") or Path.home() / ".cache" / "torch")
    cached = torch_home / "hub" / "checkpoints" / IMAGENET_CHECKPOINT
    return "imagenet" if cached.is_file() else "random"


def expected_quantization(
    quantize: str, activations: str | None = None, reduce_range: bool | None = None
) -> dict[str, Any]:
    """The manifest ``quantization`` entries a model made with this recipe must carry.

    INT8 asks model_export.quantize for its recipe (defaults resolved there), so an exporter
    whose default changes (e.g. S8S8 -> U8S8 + reduce_range) no longer matches an old build.
    """
    if quantize == "none":
        return {"mode": "none"}
    from model_export.quantize import DEFAULT_ACTIVATIONS, DEFAULT_REDUCE_RANGE, settings

    return {
        "mode": "int8",
        **settings(
            activations or DEFAULT_ACTIVATIONS,  # type: ignore[arg-type]
            DEFAULT_REDUCE_RANGE if reduce_range is None else reduce_range,
        ),
    }


def reusable(
    model_dir: Path,
    weights: str,
    quantize: str,
    recipe: dict[str, Any] | None = None,
) -> bool:
    """True if model_dir holds an intact model made from these weights with this recipe.

    ``recipe`` is the expected manifest ``quantization`` entries (default:
    ``expected_quantization(quantize)``, the exporter's current default recipe).
    """
    manifest_path = model_dir / "manifest.json"
    model_path = model_dir / "model.onnx"
    if not (manifest_path.is_file() and model_path.is_file()):
        return False
    expected = recipe if recipe is not None else expected_quantization(quantize)
    try:
        manifest = json.loads(manifest_path.read_text())
        versions = manifest["versions"]
        source = manifest["weights"]["source"]
        recorded = manifest["quantization"]
        ok = (
            recorded["mode"] == quantize
            and all(recorded.get(key) == value for key, value in expected.items())
            and versions.get("torch") == metadata.version("torch")
            and versions.get("onnxruntime") == metadata.version("onnxruntime")
            and (source == "random" if weights == "random" else source.startswith("imagenet"))
            and (weights != "random" or manifest["weights"].get("seed") == SEED)
        )
    except (OSError, ValueError, KeyError, TypeError, metadata.PackageNotFoundError):
        return False
    return ok and sha256_file(model_path) == manifest["sha256"]


def prepare(out: Path, weights: str, log: Any = print) -> dict[str, Path]:
    """Export (or reuse) out/<variant> for every VARIANTS entry; return {name: dir}."""
    weights = resolve_weights(weights)
    dirs = {}
    for name, (quantize, activations, reduce_range) in VARIANTS.items():
        dirs[name] = out / name
        recipe = expected_quantization(quantize, activations, reduce_range)
        if reusable(dirs[name], weights, quantize, recipe):
            log(f"reusing {dirs[name]} (manifest matches)")
            continue
        from model_export import export_model

        log(f"exporting {name} ({weights} weights) to {dirs[name]} ...")
        export_model(
            weights=weights,
            out_dir=dirs[name],
            quantize=quantize,  # type: ignore[arg-type]
            seed=SEED,
            int8_activations=activations,  # type: ignore[arg-type]
            reduce_range=reduce_range,
            log=lambda _m: None,
        )
    return dirs


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
