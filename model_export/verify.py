"""Compare an exported model with its reference on real photographs, and say plainly how it did."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from .errors import ExportError
from .onnx_export import INPUT_NAME, OUTPUT_NAME

FP32_MAX_ABS_DIFF = 1e-3
# A sanity floor, not an accuracy target: correct INT8 ResNet18 logits keep a cosine near 0.999
# with their FP32 counterparts; below this the scales are broken (e.g. unrepresentative
# calibration data) and the model must not ship.
INT8_MIN_LOGIT_COSINE = 0.95
UNTRAINED_NOTE = (
    "UNTRAINED MODEL: random weights; its predictions are meaningless and only the agreement "
    "between runtimes is being checked"
)


def ort_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only; ORT's warnings are not actionable here
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
    (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
    return np.asarray(logits, dtype=np.float32)


def run_torch(model: nn.Module, batch: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(batch)).numpy().astype(np.float32)


def _top_k(logits: np.ndarray, k: int) -> np.ndarray:
    k = min(k, logits.shape[-1])
    # Stable sort: ties resolve the same way for both runtimes.
    return np.argsort(-logits, axis=-1, kind="stable")[..., :k]


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    denominator = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.asarray((a * b).sum(axis=-1) / np.maximum(denominator, 1e-12))


def compare(
    reference: np.ndarray,
    candidate: np.ndarray,
    image_names: Sequence[str],
    labels: Sequence[str],
) -> dict[str, Any]:
    """Agreement metrics between two [N, classes] logit arrays for the same N images."""
    top1_ref, top1_cand = _top_k(reference, 1)[:, 0], _top_k(candidate, 1)[:, 0]
    top5_ref, top5_cand = _top_k(reference, 5), _top_k(candidate, 5)
    k = top5_ref.shape[1]
    overlap = [len(set(a) & set(b)) / k for a, b in zip(top5_ref, top5_cand, strict=True)]
    abs_diff = np.abs(reference - candidate).max(axis=-1)
    ordered = np.sort(reference, axis=-1)
    # How far the reference winner is ahead of the runner-up: a flip needs a diff this large.
    margins = ordered[:, -1] - ordered[:, -2] if reference.shape[1] > 1 else ordered[:, -1]
    cosine = _cosine(reference, candidate)
    per_image = [
        {
            "image": name,
            "reference_top1": labels[int(r)],
            "candidate_top1": labels[int(c)],
            "top1_match": bool(r == c),
            "top5_overlap": round(o, 4),
            "max_abs_logit_diff": float(d),
            "reference_top1_margin": float(m),
            "logit_cosine": float(cos),
        }
        for name, r, c, o, d, m, cos in zip(
            image_names, top1_ref, top1_cand, overlap, abs_diff, margins, cosine, strict=True
        )
    ]
    return {
        "num_images": len(image_names),
        "max_abs_logit_diff": float(abs_diff.max()),
        "top1_agreement": float(np.mean(top1_ref == top1_cand)),
        "top5_overlap_mean": float(np.mean(overlap)),
        "top5_overlap_min": float(np.min(overlap)),
        "logit_cosine_mean": float(np.mean(cosine)),
        "logit_cosine_min": float(np.min(cosine)),
        "min_reference_top1_margin": float(margins.min()),
        "per_image": per_image,
    }


def verify_fp32(
    model: nn.Module,
    onnx_path: Path,
    batch: np.ndarray,
    image_names: Sequence[str],
    labels: Sequence[str],
    *,
    trained: bool,
) -> dict[str, Any]:
    """ONNX Runtime vs PyTorch eager on the identical tensor; raises ExportError on disagreement."""
    session = ort_session(onnx_path)
    expected = run_torch(model, batch)
    got = run_onnx(session, batch)
    if got.shape != expected.shape:
        raise ExportError(
            f"verification failed: ONNX output shape {got.shape} != PyTorch {expected.shape}"
        )
    report = compare(expected, got, image_names, labels)
    # The batch dimension is dynamic: one image alone must give the same row as in the batch.
    single = run_onnx(session, batch[:1])
    report["batch_of_one_max_abs_diff"] = float(np.abs(single[0] - got[0]).max())
    report.update(
        {
            "kind": "fp32: ONNX Runtime vs PyTorch eager, identical preprocessed input",
            "tolerance_max_abs_logit_diff": FP32_MAX_ABS_DIFF,
            "required_top1_agreement": 1.0,
            "weights_trained": trained,
            "onnxruntime_providers": session.get_providers(),
        }
    )
    if not trained:
        report["note"] = UNTRAINED_NOTE
    failures = []
    if not np.isfinite(got).all():
        failures.append("ONNX Runtime produced non-finite logits")
    if report["max_abs_logit_diff"] > FP32_MAX_ABS_DIFF:
        failures.append(
            f"max abs logit diff {report['max_abs_logit_diff']:.3g} > {FP32_MAX_ABS_DIFF}"
        )
    if report["batch_of_one_max_abs_diff"] > FP32_MAX_ABS_DIFF:
        failures.append(
            f"batch-of-one differs from batched run by {report['batch_of_one_max_abs_diff']:.3g}"
        )
    mismatched = [row["image"] for row in report["per_image"] if not row["top1_match"]]
    if mismatched:
        failures.append(f"top-1 differs on {', '.join(mismatched)}")
    report["passed"] = not failures
    report["failures"] = failures
    return report


def paired_median_latency_ms(
    first: ort.InferenceSession,
    second: ort.InferenceSession,
    sample: np.ndarray,
    runs: int,
    warmup: int = 2,
) -> tuple[float, float]:
    """Median latency of each session, runs interleaved so both see the same machine noise."""
    for _ in range(warmup):
        run_onnx(first, sample)
        run_onnx(second, sample)
    timings: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for session, bucket in ((first, timings[0]), (second, timings[1])):
            start = time.perf_counter()
            run_onnx(session, sample)
            bucket.append((time.perf_counter() - start) * 1000.0)
    return float(statistics.median(timings[0])), float(statistics.median(timings[1]))


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def int8_dot_product_flags() -> list[str]:
    """This CPU's 8-bit dot-product features: the speed-up below depends on them.

    x86 VNNI (avx512_vnni, avx_vnni) multiplies u8 x s8 natively; arm64 has asimddp (udot/sdot)
    and i8mm. Empty where /proc/cpuinfo is unreadable (not Linux) or none are present.
    """
    wanted = ("avx512_vnni", "avx_vnni", "avx2", "asimddp", "i8mm")
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return []
    found: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            found.update(value.split())
    return [flag for flag in wanted if flag in found]


def verify_int8(
    fp32_path: Path,
    int8_path: Path,
    batch: np.ndarray,
    image_names: Sequence[str],
    labels: Sequence[str],
    *,
    trained: bool,
    calibration: str,
    scheme: str = "",
    runs: int = 15,
) -> dict[str, Any]:
    """INT8 vs the verified FP32 ONNX model: agreement, size and speed-up on this machine."""
    threads = default_threads()
    fp32 = ort_session(fp32_path, threads)
    int8 = ort_session(int8_path, threads)
    reference = run_onnx(fp32, batch)
    got = run_onnx(int8, batch)
    if got.shape != reference.shape or not np.isfinite(got).all():
        raise ExportError(
            f"INT8 verification failed: output shape {got.shape} (expected {reference.shape}) "
            "or non-finite logits"
        )
    report = compare(reference, got, image_names, labels)
    sample = batch[:1]
    fp32_ms, int8_ms = paired_median_latency_ms(fp32, int8, sample, runs)
    fp32_size, int8_size = fp32_path.stat().st_size, int8_path.stat().st_size
    report.update(
        {
            "kind": "int8: ONNX Runtime INT8 vs ONNX Runtime FP32, identical preprocessed input",
            "calibration": calibration,
            "scheme": scheme,
            "fp32_size_bytes": fp32_size,
            "int8_size_bytes": int8_size,
            "size_ratio": round(int8_size / fp32_size, 4),
            "latency_batch1_median_ms": {"fp32": round(fp32_ms, 3), "int8": round(int8_ms, 3)},
            "speedup": round(fp32_ms / int8_ms, 3),
            "cpu_int8_flags": int8_dot_product_flags(),
            "timing": f"median of {runs} interleaved runs, batch 1, {threads} intra-op threads "
            "each, measured on the machine that ran the export",
            "weights_trained": trained,
            "required_min_logit_cosine": INT8_MIN_LOGIT_COSINE,
        }
    )
    if not trained:
        report["note"] = (
            UNTRAINED_NOTE + "; agreement measured on an untrained model says little about "
            "INT8 accuracy on a trained one"
        )
    failures = []
    if report["logit_cosine_min"] < INT8_MIN_LOGIT_COSINE:
        failures.append(
            f"INT8 logits diverge from FP32 (min cosine {report['logit_cosine_min']:.3f} < "
            f"{INT8_MIN_LOGIT_COSINE}); calibrate with representative images "
            "(--calibration-dir) or ship FP32"
        )
    report["passed"] = not failures
    report["failures"] = failures
    return report
