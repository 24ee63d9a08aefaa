"""Candidate speed-ups for the handler, measured: ``python -m bench.explore [--quick]``.

Not part of ``make bench``: it answers "would this change help?" for the handler's owners.
  1. INT8 format: the exporter's S8S8 QDQ vs U8S8 QDQ (unsigned activations, the layout x86
     VNNI's vpdpbusd multiplies natively) vs FP32, bare session.run, interleaved.
  2. ORT thread-pool spinning on vs off (the handler turns it off).
  3. Preprocessing stages for the typical JPEG and the 12 MP JPEG; a fused normalization.
  4. INIT: what creating the Powertools Tracer costs on a real cold start (fresh processes).
Writes bench/results/explore-latest.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import BUILD, LAMBDA_SRC, RESULTS, make_images

sys.path.insert(0, str(LAMBDA_SRC))


def quantize_u8s8(fp32: Path, out: Path) -> Path:
    """Same recipe as model_export.quantize (QDQ, per-channel, MinMax, same photos) but QUInt8."""
    if out.is_file():
        return out
    import numpy as np
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import preprocess
    from model_export.photos import photographs

    batches = [preprocess.preprocess(p.read_bytes())[None] for p in photographs()]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.it, None)
            return None if batch is None else {"input": batch}

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prep.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=False)
        quantize_static(
            str(prepared),
            str(out.with_suffix(".tmp")),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    out.with_suffix(".tmp").replace(out)
    return out


def interleaved(fns: dict[str, Any], rounds: int, block: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            for _ in range(block):
                t0 = time.perf_counter()
                fns[name]()
                samples[name].append((time.perf_counter() - t0) * 1000.0)
    return {k: round(statistics.median(v), 3) for k, v in samples.items()}


def sessions_and_spinning(dirs: dict[str, Path], u8s8: Path, threads: int, quick: bool) -> dict:
    import numpy as np
    import onnxruntime as ort

    import model_store

    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)

    def session(path: Path, spinning: bool) -> Any:
        options = model_store.session_options(threads)
        if spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        s = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        s.run(None, {"input": x})
        return s

    paths = {
        "fp32": dirs["fp32"] / "model.onnx",
        "int8_s8s8": dirs["int8"] / "model.onnx",
        "int8_u8s8": u8s8,
    }
    fns = {}
    for name, path in paths.items():
        for spin in (False, True):
            s = session(path, spin)
            fns[f"{name}{'_spin' if spin else ''}"] = lambda s=s: s.run(None, {"input": x})
    p50 = interleaved(fns, 4 if quick else 20, 3 if quick else 5)
    ref = np.asarray(session(paths["fp32"], False).run(None, {"input": x})[0])
    agree = {}
    for name in ("int8_s8s8", "int8_u8s8"):
        out = np.asarray(session(paths[name], False).run(None, {"input": x})[0])
        agree[name] = round(float((ref * out).sum() / np.linalg.norm(ref) / np.linalg.norm(out)), 5)
    return {
        "bare_p50_ms": p50,
        "fp32_over_int8_s8s8": round(p50["fp32"] / p50["int8_s8s8"], 3),
        "fp32_over_int8_u8s8": round(p50["fp32"] / p50["int8_u8s8"], 3),
        "spin_speedup_fp32": round(p50["fp32"] / p50["fp32_spin"], 3),
        "spin_speedup_int8": round(p50["int8_s8s8"] / p50["int8_s8s8_spin"], 3),
        "logit_cosine_vs_fp32_random_input": agree,
    }


def preprocessing(images: dict[str, Path], quick: bool) -> dict:
    import numpy as np
    from PIL import Image

    import preprocess

    spec = preprocess.IMAGENET
    scale = (1.0 / (255.0 * np.asarray(spec.std, np.float32))).astype(np.float32)
    bias = (np.asarray(spec.mean, np.float32) / np.asarray(spec.std, np.float32)).astype(np.float32)

    def fused(img: Image.Image) -> np.ndarray:
        # One pass: uint8 -> float32 multiply-add, written straight into CHW order.
        arr = np.asarray(img, dtype=np.uint8)
        out = np.empty((3, arr.shape[0], arr.shape[1]), np.float32)
        for c in range(3):
            np.multiply(arr[:, :, c], scale[c], out=out[c], casting="unsafe")
            out[c] -= bias[c]
        return out

    out = {}
    for case in ("jpeg_640x480", "jpeg_12mp"):
        data = images[case].read_bytes()
        img_rgb = preprocess.decode_rgb(preprocess.open_image(data))
        w, h = img_rgb.size
        short = min(w, h)
        size = (256, int(256 * max(w, h) / short)) if w <= h else (int(256 * w / h), 256)
        resized = img_rgb.resize(size, Image.Resampling.BILINEAR)
        left, top = round((size[0] - 224) / 2), round((size[1] - 224) / 2)
        cropped = resized.crop((left, top, left + 224, top + 224))

        def current_tail(c: Any = cropped) -> Any:
            arr = np.asarray(c, dtype=np.uint8).astype(np.float32) / np.float32(255)
            arr = (arr - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
            return np.ascontiguousarray(arr.transpose(2, 0, 1))

        fns = {
            "open_decode_rgb": lambda d=data: preprocess.decode_rgb(preprocess.open_image(d)),
            "full_decode_no_draft": lambda d=data: Image.open(io.BytesIO(d)).convert("RGB"),
            "resize_256": lambda i=img_rgb, s=size: i.resize(s, Image.Resampling.BILINEAR),
            "normalize_current": current_tail,
            "normalize_fused": lambda c=cropped: fused(c),
            "whole_preprocess": lambda d=data: preprocess.preprocess(d),
        }
        p50 = interleaved(fns, 3 if quick else 10, 3 if case == "jpeg_12mp" else 10)
        diff = float(np.abs(fused(cropped) - current_tail()).max())
        out[case] = {"p50_ms": p50, "decoded_size": [w, h], "fused_max_abs_diff": diff}
    return out


def tracer_cost(runs: int) -> dict:
    """Fresh interpreters: Powertools Tracer construction, with and without an S3 client after."""
    snippets = {
        "s3_client_only": "import boto3; boto3.client('s3', region_name='us-east-1')",
        "tracer_then_s3_client": (
            "from aws_lambda_powertools import Tracer; Tracer(service='x'); "
            "import boto3; boto3.client('s3', region_name='us-east-1')"
        ),
        "tracer_only": "from aws_lambda_powertools import Tracer; Tracer(service='x')",
        "logger_metrics_only": (
            "from aws_lambda_powertools import Logger, Metrics; "
            "Logger(service='x'); Metrics(namespace='n', service='x')"
        ),
    }
    code = "import time; t=time.perf_counter(); {}; print((time.perf_counter()-t)*1000)"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    out: dict[str, list[float]] = {k: [] for k in snippets}
    for _ in range(runs):
        for name, snippet in snippets.items():
            proc = subprocess.run(
                [sys.executable, "-c", code.format(snippet)],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            out[name].append(float(proc.stdout.strip().splitlines()[-1]))
    med = {k: round(statistics.median(v), 1) for k, v in out.items()}
    med["tracer_net_cost_on_cache_miss"] = round(
        med["tracer_then_s3_client"] - med["s3_client_only"], 1
    )
    return med


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.explore")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args(argv)
    dirs = {"fp32": BUILD / "fp32", "int8": BUILD / "int8"}
    if not all((d / "model.onnx").is_file() for d in dirs.values()):
        print(
            "error: run `make bench` first (it exports build/bench/fp32 and int8)", file=sys.stderr
        )
        return 1
    u8s8 = quantize_u8s8(dirs["fp32"] / "model.onnx", BUILD / "int8_u8s8.onnx")
    images = make_images(BUILD / "images")
    result = {
        "threads": args.threads,
        "int8_formats_and_spinning": sessions_and_spinning(dirs, u8s8, args.threads, args.quick),
        "preprocessing": preprocessing(images, args.quick),
        "init_powertools": tracer_cost(2 if args.quick else 5),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "explore-latest.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
