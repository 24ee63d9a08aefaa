"""Summaries of request records: percentiles, throughput, outcome classes, cold starts."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Record = dict[str, Any]


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0-100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return round(ordered[rank - 1], 3)


def latency(records: list[Record]) -> dict[str, float | None]:
    answered = [r["ms"] for r in records if r["status"] is not None and r["ms"] is not None]
    return {f"p{q}": percentile(answered, q) for q in (50, 95, 99)} | {
        "max": round(max(answered), 3) if answered else None
    }


def span_s(records: list[Record]) -> float:
    if not records:
        return 0.0
    start = min(r["t"] for r in records)
    end = max(r["t"] + (r["ms"] or 0) / 1000 for r in records)
    return max(end - start, 1e-9)


def summarize(records: list[Record], cold_ids: set[str] | None = None) -> dict[str, Any]:
    """Everything the tables show for one set of requests."""
    outcomes = Counter(r["outcome"] for r in records)
    valid = [r for r in records if r["valid"]]
    invalid = [r for r in records if not r["valid"]]
    five_xx = {k: v for k, v in outcomes.items() if k[:1] == "5" and k.isdigit()}
    duration = span_s(records)
    summary: dict[str, Any] = {
        "requests": len(records),
        "valid": len(valid),
        "invalid": len(invalid),
        "duration_s": round(duration, 3),
        "throughput_rps": round(sum(r["status"] is not None for r in records) / duration, 2)
        if records
        else 0.0,
        # Answers that were what the client wanted: right 200s and invalid requests refused.
        "goodput_rps": round(
            (outcomes.get("ok", 0) + outcomes.get("rejected_as_expected", 0)) / duration, 2
        )
        if records
        else 0.0,
        "latency_ms": latency(records),
        "latency_ok_ms": latency([r for r in records if r["outcome"] == "ok"]),
        "outcomes": dict(sorted(outcomes.items())),
        "right_answers": outcomes.get("ok", 0),
        "wrong_answers": outcomes.get("wrong", 0),
        "rejected_as_expected": outcomes.get("rejected_as_expected", 0),
        "accepted_invalid": outcomes.get("accepted_invalid", 0),
        "non_json_4xx": outcomes.get("non_json_4xx", 0),
        "dropped": outcomes.get("dropped", 0),
        "unfinished": outcomes.get("unfinished", 0),
        "five_xx": dict(sorted(five_xx.items())),
        "five_xx_total": sum(five_xx.values()),
        "five_xx_valid": sum(1 for r in valid if str(r["outcome"]).isdigit()),
        "five_xx_invalid": sum(1 for r in invalid if str(r["outcome"]).isdigit()),
        "error_rate": round(
            sum(1 for r in records if r["outcome"] not in ("ok", "rejected_as_expected"))
            / len(records),
            4,
        )
        if records
        else 0.0,
    }
    if cold_ids is not None:
        summary["cold_requests"] = sum(1 for r in records if r.get("request_id") in cold_ids)
    return summary


def by_users(records: list[Record]) -> list[dict[str, Any]]:
    """One summary per user count (the ramp's steps), in order."""
    steps = sorted({r["users"] for r in records})
    out = []
    for users in steps:
        step = [r for r in records if r["users"] == users]
        s = summarize(step)
        out.append(
            {
                "users": users,
                "requests": s["requests"],
                "throughput_rps": s["throughput_rps"],
                "goodput_rps": s["goodput_rps"],
                "p50_ms": s["latency_ms"]["p50"],
                "p99_ms": s["latency_ms"]["p99"],
                "five_xx": s["five_xx_total"],
                "wrong_answers": s["wrong_answers"],
            }
        )
    return out


def knee(steps: list[dict[str, Any]], gain: float = 0.10) -> dict[str, Any] | None:
    """The last step whose goodput (wanted answers per second: throttled requests come back
    fast and would inflate plain throughput) still grew by more than `gain` over the one
    before: past it, more clients add latency and errors, not answers."""
    if not steps:
        return None
    best = steps[0]
    for previous, current in itertools.pairwise(steps):
        if current["goodput_rps"] > previous["goodput_rps"] * (1 + gain):
            best = current
        else:
            break
    return best


def per_second(records: list[Record]) -> list[dict[str, Any]]:
    """Throughput, p99 and users per second of the run, for plots."""
    if not records:
        return []
    buckets: dict[int, list[Record]] = {}
    for r in records:
        buckets.setdefault(int(r["t"]), []).append(r)
    return [
        {
            "second": second,
            "responses": sum(r["status"] is not None for r in rs),
            "p99_ms": percentile([r["ms"] for r in rs if r["ms"] is not None], 99),
            "errors": sum(r["outcome"] not in ("ok", "rejected_as_expected") for r in rs),
            "users": max(r["users"] for r in rs),
        }
        for second, rs in sorted(buckets.items())
    ]


def read_jsonl(path: Path) -> list[Record]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def platform_events(lines: Iterable[str]) -> list[Record]:
    """The platform records (platform.*) among the function's log lines."""
    events = []
    for line in lines:
        if not line.startswith('{"time"'):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if str(event.get("type", "")).startswith("platform."):
            events.append(event)
    return events


def platform_summary(events: list[Record]) -> dict[str, Any]:
    reports = [e for e in events if e["type"] == "platform.report"]
    inits = [e for e in events if e["type"] == "platform.initReport"]
    cold = [e for e in reports if "initDurationMs" in e["record"]["metrics"]]
    memory = [
        e["record"]["metrics"].get("maxMemoryUsedMB")
        for e in reports
        if e["record"]["metrics"].get("maxMemoryUsedMB") is not None
    ]
    init_ms = [e["record"]["metrics"]["durationMs"] for e in inits]
    return {
        "environments": len({e["environment"] for e in events}),
        "inits": len(inits),
        "provisioned_inits": sum(
            e["record"]["initializationType"] == "provisioned-concurrency" for e in inits
        ),
        "cold_starts": len(cold),
        "cold_request_ids": sorted(e["record"]["requestId"] for e in cold),
        "init_ms_p50": percentile(init_ms, 50),
        "init_ms_max": round(max(init_ms), 1) if init_ms else None,
        "invocations": len(reports),
        "function_failures": sum(e["record"]["status"] != "success" for e in reports),
        "max_memory_used_mb": max(memory) if memory else None,
    }
