"""``python -m bench --quick`` end to end on real exported models: JSON shape and sane relations.

No absolute timing is asserted (shared, noisy CPUs); only relations that hold by construction
(a p99 is never below its p50, INIT phases add up within the total, batch fields are present).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("handler_fp32", "handler_int8", "naive_fp32", "torch_fp32")
CASES = ("jpeg_640x480", "jpeg_12mp", "png_640x480")


@pytest.fixture(scope="module")
def quick_run(fp32_model_dir: Path, int8_model_dir: Path, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--fp32-dir",
            str(fp32_model_dir),
            "--int8-dir",
            str(int8_model_dir),
            "--build",
            str(work / "build"),
            "--results",
            str(work / "results"),
            "--plot",
            str(work / "plot.png"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=400,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    latest = json.loads((work / "results" / "latest-quick.json").read_text())
    return {"result": latest, "stdout": proc.stdout, "work": work}


@pytest.mark.slow
def test_quick_run_reports_every_variant_and_case(quick_run: dict) -> None:
    res = quick_run["result"]
    for variant in VARIANTS:
        for case in CASES:
            s = res["warm"][variant][case]
            assert s["n"] >= 2
            assert 0 < s["min"] <= s["p50"] <= s["p90"] <= s["p99"]
    # The real handler reports its own breakdown, inside the measured wall time.
    inner = res["warm"]["handler_fp32"]["jpeg_640x480"]["handler_timings_p50"]
    # (medians of parts need not add up to the median total, but neither part exceeds it)
    assert 0 < inner["decode_preprocess"] <= inner["total"]
    assert 0 < inner["inference"] <= inner["total"]
    assert inner["total"] <= res["warm"]["handler_fp32"]["jpeg_640x480"]["p99"]
    for key in ("handler_fp32_path", "handler_int8_path", "handler_fp32_bare", "torch_fp32_bare"):
        for size in ("1", "4", "8"):
            t = res["throughput"][key][size]
            assert t["images_per_s"] == pytest.approx(int(size) * 1000 / t["p50_ms"], rel=0.01)


@pytest.mark.slow
def test_quick_run_cold_starts_fidelity_flops_and_targets(quick_run: dict) -> None:
    res = quick_run["result"]
    fp32_size = res["models"]["fp32"]["size_bytes"]
    for name in ("handler_fp32", "handler_int8"):
        cold = res["cold"][name]
        assert cold["phases_ms"]["download_ms"] > 0  # fresh /tmp: fetched from the S3 server
        assert sum(cold["phases_ms"].values()) == pytest.approx(cold["total_ms"], abs=1.0)
        assert cold["process_wall_ms"] >= cold["total_ms"]
    assert res["cold"]["handler_fp32"]["downloaded_bytes"] == fp32_size
    assert res["cold"]["torch_fp32"]["phases_ms"]["imports_ms"] > 0
    # The handler logs the CPU's SIMD features at cold start: they must be this CPU's own.
    logged = res["cold"]["cpu_features_logged"]
    cpuinfo = Path("/proc/cpuinfo").read_text()
    flags = set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    assert logged["flags"]
    assert set(logged["flags"]) <= flags
    if "avx512_vnni" in flags:  # the benchmark machine; the INT8 target applies
        assert "avx512_vnni" in logged["flags"]
        assert next(t for t in res["targets"] if t["ratio"] == "fp32_over_int8_handler")[
            "status"
        ] in ("PASS", "MISS")

    fid = res["fidelity"]
    assert len(fid["images"]) >= 8
    assert 0 <= fid["top1_agreement"] <= 1
    assert 0 <= fid["top5_overlap_mean"] <= 1
    assert -1 <= fid["logit_cosine_min"] <= fid["logit_cosine_mean"] <= 1
    # The same weights through PyTorch and ONNX Runtime: the comparison is apples to apples.
    assert res["torch_vs_onnx_fp32_max_abs_logit_diff"] < 1e-2

    assert res["flops"]["gmacs"] == pytest.approx(1.814, rel=0.002)
    for entry in res["efficiency"]["achieved"].values():
        assert entry["gflops"] == pytest.approx(
            entry["images_per_s"] * res["flops"]["gflops"], rel=0.01
        )
    statuses = {t["ratio"]: t["status"] for t in res["targets"]}
    assert set(statuses) == {
        "torch_over_handler_fp32",
        "handler_over_bare_fp32",
        "12mp_over_typical_fp32",
        "fp32_over_int8_handler",
        "cold_fp32_over_torch",
        "ratio_s3_server_cpu_removed",
    }
    assert set(statuses.values()) <= {"PASS", "MISS", "N/A"}
    batch = res["batch"]
    for path in ("realtime", "s3", "memory"):
        entry = batch[path]
        assert entry["images"] > 0
        assert entry["images_per_s"] == pytest.approx(entry["images"] / entry["seconds"], rel=0.01)
        assert entry["images_per_s_per_vcpu"] == pytest.approx(
            entry["images_per_s"] / batch["threads"], rel=0.01
        )
    assert batch["ratio_s3"] == pytest.approx(
        batch["s3"]["images_per_s_per_vcpu"] / batch["realtime"]["images_per_s_per_vcpu"], rel=0.01
    )
    assert batch["batch_worker"]["threads"] == batch["threads"]
    # Removing the S3 server's CPU can only leave the worker fewer vCPU-seconds.
    assert batch["s3_server_cpu_removed"]["seconds"] <= batch["s3"]["seconds"]
    assert batch["s3"]["server_cpu_ms_per_image"] > 0
    # Issue #12's attribution: every stage of every handler worker, before and after, per image.
    from bench.stages import STAGES

    attribution = res["attribution"]
    assert {"handler_fp32", "handler_int8"} <= set(attribution)
    if res["reference"]["measured"]:  # git could extract the reference revision
        assert {"handler_fp32_before", "handler_int8_before"} <= set(attribution)
        assert "handler_over_bare_fp32_before" in res["ratios"]
    for per_case in attribution.values():
        for case in CASES:
            stages = per_case[case]["p50_ms"]
            assert set(stages) == set(STAGES)
            assert all(v >= 0 for v in stages.values())
            assert per_case[case]["non_model_sum_ms"] == pytest.approx(
                sum(stages.values()), abs=0.01
            )
    # The current handler skips the Tracer wrapper when tracing is off (it is in the bench).
    assert all(attribution["handler_fp32"][c]["p50_ms"]["pt_tracer_capture"] == 0 for c in CASES)
    for line in (
        "Warm latency",
        "Cold INIT",
        "Targets",
        "Batch vs real-time",
        "Non-model time per stage",
    ):
        assert line in quick_run["stdout"]
    assert (quick_run["work"] / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_get_one_line_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--fp32-dir",
            str(empty),
            "--int8-dir",
            str(empty),
            "--build",
            str(tmp_path / "b"),
            "--results",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error:")
    assert "model.onnx" in proc.stderr
    assert "Traceback" not in proc.stderr
    half = subprocess.run(
        [sys.executable, "-m", "bench", "--fp32-dir", str(empty)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert half.returncode == 2
    assert "--int8-dir" in half.stderr


def test_percentiles_match_numpy() -> None:
    import numpy as np

    from bench.common import percentile, summary

    values = [float(v) for v in np.random.default_rng(3).lognormal(3, 0.5, 257)]
    for q in (0, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    s = summary(values)
    assert s["p50"] == pytest.approx(np.median(values), abs=1e-3)
    assert s["n"] == 257
