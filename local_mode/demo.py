"""`make demo`: the whole serving path on this machine, explained as it runs.

export (or reuse) the model -> local S3 server -> publish -> API Gateway emulator -> the Lambda
handler -> the client. No AWS account, no Docker; everything listens on 127.0.0.1 only and is
stopped before exit, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from classifier_client import ClassifierError, Client, RetryPolicy
from model_export.checksum import sha256_file
from model_export.errors import ExportError

from .apispec import TemplateError, template_path
from .console import stdout_to_file
from .endpoint import LocalEndpoint, local_endpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = REPO_ROOT / "build" / "model"
DEFAULT_FUNCTION_LOG = REPO_ROOT / "build" / "local" / "function.log"
WARM_REQUESTS = 10
# Failures a user can act on: one line, non-zero exit, no traceback.
USER_ERRORS = (ClassifierError, TemplateError, ExportError)
BATCH_SIZE = 4  # within the function's batch limit (see docs/inference.md)


class Console:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    def heading(self, step: str, title: str) -> None:
        self()
        self(f"[{step}] {title}")


def reusable_manifest(model_dir: Path) -> dict[str, Any] | None:
    """The manifest of an existing export whose model.onnx still matches it, else None."""
    try:
        manifest = json.loads((model_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    model = model_dir / str(manifest.get("file", "model.onnx"))
    if manifest.get("format_version") != 1 or not model.is_file():
        return None
    return manifest if sha256_file(model) == manifest.get("sha256") else None


def ensure_model(model_dir: Path, weights: str, fresh: bool, say: Console) -> dict[str, Any]:
    manifest = None if fresh else reusable_manifest(model_dir)
    if manifest is not None:
        say(f"  Reusing {_rel(model_dir)} (model.onnx matches its manifest's sha256).")
        say("  (To export again: `python -m local_mode.demo --fresh`, or delete the directory.)")
        return manifest
    say(f"  Exporting ResNet18 to {_rel(model_dir)} with weights={weights} (about a minute) ...")
    from model_export import export_model

    started = time.perf_counter()
    manifest = export_model(
        weights=weights, out_dir=model_dir, quantize="none", log=lambda m: say(f"    {m}")
    )
    say(f"  Exported and verified in {time.perf_counter() - started:.0f} s.")
    return manifest


def describe_weights(manifest: dict[str, Any], say: Console) -> bool:
    weights = manifest.get("weights", {})
    trained = bool(weights.get("trained"))
    say(
        f"  Model: {manifest.get('model_name')}, sha256 {str(manifest.get('sha256'))[:12]}..., "
        f"{manifest.get('size_bytes', 0) / 1e6:.1f} MB, {manifest.get('num_classes')} classes"
    )
    if trained:
        say(f"  Weights: pretrained ({weights.get('source')}).")
    else:
        say(
            f"  Weights: UNTRAINED ({weights.get('source')}, seed {weights.get('seed')}) - the "
            "pretrained ones were not available"
        )
        say("    (no network access to download them, or an explicit --weights random).")
        say("    The labels are ImageNet's, but the predictions below are meaningless: this")
        say("    demo shows the serving path, not accuracy. With network access, run")
        say("    `make model WEIGHTS=imagenet`, then `make demo` again.")
    return trained


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def describe_endpoint(ep: LocalEndpoint, say: Console, function_log: Path) -> None:
    spec = ep.spec
    routes = ", ".join(f"{r.method} {r.path}" for r in spec.routes)
    keyed = all(r.api_key_required for r in spec.routes)
    say(f"  S3 API (moto server)     {ep.s3.endpoint_url}")
    say(f"    published the model as s3://{ep.model_bucket}/{ep.model_key}")
    say(f"  API Gateway (emulated)   {ep.endpoint}")
    say(f"    read from {_rel(Path(spec.source))}:")
    say(f"    routes {routes}{' (API key required)' if keyed else ''}")
    say(f"    binary media types {', '.join(spec.binary_media_types)}")
    if spec.throttle_rate_rps:
        say(f"    usage plan: {spec.throttle_rate_rps:g} requests/s, burst {spec.throttle_burst}")
    where = (
        "in this process"
        if ep.concurrency is None
        else f"in execution environments (processes), {ep.concurrency.describe()}"
    )
    say(
        f"  Lambda function          lambda_src/handler.py, {spec.memory_mb} MB, "
        f"{spec.timeout_s} s timeout"
    )
    say(f"    runs {where}")
    say(f"    environment from the template ({', '.join(sorted(spec.environment))})")
    say("    plus MODEL_BUCKET/KEY/SHA256 and AWS_ENDPOINT_URL_S3 for the local S3")
    say(f"    its logs and EMF metrics (CloudWatch's stand-in): {_rel(function_log)}")


def _top(result: dict[str, Any], n: int = 5) -> list[dict[str, Any]]:
    return list(result.get("predictions", []))[:n]


def print_predictions(say: Console, name: str, result: dict[str, Any]) -> None:
    say(f"  {name}")
    for rank, p in enumerate(_top(result), start=1):
        say(f"      {rank}. {p['label'][:34]:<34} {100 * p['probability']:6.2f}%")


def _pace(rate: float | None, started: float) -> None:
    """Stay under the usage plan's rate, as a well-behaved client would."""
    if rate:
        time.sleep(max(0.0, 1.0 / rate - (time.perf_counter() - started)))


def run(args: argparse.Namespace, say: Console) -> int:
    from model_export.photos import photographs

    say("ResNet18 image classification, served end to end on this machine")
    say("(the same handler, events and API contract as on AWS; no account needed)")

    say.heading("1/5", "The model artifact")
    manifest = ensure_model(args.model_dir, args.weights, args.fresh, say)
    describe_weights(manifest, say)

    say.heading("2/5", "Local stand-ins for S3, API Gateway and Lambda (127.0.0.1 only)")
    with (
        stdout_to_file(args.function_log) as terminal,
        local_endpoint(args.model_dir, template=args.template, throttle=not args.no_throttle) as ep,
    ):
        say.stream = terminal
        describe_endpoint(ep, say, args.function_log)
        rate = None if args.no_throttle else ep.spec.throttle_rate_rps
        retries: list[str] = []
        client = Client(
            ep.endpoint,
            ep.api_key,
            retry=RetryPolicy(max_attempts=5),
            on_retry=lambda n, why, d: retries.append(f"attempt {n}: {why}, waited {d:.2f}s"),
        )
        with client:
            photos = photographs()
            say.heading("3/5", f"Classifying {len(photos)} photographs through the client")
            say("  Each is POSTed as raw bytes (Content-Type image/...) with the API key; the")
            say("  gateway base64-encodes it into an API Gateway event and invokes the handler.")
            say("  The first request is a cold start: INIT downloads the model from S3, checks")
            say("  its sha256, opens the ONNX Runtime session and runs a warm-up inference.")
            say()
            singles: dict[str, dict[str, Any]] = {}
            cold_ms = 0.0
            for i, photo in enumerate(photos):
                started = time.perf_counter()
                singles[photo.name] = client.classify(photo)
                if i == 0:
                    cold_ms = (time.perf_counter() - started) * 1000
                print_predictions(say, photo.name, singles[photo.name])
                _pace(rate, started)

            say.heading("4/5", "Latency (this machine; see `make bench` for real numbers)")
            warm: list[float] = []
            handler_ms: list[float] = []
            probe = photos[1] if len(photos) > 1 else photos[0]
            for _ in range(WARM_REQUESTS):
                started = time.perf_counter()
                result = client.classify(probe)
                warm.append((time.perf_counter() - started) * 1000)
                handler_ms.append(float(result["timings_ms"]["total"]))
                _pace(rate, started)
            batch = photos[:BATCH_SIZE]
            started = time.perf_counter()
            batch_result = client.classify_batch(batch)
            batch_ms = (time.perf_counter() - started) * 1000
            same = all(
                batch_result["predictions"][i][0]["index"]
                == singles[p.name]["predictions"][0]["index"]
                for i, p in enumerate(batch)
            )
            init_ms = ep.runtime.init_ms or 0.0
            say(
                f"  cold start, first request end to end  {cold_ms:8.0f} ms"
                f"   (of which INIT {init_ms:.0f} ms)"
            )
            say(
                f"  warm, p50 of {WARM_REQUESTS} requests end to end   "
                f"{statistics.median(warm):8.1f} ms"
                f"   (handler {statistics.median(handler_ms):.1f} ms)"
            )
            say(
                f"  batch of {len(batch)} images in one JSON request {batch_ms:8.0f} ms"
                f"   ({batch_ms / len(batch):.0f} ms per image; top-1 "
                f"{'identical to' if same else 'DIFFERENT from'} the single requests)"
            )
            if retries:
                say(f"  the client retried {len(retries)} time(s): {'; '.join(retries)}")

            say.heading("5/5", "Bad requests get a clear JSON error, never a stack trace")
            no_key = Client(ep.endpoint, None)
            show_error(say, "no API key", no_key.request("GET", "health"), "API Gateway")
            no_key.close()
            not_image = client.request(
                "POST", "predict", data=b"not a JPEG", headers={"Content-Type": "image/jpeg"}
            )
            show_error(say, "bytes that are not an image", not_image, "the function")
            unknown = client.request("GET", "labels")
            show_error(say, f"unknown route GET /{ep.spec.stage}/labels", unknown, "API Gateway")

    say.stream = sys.stdout
    say()
    say("Done: the gateway, the S3 server and the function were stopped; nothing is left running.")
    say("Next: `make serve` keeps the endpoint up for curl and the client (docs/local.md).")
    return 0


def show_error(say: Console, what: str, resp: Any, source: str) -> None:
    if resp.status_code < 400:
        raise ClassifierError(f"expected an error for {what}, got HTTP {resp.status_code}")
    say(f"  {what:<30} -> {resp.status_code} {resp.text}   ({source})")


def add_endpoint_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `demo` and `serve`: which model and which stack the endpoint mirrors."""
    p.add_argument(
        "--model-dir",
        type=Path,
        default=DEFAULT_MODEL_DIR,
        help="artifact directory to reuse or export into (default build/model)",
    )
    p.add_argument(
        "--weights",
        default="auto",
        help="weights when exporting: auto (pretrained if downloadable), imagenet, random",
    )
    p.add_argument(
        "--template",
        type=Path,
        default=None,
        help=f"synthesized stack to mirror (default {_rel(template_path())})",
    )
    p.add_argument(
        "--no-throttle", action="store_true", help="ignore the usage plan's rate limit and quota"
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m local_mode.demo", description=__doc__.split("\n")[0]
    )
    add_endpoint_options(p)
    p.add_argument("--fresh", action="store_true", help="export again even if the model is there")
    p.add_argument(
        "--function-log",
        type=Path,
        default=DEFAULT_FUNCTION_LOG,
        help="where the function's logs go (default build/local/function.log)",
    )
    return p


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_cli(
    run: Callable[[], int], say: Console, *, interrupted: str, interrupted_code: int
) -> int:
    """Run a local-mode command: Ctrl-C and `kill` unwind through the context managers that stop
    every server, and a user error is one line with exit 1, never a traceback."""
    # Explicit, because a shell's `cmd &` starts programs with SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run()
    except KeyboardInterrupt:
        say.stream = sys.stdout
        say(f"\n{interrupted}")
        return interrupted_code
    except USER_ERRORS as exc:
        say.stream = sys.stdout
        say(f"\nerror: {exc}")
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    say = Console(sys.stdout)
    return run_cli(
        lambda: run(args, say),
        say,
        interrupted="Interrupted: everything was stopped.",
        interrupted_code=130,
    )


if __name__ == "__main__":
    sys.exit(main())
