"""export_model(): load, export, verify, optionally quantize, then move into place atomically."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import onnx

from . import onnx_export, verify
from .checksum import sha256_file
from .errors import ExportError, WeightsUnavailable
from .photos import photographs
from .preprocess import PREPROCESSING, image_files, load_image, preprocess
from .reference import reference_prediction
from .weights import (
    MODEL_NAME,
    LoadedModel,
    checkpoint_model,
    imagenet_model,
    random_model,
    read_labels,
)

if TYPE_CHECKING:
    from .quantize import Activations

MODEL_FILE = "model.onnx"
# The repository's build/model, wherever the code is run from.
DEFAULT_OUT_DIR = Path(__file__).resolve().parents[1] / "build" / "model"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
DEFAULT_CALIBRATION_LIMIT = 256

Log = Callable[[str], None]
Quantize = Literal["none", "int8"]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("torch", "torchvision", "onnx", "onnxscript", "onnxruntime", "numpy"):
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def load_weights(weights: str | Path, labels: list[str] | None, seed: int, log: Log) -> LoadedModel:
    if isinstance(weights, Path) or weights not in {"imagenet", "random", "auto"}:
        return checkpoint_model(Path(weights), labels)
    if weights == "random":
        return random_model(seed, labels)
    if weights == "imagenet":
        return imagenet_model(labels)
    try:
        return imagenet_model(labels)
    except WeightsUnavailable as exc:
        loaded = random_model(seed, labels)
        fallback = (
            f"--weights auto: the ImageNet weights could not be fetched ({exc.reason}); "
            f"exported the UNTRAINED random model (seed {seed}) instead"
        )
        log(f"warning: {fallback}")
        return LoadedModel(
            model=loaded.model,
            labels=loaded.labels,
            source=loaded.source,
            trained=False,
            seed=seed,
            notes=(fallback, *loaded.notes),
        )


def _graph_io(proto: onnx.ModelProto) -> tuple[dict[str, Any], dict[str, Any], int]:
    def describe(value: onnx.ValueInfoProto) -> dict[str, Any]:
        tensor = value.type.tensor_type
        shape: list[int | str] = [
            dim.dim_param if dim.HasField("dim_param") else int(dim.dim_value)
            for dim in tensor.shape.dim
        ]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        return {"name": value.name, "shape": shape, "dtype": dtype}

    opset = max(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
    return describe(proto.graph.input[0]), describe(proto.graph.output[0]), int(opset)


def _check_graph(input_info: dict[str, Any], output_info: dict[str, Any], classes: int) -> None:
    expected_in = ["batch", 3, 224, 224]
    expected_out = ["batch", classes]
    if (
        input_info["name"] != onnx_export.INPUT_NAME
        or input_info["shape"] != expected_in
        or input_info["dtype"] != "float32"
        or output_info["name"] != onnx_export.OUTPUT_NAME
        or output_info["shape"] != expected_out
    ):
        raise ExportError(
            f"exported graph has input {input_info} and output {output_info}; expected "
            f"'input' float32 {expected_in} and 'logits' {expected_out}"
        )


def _commit(work: Path, model: Path, manifest: dict[str, Any], out_dir: Path) -> None:
    """Move the verified pair into place.

    The old manifest goes first, so no moment exists where a new model sits next to the old
    manifest; a reader that finds a manifest can trust it describes model.onnx (sha256).
    """
    manifest_tmp = work / MANIFEST_FILE
    manifest_tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", "utf-8")
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
    os.replace(model, out_dir / MODEL_FILE)
    os.replace(manifest_tmp, out_dir / MANIFEST_FILE)


def export_model(
    weights: str | Path = "random",
    out_dir: str | Path = DEFAULT_OUT_DIR,
    quantize: Quantize = "none",
    *,
    labels: str | Path | None = None,
    calibration_dir: str | Path | None = None,
    calibration_limit: int = DEFAULT_CALIBRATION_LIMIT,
    seed: int = 0,
    int8_activations: Activations | None = None,
    reduce_range: bool | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Export ResNet18 to ``out_dir/model.onnx`` + ``manifest.json`` and return the manifest.

    ``weights``: "imagenet" (torchvision IMAGENET1K_V1, needs the network once), "random"
    (seeded and untrained), "auto" (imagenet if it can be fetched, else random, saying so) or
    a checkpoint path. INT8 only: ``int8_activations`` "uint8" (U8S8, the default) or "int8"
    (S8S8), ``reduce_range`` (7-bit weights, default True); see docs/export.md. Raises
    ExportError for bad input or a failed verification; then ``out_dir`` holds whatever it
    held before (never a half-written or unverified model).
    """
    log = log or _stderr
    if quantize not in ("none", "int8"):
        raise ExportError(f"unknown quantization {quantize!r}: use 'none' or 'int8'")
    if calibration_dir is not None and quantize != "int8":
        raise ExportError("a calibration directory only applies with quantize='int8'")
    if calibration_limit < 1:
        raise ExportError("the calibration image limit must be at least 1")
    if quantize != "int8" and (int8_activations is not None or reduce_range is not None):
        raise ExportError("INT8 activation type and reduce_range only apply with quantize='int8'")
    from .quantize import ACTIVATION_CHOICES, DEFAULT_ACTIVATIONS, DEFAULT_REDUCE_RANGE

    activations = DEFAULT_ACTIVATIONS if int8_activations is None else int8_activations
    if activations not in ACTIVATION_CHOICES:
        raise ExportError(
            f"unknown INT8 activation type {activations!r}: use 'uint8' (U8S8) or 'int8' (S8S8)"
        )
    reduce = DEFAULT_REDUCE_RANGE if reduce_range is None else bool(reduce_range)
    out_dir = Path(out_dir)

    # Check every input before the slow steps, so a typo fails in a second, not a minute.
    label_names = read_labels(Path(labels)) if labels is not None else None
    calibration_images: list[Path] = []
    calibration_desc = ""
    if quantize == "int8":
        if calibration_dir is not None:
            calibration_images = image_files(Path(calibration_dir))[:calibration_limit]
            calibration_desc = (
                f"{len(calibration_images)} images from --calibration-dir "
                f"{Path(calibration_dir).name}/"
            )
            for path in calibration_images:
                load_image(path)  # fail now on a corrupt file, not after the export
        else:
            calibration_images = photographs()
            calibration_desc = (
                f"fallback: the {len(calibration_images)} photographs shipped in scikit-image/"
                "matplotlib (no --calibration-dir given); they are also the verification images, "
                "so INT8 agreement is measured on its own calibration set"
            )

    started = time.monotonic()
    log("[1/4] loading weights ...")
    loaded = load_weights(weights, label_names, seed, log)
    if not loaded.trained:
        log("      the model is UNTRAINED (random weights): its predictions are meaningless")
    photos = photographs()
    batch = preprocess(photos)
    names = [path.name for path in photos]

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    except OSError as exc:
        raise ExportError(f"cannot write to output directory {out_dir}: {exc}") from exc
    try:
        log("[2/4] exporting to ONNX (torch.onnx, dynamo) ...")
        fp32_path = work / "fp32.onnx"
        metadata = onnx_export.metadata_for(
            model_name=MODEL_NAME,
            labels=loaded.labels,
            preprocessing=PREPROCESSING,
            trained=loaded.trained,
            quantization="none",
            weights_source=loaded.source,
        )
        onnx_export.export_onnx(loaded.model, fp32_path, metadata)
        log(f"      done in {time.monotonic() - started:.0f}s")

        log(f"[3/4] verifying FP32 against PyTorch on {len(photos)} photographs ...")
        fp32_report = verify.verify_fp32(
            loaded.model, fp32_path, batch, names, loaded.labels, trained=loaded.trained
        )
        if not fp32_report["passed"]:
            raise ExportError(
                "FP32 verification failed: "
                + "; ".join(fp32_report["failures"])
                + f" (nothing written; {out_dir} is unchanged)"
            )
        verification: dict[str, Any] = {
            "passed": True,
            "weights_trained": loaded.trained,
            "fp32_vs_pytorch": fp32_report,
        }
        if not loaded.trained:
            verification["note"] = verify.UNTRAINED_NOTE
        quantization: dict[str, Any] = {"mode": "none"}
        final = fp32_path
        if quantize == "int8":
            from .quantize import quantize_int8, settings

            recipe = settings(activations, reduce)
            log(
                f"[4/4] quantizing to INT8 ({recipe['scheme']}, reduce_range={reduce}; "
                f"calibration: {len(calibration_images)} images) ..."
            )
            int8_path = work / "int8.onnx"
            quantize_int8(
                fp32_path,
                int8_path,
                calibration_images,
                activations=activations,
                reduce_range=reduce,
            )
            proto = onnx.load(str(int8_path))
            scheme = {k: recipe[k] for k in ("scheme", "activation_type", "weight_type")}
            onnx_export.set_metadata(
                proto,
                {
                    **metadata,
                    "quantization": "int8",
                    # Lets the serving side check the CPU it got against the recipe it runs.
                    "quantization_settings": json.dumps(
                        {**scheme, "reduce_range": reduce}, separators=(",", ":")
                    ),
                },
            )
            onnx_export.save_single_file(proto, int8_path)
            log("      verifying INT8 against FP32 and measuring the speed-up ...")
            int8_report = verify.verify_int8(
                fp32_path,
                int8_path,
                batch,
                names,
                loaded.labels,
                trained=loaded.trained,
                calibration=calibration_desc,
                scheme=f"{recipe['scheme']}, reduce_range={reduce}",
            )
            if not int8_report["passed"]:
                raise ExportError(
                    "INT8 verification failed: "
                    + "; ".join(int8_report["failures"])
                    + f" (nothing written; {out_dir} is unchanged)"
                )
            verification["int8_vs_fp32"] = int8_report
            quantization = {
                "mode": "int8",
                **recipe,
                "calibration": {
                    "source": "directory" if calibration_dir is not None else "shipped photographs",
                    "images": len(calibration_images),
                    "description": calibration_desc,
                },
                "fp32_sha256": sha256_file(fp32_path),
                "fp32_size_bytes": fp32_path.stat().st_size,
            }
            final = int8_path
        else:
            log("[4/4] no quantization requested")

        proto = onnx.load(str(final), load_external_data=False)
        input_info, output_info, opset = _graph_io(proto)
        _check_graph(input_info, output_info, loaded.num_classes)
        # What the deployed function must answer for the photograph the rollout hook sends.
        reference = reference_prediction(final)
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "model_name": MODEL_NAME,
            "file": MODEL_FILE,
            "sha256": sha256_file(final),
            "size_bytes": final.stat().st_size,
            "opset": opset,
            "input": input_info,
            "output": output_info,
            "preprocessing": PREPROCESSING,
            "labels": loaded.labels,
            "num_classes": loaded.num_classes,
            "weights": {
                "source": loaded.source,
                "trained": loaded.trained,
                "seed": loaded.seed,
                "checkpoint": loaded.checkpoint,
                "checkpoint_sha256": loaded.checkpoint_sha256,
            },
            "quantization": quantization,
            "versions": _versions(),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "verification": verification,
            "reference": reference,
            "notes": list(loaded.notes),
        }
        _commit(work, final, manifest, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(
        f"wrote {out_dir / MODEL_FILE} ({manifest['size_bytes']} bytes, sha256 "
        f"{manifest['sha256']}) in {time.monotonic() - started:.0f}s"
    )
    return manifest
