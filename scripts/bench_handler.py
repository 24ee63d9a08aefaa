"""Handler benchmark: warm latency for a typical JPEG and the cold INIT broken into phases.

    .venv/bin/python -m scripts.bench_handler [--model-dir build/model] [--memory 3008]

Runs the real handler against a moto S3 server on 127.0.0.1. Cold starts are fresh
interpreters importing ``handler`` with an empty model cache (the phases come from the
handler's own INIT timers, ``handler.RUNTIME.init_report()``); warm requests go through the
decorated ``handler(event, context)`` with the recorded API Gateway event. Numbers from this
shared dev box only compare configurations; docs/performance.md (bench/) has the real tables.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAMBDA_SRC = ROOT / "lambda_src"
EVENT = ROOT / "tests" / "events" / "predict_post.json"
PHASES = ("imports_ms", "powertools_ms", "download_ms", "verify_ms", "session_ms", "warmup_ms")


def typical_jpeg() -> bytes:
    """A phone-sized upload: a real photograph at 1280x960, JPEG quality 85 (~150 kB)."""
    from PIL import Image

    from model_export.photos import photographs

    photo = next(p for p in photographs() if p.name == "grace_hopper.jpg")
    out = io.BytesIO()
    Image.open(photo).convert("RGB").resize((1280, 960)).save(out, "JPEG", quality=85)
    return out.getvalue()


def ensure_model(model_dir: Path | None) -> Path:
    if model_dir and (model_dir / "model.onnx").exists():
        return model_dir
    from model_export import export_model

    out = Path(tempfile.mkdtemp(prefix="bench-model-"))
    export_model(weights="random", out_dir=out, quantize="none", seed=0, log=lambda _m: None)
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def cold_starts(env: dict[str, str], runs: int) -> list[dict]:
    probe = (
        "import json, time\n"
        "t0 = time.perf_counter()\n"
        "import handler\n"
        "total = (time.perf_counter() - t0) * 1000\n"
        "r = handler.RUNTIME\n"
        "assert r.model is not None, r.load_error\n"
        "print(json.dumps({**r.init_report(), 'import_handler_ms': total}))\n"
    )
    reports = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="bench-cache-") as cache:
            result = subprocess.run(  # noqa: S603 - fixed argv, no shell
                [sys.executable, "-c", probe],
                cwd=LAMBDA_SRC,
                env={**env, "MODEL_CACHE_DIR": cache},
                capture_output=True,
                text=True,
                check=True,
            )
        reports.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "build" / "model")
    parser.add_argument("--memory", type=int, default=3008, help="simulated Lambda memory (MB)")
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--warm-requests", type=int, default=200)
    args = parser.parse_args(argv)

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log

    model_dir = ensure_model(args.model_dir)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    # Callable from tests: leave the caller's environment and imported handler as they were.
    saved_env, saved_handler = dict(os.environ), sys.modules.pop("handler", None)
    try:
        host, port = server.get_host_and_port()
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(args.memory),
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            # Its own logger name: Powertools loggers of one service share a stdlib logger.
            "POWERTOOLS_SERVICE_NAME": "resnet-bench",
        }
        os.environ.update(env)
        boto3.client("s3").create_bucket(Bucket="bench-models")
        from model_export import publish

        bucket, key = publish(model_dir, "s3://bench-models/models", log=lambda _m: None)
        manifest = json.loads((model_dir / "manifest.json").read_text())
        env.update(MODEL_BUCKET=bucket, MODEL_KEY=key, MODEL_SHA256=manifest["sha256"])

        reports = cold_starts(env, args.cold_runs)
        print(
            f"Cold INIT, {args.cold_runs} fresh interpreters, empty cache, {args.memory} MB "
            f"-> {reports[0]['threads']} ORT threads (median ms)"
        )
        for phase in (*PHASES, "import_handler_ms"):
            print(f"  {phase:<20}{statistics.median(r[phase] for r in reports):>10.1f}")

        os.environ.update(env, MODEL_CACHE_DIR=tempfile.mkdtemp(prefix="bench-warm-"))
        if str(LAMBDA_SRC) not in sys.path:
            sys.path.insert(0, str(LAMBDA_SRC))
        with contextlib.redirect_stdout(io.StringIO()):
            import handler

        event = json.loads(EVENT.read_text())
        image = typical_jpeg()
        event.update(
            body=base64.b64encode(image).decode(),
            isBase64Encoded=True,
            headers={"Content-Type": "image/jpeg"},
            multiValueHeaders={},
            queryStringParameters=None,
            multiValueQueryStringParameters=None,
        )

        class Context:
            aws_request_id = "bench"
            function_name = "bench"
            memory_limit_in_mb = args.memory
            invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"

        walls, pre, inf = [], [], []
        for _ in range(args.warm_requests):
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # EMF lines
                response = handler.handler(event, Context())
            walls.append((time.perf_counter() - t0) * 1000)
            assert response["statusCode"] == 200, response["body"]
            timings = json.loads(response["body"])["timings_ms"]
            pre.append(timings["decode_preprocess"])
            inf.append(timings["inference"])
        print(
            f"\nWarm /predict, {len(image) // 1024} kB 1280x960 JPEG, "
            f"{args.warm_requests} requests (ms)"
        )
        print(f"  {'':<20}{'p50':>10}{'p99':>10}")
        for name, values in (
            ("handler total", walls),
            ("decode+preprocess", pre),
            ("inference", inf),
        ):
            print(f"  {name:<20}{percentile(values, 50):>10.1f}{percentile(values, 99):>10.1f}")
    finally:
        server.stop()
        os.environ.clear()
        os.environ.update(saved_env)
        sys.modules.pop("handler", None)
        if saved_handler is not None:
            sys.modules["handler"] = saved_handler
    return 0


if __name__ == "__main__":
    sys.exit(main())
