"""The batch worker beside the real-time handler, images/s per vCPU: ``python -m bench.batch``.

Part of ``make bench`` (bench/run.py runs this phase with its own workers) and runnable alone.
Both paths classify the same typical JPEG (640x480) with the same FP32 model and the same vCPUs
(``--threads``, Lambda's memory-to-vCPU rule: 2 threads = 3538 MB), interleaved in rounds so a
busy machine slows both alike:

* real-time: the handler's whole path, one image per request (recorded API Gateway event,
  base64 body, Powertools), i.e. what the endpoint pays per image;
* batch, S3: lambda_src/batch.py's handler on one map batch whose objects it reads from an S3
  API server over HTTP (moto in the driver process; its CPU comes out of the same cores, which
  S3 itself would not: a pessimistic number);
* batch, memory: the same batch with the objects' bytes already in the worker (its own compute
  only: reads overlap nothing, decoding and inference still do).

Goal: batch (S3) >= 1.3x the real-time handler's images/s per vCPU. Timing noise on a shared
machine is large; compare the ratios of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import BUILD, CASES, RESULTS, make_images

TARGET = 1.3
IMAGE_CASE = "jpeg_640x480"
INPUT_BUCKET = "bench-batch-input"
OUTPUT_BUCKET = "bench-batch-output"


def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"rounds": 2, "min_rounds": 2, "max_phase_s": 60, "items": 16, "realtime_block": 8}
    # A full map batch is 100 objects; 64 keeps a round short on a busy 2-vCPU machine while
    # running 8 sub-batches, enough to reach the pipelined steady state.
    return {"rounds": 6, "min_rounds": 3, "max_phase_s": 240, "items": 64, "realtime_block": 24}


@contextmanager
def s3_with_images(image: Path, count: int) -> Iterator[dict[str, Any]]:
    """A moto S3 server on 127.0.0.1 (in this process) holding ``count`` copies of ``image``."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        for bucket in (INPUT_BUCKET, OUTPUT_BUCKET):
            s3.create_bucket(Bucket=bucket)
        data = image.read_bytes()
        keys = [f"photos/{i:05d}.jpg" for i in range(count)]
        for key in keys:
            s3.put_object(Bucket=INPUT_BUCKET, Key=key, Body=data)
        yield {"endpoint": endpoint, "keys": keys, "size": len(data)}
    finally:
        server.stop()


def batch_phase(
    handler: Any,
    batch: Any,
    server: dict[str, Any],
    image: Path,
    threads: int,
    cfg: dict[str, Any],
    log: Any,
) -> dict[str, Any]:
    """Interleaved rounds of the handler (one image per request) and the batch worker.

    ``handler`` and ``batch`` are bench.run.Worker processes (kinds handler and batch); the
    handler worker must have loaded the benchmark cases.
    """
    from bench.run import rotate, rounds

    totals = {name: {"images": 0, "seconds": 0.0} for name in ("realtime", "s3", "memory")}
    request = {
        "cmd": "batch_run",
        "keys": server["keys"][: cfg["items"]],
        "size": server["size"],
        "bucket": INPUT_BUCKET,
        "output_bucket": OUTPUT_BUCKET,
        "image": str(image),
    }
    steps = ["realtime", "s3", "memory"]
    s3_cpu = {"s3": 0.0, "memory": 0.0}
    for r in rounds(cfg, log, "batch vs real-time"):
        for step in rotate(steps, r):
            if step == "realtime":
                ms = handler.call(
                    cmd="latency", case=IMAGE_CASE, n=cfg["realtime_block"], budget_ms=1e9
                )["ms"]
                totals[step]["images"] += len(ms)
                totals[step]["seconds"] += sum(ms) / 1000.0
            else:
                cpu = _own_cpu_seconds()
                reply = batch.call(**request, source=step)
                totals[step]["images"] += reply["images"]
                totals[step]["seconds"] += reply["ms"] / 1000.0
                # This process only serves S3 while the worker runs: its CPU is the S3 server's.
                s3_cpu[step] += _own_cpu_seconds() - cpu
    out: dict[str, Any] = {
        "image": IMAGE_CASE,
        "threads": threads,
        "memory_mb": threads * 1769,
        "items_per_batch": cfg["items"],
        "batch_worker": batch.info,
    }
    for name, t in totals.items():
        rate = t["images"] / t["seconds"]
        out[name] = {
            "images": t["images"],
            "seconds": round(t["seconds"], 2),
            "images_per_s": round(rate, 2),
            "images_per_s_per_vcpu": round(rate / threads, 2),
        }
    # The S3 server shares the worker's CPUs here; S3 itself would not. Per vCPU-second left to
    # the worker: an estimate of the rate without that artifact.
    t = totals["s3"]
    available = t["seconds"] * threads - s3_cpu["s3"]
    out["s3"]["server_cpu_ms_per_image"] = round(1000 * s3_cpu["s3"] / t["images"], 2)
    out["s3_server_cpu_removed"] = {
        "images": t["images"],
        "seconds": round(available / threads, 2),
        "images_per_s": round(t["images"] * threads / available, 2),
        "images_per_s_per_vcpu": round(t["images"] / available, 2),
    }
    for name in ("s3", "memory", "s3_server_cpu_removed"):
        out[f"ratio_{name}"] = round(
            out[name]["images_per_s_per_vcpu"] / out["realtime"]["images_per_s_per_vcpu"], 3
        )
    key = "ratio_s3_server_cpu_removed"
    out["target"] = {
        "target": "Batch worker images/s per vCPU vs real-time handler, S3 over HTTP with the "
        "local S3 server's CPU removed (x)",
        "ratio": key,
        "measured": out[key],
        "op": ">=",
        "threshold": TARGET,
        "status": "PASS" if out[key] >= TARGET else "MISS",
    }
    return out


def _own_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def table(res: dict[str, Any]) -> str:
    from bench.run import fmt_table

    labels = {
        "realtime": "real-time handler, 1 image per request (whole path)",
        "s3": "batch worker, objects over S3 API (moto on the same CPUs)",
        "s3_server_cpu_removed": "  same, per vCPU-second left after moto's CPU (estimate)",
        "memory": "batch worker, objects already in memory (compute only)",
    }
    base = res["realtime"]["images_per_s_per_vcpu"]
    rows = [
        [
            labels[name],
            f"{res[name]['images_per_s']:.1f}",
            f"{res[name]['images_per_s_per_vcpu']:.1f}",
            f"{res[name]['images_per_s_per_vcpu'] / base:.2f}x",
            str(res[name]["images"]),
        ]
        for name in ("realtime", "s3", "s3_server_cpu_removed", "memory")
    ]
    t = res["target"]
    return (
        f"Batch vs real-time, {CASES[res['image']][1]}, FP32, {res['threads']} vCPUs "
        f"({res['memory_mb']} MB), batches of {res['items_per_batch']}:\n"
        + fmt_table(["path", "images/s", "per vCPU", "vs real-time", "images"], rows)
        + f"\n(the local S3 server used {res['s3']['server_cpu_ms_per_image']:.1f} ms of CPU per "
        "image on the same cores)"
        + f"\n{t['status']} {t['target']}: {t['measured']:.3f} (goal >= {t['threshold']})"
    )


def start_workers(
    model_dir: Path,
    threads: int,
    endpoint: str,
    cases: dict[str, Any],
    env: dict[str, str] | None = None,
) -> Any:
    from bench.run import Worker

    handler = Worker(
        "handler_fp32", {"kind": "handler", "model_dir": str(model_dir), "threads": threads}
    )
    batch = Worker(
        "batch_fp32",
        {
            "kind": "batch",
            "model_dir": str(model_dir),
            "threads": threads,
            "s3_endpoint": endpoint,
            "env": env or {},
        },
    )
    handler.ready()
    batch.ready()
    handler.call(cmd="load", cases=cases)
    return handler, batch


def main(argv: list[str] | None = None) -> int:
    from bench.run import BenchError

    parser = argparse.ArgumentParser(
        prog="python -m bench.batch", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--fp32-dir", type=Path, help="FP32 artifact dir (default: export one)")
    parser.add_argument("--threads", type=int, help="vCPUs for both paths (default: all CPUs)")
    parser.add_argument(
        "--inference-threads",
        type=int,
        help="ONNX Runtime threads of the batch worker (BATCH_INFERENCE_THREADS; default: vCPUs)",
    )
    parser.add_argument("--quick", action="store_true", help="few iterations (tests)")
    parser.add_argument("--build", type=Path, default=BUILD)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    threads = args.threads or len(os.sched_getaffinity(0))
    if not 1 <= threads <= len(os.sched_getaffinity(0)):
        parser.error(f"--threads must be between 1 and {len(os.sched_getaffinity(0))}")
    t0 = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - t0:5.0f}s] {message}", file=sys.stderr, flush=True)

    cfg = settings(args.quick)
    try:
        model_dir = args.fp32_dir or _export(args.build, log)
        if not (model_dir / "model.onnx").is_file():
            raise BenchError(f"{model_dir} has no model.onnx (export one with make model)")
        images = make_images(args.build / "images")
        cases = {c: (str(images[c]), CASES[c][0]) for c in CASES}
        load_start = round(os.getloadavg()[0], 2)
        with s3_with_images(images[IMAGE_CASE], cfg["items"]) as server:
            env = (
                {"BATCH_INFERENCE_THREADS": str(args.inference_threads)}
                if args.inference_threads
                else {}
            )
            handler, batch = start_workers(model_dir, threads, server["endpoint"], cases, env)
            try:
                res = batch_phase(handler, batch, server, images[IMAGE_CASE], threads, cfg, log)
            finally:
                handler.close()
                batch.close()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    res |= {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "settings": cfg,
        "model_dir": str(model_dir),
        "loadavg_1m_at_start": load_start,
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        "duration_s": round(time.perf_counter() - t0, 1),
    }
    print(table(res))
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = res["date"].replace(":", "").replace("-", "")[:15]
    path = args.results / f"batch-{stamp}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(f"\nwrote {path} ({res['duration_s']:.0f} s)")
    return 0


def _export(build: Path, log: Any) -> Path:
    import subprocess

    from bench.run import PY, ROOT, BenchError

    log("Preparing the FP32 model (python -m bench.models) ...")
    proc = subprocess.run(
        [PY, "-m", "bench.models", "--out", str(build), "--weights", "auto"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if proc.returncode != 0:
        raise BenchError((proc.stderr.strip().splitlines() or ["model export failed"])[-1])
    return Path(json.loads(proc.stdout)["fp32"])


if __name__ == "__main__":
    sys.exit(main())
