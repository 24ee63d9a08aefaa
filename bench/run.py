"""``python -m bench``: every serving variant side by side in one run on this machine.

The driver (this process) never runs a model itself. It starts one warm worker process per
variant (bench/worker.py) and interleaves them in short blocks, so drift and neighbours' noise on
a shared machine hit every variant alike; all variants get the same number of threads. Cold
starts run in fresh interpreters (bench/coldstart.py) against a moto S3 server on 127.0.0.1.
Results: tables on stdout, bench/results/bench-<date>.json + latest.json, and a PNG plot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import BUILD, CASES, LAMBDA_SRC, PLOT, RESULTS, ROOT, make_images, summary

PY = sys.executable
SCHEMA_VERSION = 1


class BenchError(Exception):
    """A one-line reason the benchmark could not run."""


# ---------------------------------------------------------------- settings


def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "rounds": 2,
            "min_rounds": 2,
            "max_phase_s": 30,
            "block": {"jpeg_640x480": 3, "png_640x480": 2, "jpeg_12mp": 1},
            "bare_block": 3,
            "budget_ms": 100,
            "batch_rounds": 1,
            "cold_rounds": 1,
            "one_cpu_rounds": 0,
            "peak_repeats": 3,
            "attr_rounds": 1,
            "attr_block": {"jpeg_640x480": 2, "png_640x480": 1, "jpeg_12mp": 1},
        }
    return {
        # Rounds stop early once a phase has run max_phase_s (after min_rounds), so a loaded
        # machine gives fewer samples rather than a run of many minutes.
        "rounds": 40,
        "min_rounds": 8,
        "max_phase_s": 100,
        "block": {"jpeg_640x480": 5, "png_640x480": 3, "jpeg_12mp": 2},
        "bare_block": 5,
        "budget_ms": 250,
        "batch_rounds": 12,
        "cold_rounds": 3,
        "one_cpu_rounds": 20,
        "peak_repeats": 12,
        "attr_rounds": 8,
        "attr_block": {"jpeg_640x480": 5, "png_640x480": 3, "jpeg_12mp": 2},
    }


# ---------------------------------------------------------------- workers


class Worker:
    def __init__(self, name: str, spec: dict[str, Any]) -> None:
        self.name = name
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [PY, "-m", "bench.worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            cwd=ROOT,
            env=env,
        )
        self.info: dict[str, Any] = {}

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.stderr.seek(0)
            tail = self.stderr.read().decode(errors="replace").strip().splitlines()[-5:]
            raise BenchError(f"worker {self.name} died: " + " | ".join(tail))
        reply = json.loads(line)
        if "error" in reply:
            raise BenchError(f"worker {self.name}: {reply['error']}")
        return reply

    def ready(self) -> dict[str, Any]:
        self.info = self._read()
        return self.info

    def call(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.call(cmd="quit")
        except (BenchError, BrokenPipeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.stderr.close()


# ---------------------------------------------------------------- measurements


def rotate(items: list[Any], k: int) -> list[Any]:
    k %= len(items)
    return items[k:] + items[:k]


def rounds(cfg: dict[str, Any], log: Any, what: str, key: str = "rounds") -> Any:
    """Round numbers, stopping early (after min_rounds) once the phase used max_phase_s."""
    started = time.perf_counter()
    total = cfg[key]
    for r in range(total):
        elapsed = time.perf_counter() - started
        if r >= min(cfg["min_rounds"], total) and elapsed > cfg["max_phase_s"]:
            log(f"  {what}: stopped after {r} rounds ({elapsed:.0f} s; machine busy?)")
            return
        yield r
    log(f"  {what}: {total} rounds in {time.perf_counter() - started:.0f} s")


def warm_latency(
    workers: dict[str, Worker], images: dict[str, Path], cfg: dict[str, Any], log: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Whole-path latency per variant and case, plus bare inference, interleaved in blocks."""
    lat: dict[str, dict[str, list[float]]] = {n: {c: [] for c in CASES} for n in workers}
    inner: dict[str, dict[str, list[dict[str, float]]]] = {
        n: {c: [] for c in CASES} for n in workers
    }
    bare: dict[str, list[float]] = {n: [] for n in workers}
    names = list(workers)
    typical = str(images["jpeg_640x480"])
    budget = cfg["budget_ms"]
    for r in rounds(cfg, log, "warm latency"):
        for case in CASES:
            for name in rotate(names, r):
                reply = workers[name].call(
                    cmd="latency", case=case, n=cfg["block"][case], budget_ms=budget
                )
                lat[name][case] += reply["ms"]
                inner[name][case] += reply["inner"]
        for name in rotate(names, r):
            bare[name] += workers[name].call(
                cmd="bare", batch=1, n=cfg["bare_block"], image=typical, budget_ms=budget
            )["ms"]
    warm: dict[str, Any] = {}
    for name in names:
        warm[name] = {}
        for case in CASES:
            entry = summary(lat[name][case])
            if inner[name][case]:
                entry["handler_timings_p50"] = {
                    key: round(statistics.median(t[key] for t in inner[name][case]), 3)
                    for key in inner[name][case][0]
                }
            warm[name][case] = entry
    return warm, {name: summary(values) for name, values in bare.items()}


def one_cpu_latency(workers: dict[str, Worker], cfg: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, list[float]] = {n: [] for n in workers}
    for r in rounds(cfg, lambda _m: None, "one vCPU", "one_cpu_rounds"):
        for name in rotate(list(workers), r):
            out[name] += workers[name].call(
                cmd="latency", case="jpeg_640x480", n=5, budget_ms=cfg["budget_ms"]
            )["ms"]
    return {name: summary(values) for name, values in out.items()}


def attribution(workers: dict[str, Worker], cfg: dict[str, Any], log: Any) -> dict[str, Any]:
    """Per-stage non-model ms of each handler worker's own path (bench/stages.py), interleaved."""
    from bench.stages import STAGES, summarize

    samples: dict[str, dict[str, dict[str, list[float]]]] = {
        n: {c: {s: [] for s in STAGES} for c in CASES} for n in workers
    }
    for r in rounds(cfg, log, "attribution", "attr_rounds"):
        for case in CASES:
            for name in rotate(list(workers), r):
                reply = workers[name].call(
                    cmd="stages", case=case, n=cfg["attr_block"][case], budget_ms=cfg["budget_ms"]
                )
                for stage, values in reply["samples"].items():
                    samples[name][case][stage] += values
    return {n: {c: summarize(per_case[c]) for c in CASES} for n, per_case in samples.items()}


def throughput(
    workers: dict[str, Worker], images: dict[str, Path], cfg: dict[str, Any]
) -> dict[str, Any]:
    """images/s at batch 1, 4, 8: the handler path ({"images": [...]}) and the bare model."""
    samples: dict[str, dict[int, list[float]]] = {}
    typical = str(images["jpeg_640x480"])
    budget = cfg["budget_ms"]
    for r in rounds(cfg, lambda _m: None, "throughput", "batch_rounds"):
        for size in (1, 4, 8):
            for name in rotate(list(workers), r):
                worker = workers[name]
                if name.startswith("handler"):
                    ms = worker.call(
                        cmd="batch", image="jpeg_640x480", size=size, n=2, budget_ms=budget
                    )["ms"]
                    samples.setdefault(f"{name}_path", {}).setdefault(size, []).extend(ms)
                ms = worker.call(cmd="bare", batch=size, n=2, image=typical, budget_ms=budget)["ms"]
                samples.setdefault(f"{name}_bare", {}).setdefault(size, []).extend(ms)
    out: dict[str, Any] = {}
    for key, per_size in samples.items():
        out[key] = {
            str(size): {
                "p50_ms": round(statistics.median(ms), 3),
                "images_per_s": round(size * 1000.0 / statistics.median(ms), 2),
                "n": len(ms),
            }
            for size, ms in per_size.items()
        }
    return out


def cold_starts(
    model_dirs: dict[str, Path], threads: int, state_dict: Path, cfg: dict[str, Any], log: Any
) -> dict[str, Any]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request

    from model_export import publish

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    aws = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": endpoint,
    }
    saved = {k: os.environ.get(k) for k in aws}
    os.environ.update(aws)
    runs: dict[str, list[dict[str, Any]]] = {
        "handler_fp32": [],
        "handler_int8": [],
        "torch_fp32": [],
    }
    cpu_logged: Any = None
    try:
        import boto3

        boto3.client("s3").create_bucket(Bucket="bench-models")
        keys = {}
        for name, directory in model_dirs.items():
            bucket, key = publish(directory, "s3://bench-models/models", log=lambda _m: None)
            sha = json.loads((directory / "manifest.json").read_text())["sha256"]
            keys[name] = (bucket, key, sha)
        with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
            for r in rounds(cfg, log, "cold starts", "cold_rounds"):
                for name in rotate(list(runs), r):
                    out = Path(tmp) / f"{name}-{r}.json"
                    if name == "torch_fp32":
                        spec = {
                            "threads": threads,
                            "state_dict": str(state_dict),
                            "num_classes": json.loads(
                                (model_dirs["fp32"] / "manifest.json").read_text()
                            )["num_classes"],
                        }
                        kind = "torch"
                    else:
                        bucket, key, sha = keys[name.removeprefix("handler_")]
                        env = {
                            **aws,
                            "MODEL_BUCKET": bucket,
                            "MODEL_KEY": key,
                            "MODEL_SHA256": sha,
                            "MODEL_CACHE_DIR": str(Path(tmp) / f"cache-{name}-{r}"),  # empty /tmp
                            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(threads * 1769),
                            "POWERTOOLS_SERVICE_NAME": "bench",
                            "POWERTOOLS_TRACE_DISABLED": "true",
                        }
                        spec = {"env": env, "lambda_src": str(LAMBDA_SRC)}
                        kind = "handler"
                    t0 = time.perf_counter()
                    proc = subprocess.run(
                        [PY, "-m", "bench.coldstart", kind, json.dumps(spec), str(out)],
                        capture_output=True,
                        text=True,
                        cwd=ROOT,
                        env={**os.environ, "PYTHONPATH": str(ROOT)},
                        timeout=300,
                        check=False,
                    )
                    wall = (time.perf_counter() - t0) * 1000.0
                    if proc.returncode != 0 or not out.is_file():
                        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
                        raise BenchError(f"cold start {name} failed: {tail}")
                    result = json.loads(out.read_text())
                    result["process_wall_ms"] = round(wall, 1)
                    runs[name].append(result)
                    if kind == "handler" and cpu_logged is None:
                        cpu_logged = _logged_cpu(proc.stdout)
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    cold: dict[str, Any] = {}
    for name, results in runs.items():
        phases = results[0]["phases"].keys()
        cold[name] = {
            "runs": len(results),
            "total_ms": round(statistics.median(r["total_ms"] for r in results), 1),
            "phases_ms": {
                p: round(statistics.median(r["phases"][p] for r in results), 1) for p in phases
            },
            "process_wall_ms": round(statistics.median(r["process_wall_ms"] for r in results), 1),
            "max_rss_mb": round(max(r["max_rss_mb"] for r in results), 1),
            "threads": results[0]["threads"],
        }
        if "downloaded_bytes" in results[0]:
            cold[name]["downloaded_bytes"] = results[0]["downloaded_bytes"]
    cold["cpu_features_logged"] = cpu_logged
    return cold


def _logged_cpu(stdout: str) -> Any:
    """The CPU features the handler logged in its 'Model ready' cold-start line, if it did."""
    for line in stdout.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("message") == "Model ready":
            return record.get("cpu")
    return None


def fidelity(fp32: list[list[float]], int8: list[list[float]], names: list[str]) -> dict[str, Any]:
    import numpy as np

    a = np.asarray(fp32)
    b = np.asarray(int8)
    top1 = a.argmax(1) == b.argmax(1)
    top5a = np.argsort(-a, axis=1)[:, :5]
    top5b = np.argsort(-b, axis=1)[:, :5]
    overlap = [len(set(x) & set(y)) / 5 for x, y in zip(top5a, top5b, strict=True)]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {
        "images": names,
        "top1_agreement": round(float(top1.mean()), 4),
        "top5_overlap_mean": round(float(np.mean(overlap)), 4),
        "logit_cosine_mean": round(float(cos.mean()), 5),
        "logit_cosine_min": round(float(cos.min()), 5),
    }


def max_abs_diff(x: list[list[float]], y: list[list[float]]) -> float:
    import numpy as np

    return float(np.abs(np.asarray(x) - np.asarray(y)).max())


def peak_gflops(threads: int, repeats: int) -> dict[str, Any]:
    results = {}
    for t in sorted({1, threads}):
        proc = subprocess.run(
            [PY, "-m", "bench.peak", str(t), str(repeats)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        results[str(t)] = json.loads(proc.stdout)
    return results


def machine(threads: int) -> dict[str, Any]:
    from importlib import metadata

    sys.path.insert(0, str(LAMBDA_SRC))
    import model_store

    versions = {}
    for pkg in ("onnxruntime", "numpy", "pillow", "torch", "torchvision"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": model_store.cpu_features(),
        "arch": platform.machine(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "threads": threads,
        "python": platform.python_version(),
        "versions": versions,
        # Other tenants' load skews absolute numbers; ratios from interleaved runs much less.
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
    }


# ---------------------------------------------------------------- targets


def ratios_and_targets(res: dict[str, Any]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    warm, bare, cold = res["warm"], res["bare_batch1"], res["cold"]
    hf = warm["handler_fp32"]
    p50 = {name: {c: warm[name][c]["p50"] for c in CASES} for name in warm}
    typical = "jpeg_640x480"
    ratios = {
        "torch_over_handler_fp32": p50["torch_fp32"][typical] / hf[typical]["p50"],
        "naive_over_handler_fp32": p50["naive_fp32"][typical] / hf[typical]["p50"],
        "naive_over_handler_fp32_12mp": p50["naive_fp32"]["jpeg_12mp"] / hf["jpeg_12mp"]["p50"],
        "torch_over_handler_fp32_12mp": p50["torch_fp32"]["jpeg_12mp"] / hf["jpeg_12mp"]["p50"],
        # Per request: wall time minus the inference time the handler measured around
        # session.run in the same request, over bare inference p50. Pairing within one request
        # keeps neighbours' noise out of the difference.
        "overhead_fraction_fp32": hf[typical]["handler_timings_p50"]["outside_model"]
        / bare["handler_fp32"]["p50"],
        "overhead_fraction_int8": warm["handler_int8"][typical]["handler_timings_p50"][
            "outside_model"
        ]
        / bare["handler_int8"]["p50"],
        "overhead_fraction_fp32_unpaired": (hf[typical]["p50"] - bare["handler_fp32"]["p50"])
        / bare["handler_fp32"]["p50"],
        # Issue #12's target: the whole path over bare session.run, typical JPEG, FP32.
        "handler_over_bare_fp32": hf[typical]["p50"] / bare["handler_fp32"]["p50"],
        "12mp_over_typical_fp32": hf["jpeg_12mp"]["p50"] / hf[typical]["p50"],
        "png_over_jpeg_fp32": hf["png_640x480"]["p50"] / hf[typical]["p50"],
        "fp32_over_int8_handler": hf[typical]["p50"] / warm["handler_int8"][typical]["p50"],
        "fp32_over_int8_bare": bare["handler_fp32"]["p50"] / bare["handler_int8"]["p50"],
        "cold_fp32_over_torch": cold["handler_fp32"]["total_ms"] / cold["torch_fp32"]["total_ms"],
        "cold_int8_over_torch": cold["handler_int8"]["total_ms"] / cold["torch_fp32"]["total_ms"],
        "torch_mean_over_handler_fp32_mean": warm["torch_fp32"][typical]["mean"]
        / hf[typical]["mean"],
        "torch_p99_over_handler_fp32_p99": warm["torch_fp32"][typical]["p99"] / hf[typical]["p99"],
    }
    if "handler_int8_s8s8" in warm:
        s8 = warm["handler_int8_s8s8"][typical]["p50"]
        ratios["fp32_over_int8_s8s8_handler"] = hf[typical]["p50"] / s8
        ratios["torch_over_handler_int8_s8s8"] = p50["torch_fp32"][typical] / s8
        ratios["fp32_over_int8_s8s8_bare"] = (
            bare["handler_fp32"]["p50"] / bare["handler_int8_s8s8"]["p50"]
        )
    if "handler_fp32_before" in warm:  # the same ratios for the reference path (before)
        hb, ib = warm["handler_fp32_before"], warm["handler_int8_before"]
        ratios["handler_over_bare_fp32_before"] = hb[typical]["p50"] / bare["handler_fp32"]["p50"]
        ratios["12mp_over_typical_fp32_before"] = hb["jpeg_12mp"]["p50"] / hb[typical]["p50"]
        ratios["fp32_over_int8_handler_before"] = hb[typical]["p50"] / ib[typical]["p50"]
        ratios["before_over_after_fp32"] = hb[typical]["p50"] / hf[typical]["p50"]
        ratios["before_over_after_int8"] = ib[typical]["p50"] / warm["handler_int8"][typical]["p50"]
    ratios = {k: round(v, 3) for k, v in ratios.items()}
    vnni = (
        "avx512_vnni" in res["machine"]["cpu"]["flags"]
        or "avx_vnni" in res["machine"]["cpu"]["flags"]
    )
    spec = [
        (
            "FP32 handler warm p50 vs PyTorch eager+torchvision (x faster)",
            "torch_over_handler_fp32",
            ">=",
            1.4,
            True,
        ),
        (
            "Handler p50 / bare ORT p50, typical JPEG (FP32)",
            "handler_over_bare_fp32",
            "<=",
            1.15,
            True,
        ),
        ("12 MP JPEG total / typical JPEG total (FP32)", "12mp_over_typical_fp32", "<=", 2.0, True),
        (
            "INT8 handler vs FP32 handler (x faster, VNNI CPU)",
            "fp32_over_int8_handler",
            ">=",
            2.5,
            vnni,
        ),
        ("Cold INIT FP32 / PyTorch eager cold start", "cold_fp32_over_torch", "<=", 1 / 3, True),
    ]
    targets = []
    for title, key, op, threshold, applies in spec:
        value = ratios[key]
        met = value >= threshold if op == ">=" else value <= threshold
        status = ("PASS" if met else "MISS") if applies else "N/A"
        targets.append(
            {
                "target": title,
                "ratio": key,
                "measured": value,
                "op": op,
                "threshold": round(threshold, 3),
                "status": status,
            }
        )
    return ratios, targets


# ---------------------------------------------------------------- output


def fmt_table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for i, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


LABELS = {
    "handler_fp32": "handler FP32",
    "handler_int8": "handler INT8",
    "naive_fp32": "naive handler FP32",
    "torch_fp32": "PyTorch eager FP32",
    "handler_fp32_1cpu": "handler FP32, 1 vCPU",
    "handler_int8_1cpu": "handler INT8, 1 vCPU",
    "handler_int8_s8s8": "handler INT8 S8S8 (alternative)",
    "handler_fp32_before": "handler FP32, before #12 (reference)",
    "handler_int8_before": "handler INT8, before #12 (reference)",
}


ATTRIBUTION_COLUMNS = (
    ("handler_fp32_before", "FP32 2t before"),
    ("handler_fp32", "FP32 2t"),
    ("handler_int8_before", "INT8 2t before"),
    ("handler_int8", "INT8 2t"),
    ("handler_fp32_1cpu", "FP32 1t"),
    ("handler_int8_1cpu", "INT8 1t"),
)


def attribution_tables(res: dict[str, Any]) -> list[str]:
    """One table per image: non-model ms per stage (p50), before (reference) and after."""
    from bench.stages import LABELS as STAGE_LABELS
    from bench.stages import STAGES

    attr = res.get("attribution") or {}
    columns = [(k, title) for k, title in ATTRIBUTION_COLUMNS if k in attr]
    if not columns:
        return []
    out = []
    for case in CASES:
        rows = [
            [STAGE_LABELS[stage]]
            + [f"{attr[k][case]['p50_ms'].get(stage, 0.0):.3f}" for k, _ in columns]
            for stage in STAGES
        ]
        rows.append(
            ["sum of the stages above"]
            + [f"{attr[k][case]['non_model_sum_ms']:.2f}" for k, _ in columns]
        )
        rows.append(
            ["outside model, paired (wall - inference)"]
            + [
                f"{res['warm'][k][case]['handler_timings_p50']['outside_model']:.2f}"
                if k in res["warm"]
                else "-"
                for k, _ in columns
            ]
        )
        rows.append(
            ["whole path p50 (warm)"]
            + [
                f"{res['warm'][k][case]['p50']:.2f}" if k in res["warm"] else "-"
                for k, _ in columns
            ]
        )
        out.append(
            f"Non-model time per stage, {CASES[case][1]}, p50 ms (before = the path at "
            f"{res.get('reference', {}).get('rev', '?')[:12]}, measured in this run):\n"
            + fmt_table(["stage"] + [title for _, title in columns], rows)
        )
    return out


def tables(res: dict[str, Any]) -> str:
    out = []
    hf = res["warm"]["handler_fp32"]
    rows = []
    for name, per_case in res["warm"].items():
        row = [LABELS[name]]
        for case in CASES:
            s = per_case[case]
            ratio = s["p50"] / hf[case]["p50"]
            row.append(f"{s['p50']:.1f} / {s['p99']:.1f} ({ratio:.2f}x)")
        rows.append(row)
    out.append(
        "Warm latency, whole path (event in -> response out), ms p50 / p99 (vs handler FP32):\n"
        + fmt_table(["variant"] + [CASES[c][1] for c in CASES], rows)
    )
    rows = []
    for name in ("handler_fp32", "handler_int8"):
        for case in CASES:
            t = res["warm"][name][case]["handler_timings_p50"]
            rows.append(
                [
                    LABELS[name],
                    CASES[case][1],
                    f"{t['decode_preprocess']:.2f}",
                    f"{t['inference']:.2f}",
                    f"{t['outside_model']:.2f}",
                ]
            )
    out.append(
        "Handler breakdown, p50 ms (decode+preprocess and inference as the handler times them; "
        "outside model = wall - inference, per request):\n"
        + fmt_table(["variant", "image", "decode+preprocess", "inference", "outside model"], rows)
    )
    out += attribution_tables(res)
    rows = [
        [LABELS[n], f"{s['p50']:.2f}", f"{s['p99']:.2f}"] for n, s in res["bare_batch1"].items()
    ]
    out.append(
        "Bare inference (session.run / model(x)), batch 1, ms:\n"
        + fmt_table(["variant", "p50", "p99"], rows)
    )
    if res.get("one_cpu"):
        rows = [
            [LABELS[n], f"{s['p50']:.1f}", f"{s['p99']:.1f}"] for n, s in res["one_cpu"].items()
        ]
        out.append(
            "Warm latency on ONE vCPU (1,769 MB Lambda), typical JPEG, ms:\n"
            + fmt_table(["variant", "p50", "p99"], rows)
        )
    rows = []
    for key, per in res["throughput"].items():
        rows.append([key] + [f"{per[s]['images_per_s']:.1f}" for s in ("1", "4", "8")])
    out.append(
        "Throughput, images/s (typical JPEG; _path = whole handler path, _bare = model only):\n"
        + fmt_table(["variant", "batch 1", "batch 4", "batch 8"], rows)
    )
    rows = []
    for name in ("handler_fp32", "handler_int8", "torch_fp32"):
        c = res["cold"][name]
        phases = ", ".join(f"{k.removesuffix('_ms')} {v:.0f}" for k, v in c["phases_ms"].items())
        rows.append(
            [
                name,
                f"{c['total_ms']:.0f}",
                phases,
                f"{c['process_wall_ms']:.0f}",
                f"{c['max_rss_mb']:.0f}",
            ]
        )
    out.append(
        "Cold INIT, fresh process, median ms (phases):\n"
        + fmt_table(["variant", "INIT total", "phases", "process wall", "peak RSS MB"], rows)
    )
    rows = [[LABELS.get(n, n), f"{v:.0f}"] for n, v in res["rss_mb"].items()]
    out.append(
        "Peak RSS of the warm workers after the run, MB:\n" + fmt_table(["variant", "MB"], rows)
    )
    f, e = res["flops"], res["efficiency"]
    out.append(
        f"Physical limit: ResNet18 = {f['gmacs']:.3f} GMACs = {f['gflops']:.2f} GFLOP per image "
        f"(counted from the ONNX graph); measured peak {e['peak_gflops']:.1f} GFLOP/s "
        f"({e['threads']} threads, float32 matmul).\n"
        + fmt_table(
            ["model, batch", "images/s", "GFLOP/s achieved", "% of fp32 peak"],
            [
                [
                    k,
                    f"{v['images_per_s']:.1f}",
                    f"{v['gflops']:.1f}",
                    f"{v['percent_of_peak']:.0f}%",
                ]
                for k, v in e["achieved"].items()
            ],
        )
    )
    fid = res["fidelity"]
    out.append(
        f"INT8 vs FP32 on {len(fid['images'])} photographs: top-1 agreement "
        f"{fid['top1_agreement']:.0%}, top-5 overlap {fid['top5_overlap_mean']:.0%}, logit cosine "
        f"mean {fid['logit_cosine_mean']:.4f} (min {fid['logit_cosine_min']:.4f}); weights "
        f"{res['models']['fp32']['weights_source']} (trained: {res['models']['fp32']['trained']})."
    )
    if res.get("batch"):
        from bench.batch import table as batch_table

        out.append(batch_table(res["batch"]))
    rows = [
        [t["status"], t["target"], f"{t['measured']:.3f}", f"{t['op']} {t['threshold']}"]
        for t in res["targets"]
    ]
    out.append(
        "Targets (ratios from this run):\n" + fmt_table(["", "target", "measured", "goal"], rows)
    )
    r = res["ratios"]
    if "fp32_over_int8_s8s8_handler" in r:
        fu = res["fidelity_s8s8"]
        out.append(
            "Alternative INT8 recipe measured in this run, S8S8 (signed activations, 8-bit "
            "weights; --int8-activations int8 --no-reduce-range, ORT's usual arm64 choice): "
            f"{r['fp32_over_int8_s8s8_handler']:.2f}x faster than the FP32 "
            f"handler (bare {r['fp32_over_int8_s8s8_bare']:.2f}x), "
            f"{r['torch_over_handler_int8_s8s8']:.2f}x faster than PyTorch eager; vs FP32 top-1 "
            f"{fu['top1_agreement']:.0%}, top-5 overlap {fu['top5_overlap_mean']:.0%}, cosine "
            f"{fu['logit_cosine_mean']:.4f}."
        )
    return "\n\n".join(out)


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    variants = [
        v
        for v in ("handler_fp32", "handler_int8", "handler_int8_s8s8", "naive_fp32", "torch_fp32")
        if v in res["warm"]
    ]
    width = 0.8 / len(variants)
    for i, name in enumerate(variants):
        p50 = [res["warm"][name][c]["p50"] for c in CASES]
        p99 = [res["warm"][name][c]["p99"] for c in CASES]
        xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(CASES))]
        ax.bar(xs, p50, width, label=LABELS[name])
        ax.errorbar(
            xs,
            p50,
            yerr=[[0] * len(p50), [b - a for a, b in zip(p50, p99, strict=True)]],
            fmt="none",
            ecolor="black",
            capsize=2,
            linewidth=0.8,
        )
    ax.set_xticks(range(len(CASES)), [CASES[c][1] for c in CASES], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms (bar p50, whisker p99), log scale")
    ax.set_title("Warm latency, whole request path")
    ax.legend(fontsize=8)

    ax = axes[1]
    names = ["handler_fp32", "handler_int8", "torch_fp32"]
    colours: dict[str, Any] = {}
    palette = plt.get_cmap("tab10").colors
    for i, name in enumerate(names):
        bottom = 0.0
        for phase, ms in res["cold"][name]["phases_ms"].items():
            label = phase.removesuffix("_ms")
            new = label not in colours
            colour = colours.setdefault(label, palette[len(colours) % len(palette)])
            ax.bar(i, ms, 0.6, bottom=bottom, color=colour, label=label if new else None)
            if ms > res["cold"]["torch_fp32"]["total_ms"] * 0.04:
                ax.text(
                    i,
                    bottom + ms / 2,
                    phase.removesuffix("_ms"),
                    ha="center",
                    va="center",
                    fontsize=7,
                )
            bottom += ms
    ax.set_xticks(range(len(names)), ["handler FP32", "handler INT8", "PyTorch eager"])
    ax.set_ylabel("ms (median)")
    ax.set_title("Cold INIT in a fresh process")
    ax.legend(fontsize=7, loc="upper left")

    ax = axes[2]
    for key in (
        "handler_fp32_path",
        "handler_int8_path",
        "torch_fp32_bare",
        "handler_fp32_bare",
        "handler_int8_bare",
    ):
        if key in res["throughput"]:
            per = res["throughput"][key]
            ax.plot(
                [1, 4, 8], [per[s]["images_per_s"] for s in ("1", "4", "8")], marker="o", label=key
            )
    ax.set_xticks([1, 4, 8])
    ax.set_xlabel("batch size")
    ax.set_ylabel("images/s")
    ax.set_title(f"Throughput ({res['machine']['threads']} threads)")
    ax.legend(fontsize=7)
    fig.suptitle(
        f"ResNet18 serving on {res['machine']['cpu']['model']} "
        f"({res['machine']['threads']} threads), {res['date'][:10]}"
        + (" [quick]" if res["quick"] else ""),
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main


def model_info(directory: Path) -> dict[str, Any]:
    manifest = json.loads((directory / "manifest.json").read_text())
    return {
        "dir": str(directory),
        "sha256": manifest["sha256"],
        "size_bytes": manifest["size_bytes"],
        "weights_source": manifest["weights"]["source"],
        "trained": manifest["weights"]["trained"],
        "quantization": manifest["quantization"].get("mode"),
    }


def run_batch_phase(
    handler: Worker,
    fp32_dir: Path,
    images: dict[str, Path],
    threads: int,
    args: argparse.Namespace,
    log: Any,
) -> dict[str, Any]:
    """bench/batch.py's comparison, with the warm handler worker this run already has."""
    from bench import batch

    cfg = batch.settings(args.quick)
    image = images[batch.IMAGE_CASE]
    with batch.s3_with_images(image, cfg["items"]) as server:
        worker = Worker(
            "batch_fp32",
            {
                "kind": "batch",
                "model_dir": str(fp32_dir),
                "threads": threads,
                "s3_endpoint": server["endpoint"],
            },
        )
        try:
            worker.ready()
            return batch.batch_phase(handler, worker, server, image, threads, cfg, log)
        finally:
            worker.close()


def run(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    cfg = settings(args.quick)
    threads = args.threads or len(os.sched_getaffinity(0))
    started = time.perf_counter()
    load_at_start = round(os.getloadavg()[0], 2)
    if args.fp32_dir and args.int8_dir:
        dirs = {"fp32": Path(args.fp32_dir), "int8": Path(args.int8_dir)}
    else:
        log("Preparing models (python -m bench.models) ...")
        proc = subprocess.run(
            [PY, "-m", "bench.models", "--out", str(args.build), "--weights", args.weights],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        if proc.returncode != 0:
            raise BenchError(
                proc.stderr.strip().splitlines()[-1]
                if proc.stderr.strip()
                else "model export failed"
            )
        dirs = {k: Path(v) for k, v in json.loads(proc.stdout).items()}
    for d in dirs.values():
        if not (d / "model.onnx").is_file() or not (d / "manifest.json").is_file():
            raise BenchError(f"{d} has no model.onnx + manifest.json (export one with make model)")
    images = make_images(args.build / "images")
    weights_tag = model_info(dirs["fp32"])["weights_source"].replace(":", "-")
    state_dict = (
        args.build / f"torch-resnet18-{weights_tag}-{model_info(dirs['fp32'])['sha256'][:12]}.pt"
    )

    from bench.stages import REFERENCE_REV, reference_src

    ref_src = None if args.no_reference else reference_src(ROOT, args.build / "reference")
    if ref_src is None and not args.no_reference:
        log(f"  no reference path: git cannot extract {REFERENCE_REV[:12]} (before = skipped)")
    log(f"Starting warm workers ({threads} threads each) ...")
    specs = {
        "handler_fp32": {"kind": "handler", "model_dir": str(dirs["fp32"]), "threads": threads},
        "handler_int8": {"kind": "handler", "model_dir": str(dirs["int8"]), "threads": threads},
        "naive_fp32": {"kind": "naive", "model_dir": str(dirs["fp32"]), "threads": threads},
        **(
            {
                "handler_int8_s8s8": {
                    "kind": "handler",
                    "model_dir": str(dirs["int8_s8s8"]),
                    "threads": threads,
                }
            }
            if "int8_s8s8" in dirs
            else {}
        ),
        **(
            {
                f"handler_{m}_before": {
                    "kind": "handler",
                    "model_dir": str(dirs[m]),
                    "threads": threads,
                    "lambda_src": str(ref_src),
                }
                for m in ("fp32", "int8")
            }
            if ref_src
            else {}
        ),
        "torch_fp32": {
            "kind": "torch",
            "model_dir": str(dirs["fp32"]),
            "threads": threads,
            "state_dict": str(state_dict),
        },
    }
    workers: dict[str, Worker] = {}
    one_cpu: dict[str, Worker] = {}
    try:
        for name, spec in specs.items():
            workers[name] = Worker(name, spec)
        for name in ("fp32", "int8") if cfg["one_cpu_rounds"] else ():
            one_cpu[f"handler_{name}_1cpu"] = Worker(
                f"handler_{name}_1cpu",
                {"kind": "handler", "model_dir": str(dirs[name]), "threads": 1, "cpus": [0]},
            )
        for w in [*workers.values(), *one_cpu.values()]:
            w.ready()
            if w.info["threads"] != (1 if w in one_cpu.values() else threads):
                raise BenchError(f"{w.name} runs {w.info['threads']} threads, expected {threads}")
        cases = {c: (str(images[c]), CASES[c][0]) for c in CASES}
        for w in [*workers.values(), *one_cpu.values()]:
            w.call(cmd="load", cases=cases)

        log("Warm latency (interleaved blocks) ...")
        warm, bare = warm_latency(workers, images, cfg, log)
        log("Warm latency on one vCPU ...")
        one = one_cpu_latency(one_cpu, cfg) if one_cpu else {}
        log("Per-stage attribution (interleaved) ...")
        attr = attribution(
            {n: w for n, w in {**workers, **one_cpu}.items() if n in dict(ATTRIBUTION_COLUMNS)},
            cfg,
            log,
        )
        log("Throughput at batch 1, 4, 8 ...")
        tput = throughput(
            {k: workers[k] for k in ("handler_fp32", "handler_int8", "torch_fp32")}, images, cfg
        )
        log("Batch worker vs real-time handler (moto S3 on 127.0.0.1) ...")
        batch_res = run_batch_phase(
            workers["handler_fp32"], dirs["fp32"], images, threads, args, log
        )
        from model_export.photos import photographs

        photos = photographs()
        logits = {
            name: workers[name].call(cmd="logits", paths=[str(p) for p in photos])["logits"]
            for name in ("handler_fp32", "handler_int8", "torch_fp32", "handler_int8_s8s8")
            if name in workers
        }
        rss = {
            name: round(w.call(cmd="rss")["max_rss_mb"], 1)
            for name, w in {**workers, **one_cpu}.items()
        }
    finally:
        for w in [*workers.values(), *one_cpu.values()]:
            w.close()

    log("Cold starts (fresh processes, moto S3 on 127.0.0.1) ...")
    cold = cold_starts({k: dirs[k] for k in ("fp32", "int8")}, threads, state_dict, cfg, log)
    log("Peak float32 GFLOP/s (numpy matmul) ...")
    peak = peak_gflops(threads, cfg["peak_repeats"])

    from bench.models import count_macs

    flops = count_macs(dirs["fp32"] / "model.onnx")
    peak_value = peak[str(threads)]["gflops_best"]
    achieved = {}
    for key in ("handler_fp32_bare", "handler_int8_bare", "torch_fp32_bare"):
        for size in ("1", "8"):
            ips = tput[key][size]["images_per_s"]
            achieved[f"{key.removesuffix('_bare')} b{size}"] = {
                "images_per_s": ips,
                "gflops": round(ips * flops["gflops"], 1),
                "percent_of_peak": round(100 * ips * flops["gflops"] / peak_value, 1),
            }
    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "settings": cfg,
        "machine": machine(threads),
        "models": {k: model_info(v) for k, v in dirs.items()},
        "fidelity_s8s8": fidelity(
            logits["handler_fp32"], logits["handler_int8_s8s8"], [p.name for p in photos]
        )
        if "handler_int8_s8s8" in logits
        else None,
        "images": {
            c: {
                "file": images[c].name,
                "bytes": images[c].stat().st_size,
                "content_type": CASES[c][0],
            }
            for c in CASES
        },
        "warm": warm,
        "attribution": attr,
        "reference": {"rev": REFERENCE_REV, "measured": ref_src is not None},
        "bare_batch1": bare,
        "one_cpu": one,
        "throughput": tput,
        "cold": cold,
        "rss_mb": rss,
        "flops": flops,
        "peak": peak,
        "efficiency": {"peak_gflops": peak_value, "threads": threads, "achieved": achieved},
        "fidelity": fidelity(
            logits["handler_fp32"], logits["handler_int8"], [p.name for p in photos]
        ),
        "torch_vs_onnx_fp32_max_abs_logit_diff": round(
            max_abs_diff(logits["handler_fp32"], logits["torch_fp32"]), 6
        ),
    }
    result["machine"]["loadavg_1m_at_start"] = load_at_start
    result["batch"] = batch_res
    result["ratios"], result["targets"] = ratios_and_targets(result)
    for name in ("s3", "s3_server_cpu_removed", "memory"):
        result["ratios"][f"batch_{name}_over_realtime_per_vcpu"] = batch_res[f"ratio_{name}"]
    result["targets"].append(batch_res["target"])
    result["duration_s"] = round(time.perf_counter() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Side-by-side serving benchmarks (see docs/performance.md).",
    )
    parser.add_argument("--quick", action="store_true", help="few iterations (tests, smoke runs)")
    parser.add_argument(
        "--weights",
        default="auto",
        choices=("auto", "random", "imagenet"),
        help="model weights to export (auto: ImageNet if cached, else random)",
    )
    parser.add_argument("--fp32-dir", type=Path, help="use this exported FP32 artifact dir")
    parser.add_argument("--int8-dir", type=Path, help="use this exported INT8 artifact dir")
    parser.add_argument("--threads", type=int, help="threads for every variant (default: all CPUs)")
    parser.add_argument("--build", type=Path, default=BUILD, help="work dir (models, images)")
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the reference path (lambda_src before issue #12, from git) in the tables",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument(
        "--plot",
        type=Path,
        help=f"PNG path (default: {PLOT.relative_to(ROOT)}; "
        "with --quick: <results>/bench-quick.png)",
    )
    args = parser.parse_args(argv)
    if bool(args.fp32_dir) != bool(args.int8_dir):
        parser.error("--fp32-dir and --int8-dir go together")
    if args.threads is not None and not 1 <= args.threads <= len(os.sched_getaffinity(0)):
        parser.error(f"--threads must be between 1 and {len(os.sched_getaffinity(0))}")

    t0 = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - t0:5.0f}s] {message}", file=sys.stderr, flush=True)

    try:
        result = run(args, log)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(tables(result))
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = result["date"].replace(":", "").replace("-", "")[:15]
    name = f"bench-{stamp}{'-quick' if args.quick else ''}.json"
    text = json.dumps(result, indent=2) + "\n"
    (args.results / name).write_text(text)
    (args.results / ("latest-quick.json" if args.quick else "latest.json")).write_text(text)
    plot_path = args.plot or (args.results / "bench-quick.png" if args.quick else PLOT)
    plot(result, plot_path)
    print(f"\nwrote {args.results / name}, {plot_path} ({result['duration_s']:.0f} s)")
    return 0
