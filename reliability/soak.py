"""Soak: many requests through one execution environment; its memory and tail latency over time.

    python -m reliability.soak --requests 20000          # the long run (make soak)

One environment (concurrency 1, provisioned) serves every request, sent back to back by one
client: a mix of photographs (each checked against the reference) and invalid requests. The
environment's RSS comes with each platform report. Reported: growth of RSS after a warm-up
(first window to last, and the fitted slope per 1,000 requests), p99 of each tenth of the run
and its drift (last tenth over first), and every wrong answer, 5xx and dropped connection.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import requests

from local_mode.endpoint import local_endpoint
from local_mode.environments import Concurrency, PlatformEvent

from .reference import Reference
from .stats import Record, percentile, summarize

WARMUP_FRACTION = 0.1  # allocator arenas and ORT caches settle in the first requests
WINDOWS = 10
INVALID_EVERY = 5  # one request in five is invalid (not an image)


def memory_growth(rss_mb: list[float]) -> dict[str, float | None]:
    """RSS growth after warm-up: last window's median minus the first's, and the least-squares
    slope in MB per 1,000 requests."""
    start = int(len(rss_mb) * WARMUP_FRACTION)
    series = rss_mb[start:]
    if len(series) < 2 * WINDOWS:
        return {"growth_mb": None, "slope_mb_per_1k": None, "start_mb": None, "end_mb": None}
    size = len(series) // WINDOWS
    first = sorted(series[:size])[size // 2]
    last = sorted(series[-size:])[size // 2]
    n = len(series)
    mean_x = (n - 1) / 2
    mean_y = sum(series) / n
    cov = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(series))
    var = sum((i - mean_x) ** 2 for i in range(n))
    return {
        "growth_mb": round(last - first, 2),
        "slope_mb_per_1k": round(cov / var * 1000, 3),
        "start_mb": round(first, 1),
        "end_mb": round(last, 1),
    }


def p99_windows(latencies_ms: list[float]) -> list[float | None]:
    start = int(len(latencies_ms) * WARMUP_FRACTION)
    series = latencies_ms[start:]
    size = max(1, len(series) // WINDOWS)
    return [percentile(series[i * size : (i + 1) * size], 99) for i in range(WINDOWS)]


def run_soak(
    model_dir: Path,
    reference: Reference,
    photos: list[Path],
    requests_total: int,
    *,
    template: Path | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> dict[str, Any]:
    rss: dict[str, float] = {}
    lock = threading.Lock()

    def on_event(event: PlatformEvent) -> None:
        if event["type"] == "platform.report":
            with lock:
                rss[event["record"]["requestId"]] = event["record"]["metrics"].get("rssMB")

    photos = [p for p in photos if p.name in reference.answers]
    records: list[Record] = []
    with local_endpoint(
        model_dir,
        template=template,
        throttle=False,
        concurrency=Concurrency(limit=1, provisioned=1, source="soak: one environment"),
        on_platform_event=on_event,
    ) as ep:
        session = requests.Session()
        key = {"x-api-key": ep.api_key}
        started = time.perf_counter()
        for i in range(requests_total):
            photo = photos[i % len(photos)]
            invalid = i % INVALID_EVERY == INVALID_EVERY - 1
            answer = reference.answers[photo.name]
            body = b"not an image" if invalid else photo.read_bytes()
            t0 = time.perf_counter()
            try:
                response = session.post(
                    ep.endpoint + "predict",
                    data=body,
                    headers={**key, "Content-Type": answer.content_type},
                    timeout=60,
                )
                status: int | None = response.status_code
                request_id = response.headers.get("x-amzn-RequestId")
                payload = response.json() if response.content else None
            except (requests.RequestException, ValueError):
                status, request_id, payload = None, None, None
            ms = (time.perf_counter() - t0) * 1000
            if status is None:
                outcome = "dropped"
            elif status >= 500:
                outcome = str(status)
            elif invalid:
                outcome = "rejected_as_expected" if 400 <= status < 500 else "accepted_invalid"
            elif status != 200:
                outcome = f"{status}_on_valid"
            else:
                outcome = "wrong" if reference.check(photo.name, payload) else "ok"
            records.append(
                {
                    "t": round(t0 - started, 4),
                    "ms": round(ms, 3),
                    "kind": "not_an_image" if invalid else "photo",
                    "valid": not invalid,
                    "status": status,
                    "outcome": outcome,
                    "request_id": request_id,
                    "users": 1,
                }
            )
            if (i + 1) % max(1, requests_total // 10) == 0:
                log(f"  soak: {i + 1:,}/{requests_total:,} requests")
        environments = len(ep.pool.environments())
        resets = ep.pool.stats.resets
    with lock:
        rss_series = [rss[r["request_id"]] for r in records if rss.get(r.get("request_id") or "")]
    windows = p99_windows([r["ms"] for r in records if r["status"] is not None])
    first, last = windows[0], windows[-1]
    return {
        "requests": requests_total,
        "environments": environments,
        "resets": resets,
        "summary": summarize(records),
        "memory": memory_growth(rss_series),
        "rss_mb": rss_series,
        "p99_windows_ms": windows,
        "p99_drift": round(last / first, 3) if first and last else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reliability.soak", description=__doc__)
    p.add_argument("--requests", type=int, default=20_000, help="requests to send (20,000)")
    p.add_argument("--model-dir", type=Path, default=Path("build/model"))
    p.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    args = p.parse_args(argv)
    from .loadtest import load_reference, photos_for_load

    if args.requests < 100:
        print("error: --requests must be at least 100 (the warm-up alone takes 10 %)")
        return 2
    if not (args.model_dir / "manifest.json").is_file():
        print(f"error: no model in {args.model_dir}; run `make model` first")
        return 2
    from local_mode.console import stdout_to_file

    photos = photos_for_load()
    reference = load_reference(args.model_dir, photos)
    function_log = Path(__file__).resolve().parents[1] / "build" / "local" / "soak-function.log"
    print(f"Soak: {args.requests:,} requests; the function's log: {function_log}")
    with stdout_to_file(function_log) as terminal:
        result = run_soak(
            args.model_dir,
            reference,
            photos,
            args.requests,
            log=lambda m: print(m, file=terminal, flush=True),
        )
    memory, summary = result["memory"], result["summary"]
    print(
        f"soak: {args.requests:,} requests, {summary['wrong_answers']} wrong, "
        f"{summary['five_xx_total']} 5xx, {summary['dropped']} dropped; RSS "
        f"{memory['start_mb']} -> {memory['end_mb']} MB ({memory['slope_mb_per_1k']} MB per "
        f"1,000 requests); p99 drift x{result['p99_drift']}"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
