"""Monthly AWS cost of the endpoint, on-demand vs provisioned concurrency: ``python -m bench.cost``.

Formula (AWS Lambda pricing page; every price is a parameter):

  requests       = N x request_price
  compute        = N x ceil(duration_ms) / 1000 x memory_GB x duration_price      (on-demand)
  cold INIT      = N x cold_rate x init_ms / 1000 x memory_GB x duration_price   (INIT is billed)
  PC charge      = pc_count x memory_GB x pc_hours x 3600 x pc_price
  PC compute     = N_pc x ceil(duration_ms) / 1000 x memory_GB x pc_duration_price
  API Gateway    = N x apigw_price (REST API)

N_pc, the requests provisioned environments serve, assumes traffic spread evenly over the month:
N x pc_hours / 730 x min(1, capacity / load); the rest spills over to on-demand prices.
Duration defaults to the mean whole-path latency of the latest benchmark run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import RESULTS

HOURS_PER_MONTH = 730
MB_PER_VCPU = 1769

# Transcribed from https://aws.amazon.com/lambda/pricing/ and .../api-gateway/pricing/ for
# us-east-1 (first volume tier; free tier not applied). The benchmark machine has no internet:
# check them against the pricing pages before using the numbers for a budget.
PRICES_TAKEN = "2025-06 (us-east-1, AWS public pricing pages; re-check before relying on them)"
PRICES: dict[str, dict[str, float]] = {
    "x86_64": {
        "request": 0.20 / 1_000_000,
        "duration_gb_s": 0.0000166667,
        "pc_gb_s": 0.0000041667,
        "pc_duration_gb_s": 0.0000097222,
    },
    "arm64": {
        "request": 0.20 / 1_000_000,
        "duration_gb_s": 0.0000133334,
        "pc_gb_s": 0.0000033334,
        "pc_duration_gb_s": 0.0000077778,
    },
}
APIGW_REST_PER_REQUEST = 3.50 / 1_000_000


@dataclass(frozen=True)
class Inputs:
    requests: float
    duration_ms: float
    memory_mb: int
    architecture: str = "x86_64"
    pc_count: int = 0
    pc_hours: float = HOURS_PER_MONTH
    cold_start_rate: float = 0.0
    init_ms: float = 0.0
    include_api_gateway: bool = True
    request_price: float | None = None
    duration_price: float | None = None
    pc_price: float | None = None
    pc_duration_price: float | None = None
    apigw_price: float = APIGW_REST_PER_REQUEST

    def price(self, name: str) -> float:
        override = {
            "request": self.request_price,
            "duration_gb_s": self.duration_price,
            "pc_gb_s": self.pc_price,
            "pc_duration_gb_s": self.pc_duration_price,
        }[name]
        return PRICES[self.architecture][name] if override is None else override


def monthly_cost(i: Inputs) -> dict[str, Any]:
    """Line items in USD for both ways of running the same traffic."""
    if i.architecture not in PRICES:
        raise ValueError(f"architecture must be one of {sorted(PRICES)}")
    if i.requests < 0 or i.duration_ms <= 0 or not 128 <= i.memory_mb <= 10240:
        raise ValueError("requests >= 0, duration_ms > 0 and 128 <= memory_mb <= 10240 please")
    if not 0 <= i.pc_hours <= HOURS_PER_MONTH or i.pc_count < 0:
        raise ValueError(f"pc_count >= 0 and 0 <= pc_hours <= {HOURS_PER_MONTH}")
    if not 0 <= i.cold_start_rate <= 1:
        raise ValueError("cold_start_rate is a fraction between 0 and 1")
    gb = i.memory_mb / 1024
    billed_s = math.ceil(i.duration_ms) / 1000  # Lambda bills duration rounded up to 1 ms
    requests_fee = i.requests * i.price("request")
    apigw = i.requests * i.apigw_price if i.include_api_gateway else 0.0
    init_fee = i.requests * i.cold_start_rate * i.init_ms / 1000 * gb * i.price("duration_gb_s")

    on_demand = {
        "requests": requests_fee,
        "compute": i.requests * billed_s * gb * i.price("duration_gb_s"),
        "cold_init": init_fee,
        "api_gateway": apigw,
    }

    load_rps = i.requests / (HOURS_PER_MONTH * 3600)
    capacity_rps = i.pc_count / billed_s if billed_s else 0.0
    covered = min(1.0, capacity_rps / load_rps) if load_rps else 1.0
    served_pc = i.requests * (i.pc_hours / HOURS_PER_MONTH) * covered if i.pc_count else 0.0
    spill = i.requests - served_pc
    provisioned = {
        "requests": requests_fee,
        "pc_charge": i.pc_count * gb * i.pc_hours * 3600 * i.price("pc_gb_s"),
        "pc_compute": served_pc * billed_s * gb * i.price("pc_duration_gb_s"),
        "on_demand_compute": spill * billed_s * gb * i.price("duration_gb_s"),
        "cold_init": spill * i.cold_start_rate * i.init_ms / 1000 * gb * i.price("duration_gb_s"),
        "api_gateway": apigw,
    }
    return {
        "inputs": i.__dict__,
        "prices": {k: i.price(k) for k in PRICES[i.architecture]} | {"apigw": i.apigw_price},
        "prices_taken": PRICES_TAKEN,
        "billed_duration_ms": math.ceil(i.duration_ms),
        "requests_served_by_pc": served_pc,
        "pc_utilization": (served_pc * billed_s) / (i.pc_count * i.pc_hours * 3600)
        if i.pc_count and i.pc_hours
        else 0.0,
        "on_demand": on_demand | {"total": sum(on_demand.values())},
        "provisioned": provisioned | {"total": sum(provisioned.values())},
    }


def break_even_utilization(architecture: str) -> float:
    """PC utilization above which a provisioned environment's GB-s is cheaper than on-demand."""
    p = PRICES[architecture]
    return p["pc_gb_s"] / (p["duration_gb_s"] - p["pc_duration_gb_s"])


def latest_results(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def render(result: dict[str, Any]) -> str:
    i = result["inputs"]
    lines = [
        f"{i['requests']:,.0f} requests/month, {i['duration_ms']:.1f} ms (billed "
        f"{result['billed_duration_ms']} ms), {i['memory_mb']} MB, {i['architecture']}, "
        f"provisioned concurrency {i['pc_count']} x {i['pc_hours']:.0f} h/month",
        f"prices: {result['prices_taken']}",
        "",
        f"| {'item':<28} | {'on-demand':>12} | {'provisioned':>12} |",
        f"|{'-' * 30}|{'-' * 14}|{'-' * 14}|",
    ]
    items = [
        ("Lambda requests", "requests", "requests"),
        ("Lambda compute (GB-s)", "compute", "on_demand_compute"),
        ("Provisioned concurrency", None, "pc_charge"),
        ("PC compute (GB-s, PC rate)", None, "pc_compute"),
        ("Cold-start INIT (GB-s)", "cold_init", "cold_init"),
        ("API Gateway REST requests", "api_gateway", "api_gateway"),
        ("TOTAL per month (USD)", "total", "total"),
    ]
    for title, od_key, pc_key in items:
        od = f"{result['on_demand'][od_key]:.2f}" if od_key else "-"
        pc = f"{result['provisioned'][pc_key]:.2f}"
        lines.append(f"| {title:<28} | {od:>12} | {pc:>12} |")
    lines.append("")
    lines.append(
        f"provisioned environments serve {result['requests_served_by_pc']:,.0f} requests "
        f"(utilization {result['pc_utilization']:.1%}); they pay off above "
        f"{break_even_utilization(i['architecture']):.0%} utilization."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cost",
        description="Monthly Lambda + API Gateway cost, on-demand vs provisioned concurrency.",
    )
    parser.add_argument("--requests", type=float, default=1_000_000, help="requests per month")
    parser.add_argument(
        "--duration-ms",
        type=float,
        help="billed duration per request "
        "(default: mean warm latency from bench/results/latest.json)",
    )
    parser.add_argument(
        "--model",
        choices=("fp32", "int8"),
        default="fp32",
        help="which model's measured duration to use by default",
    )
    parser.add_argument("--memory-mb", type=int, default=3008)
    parser.add_argument("--architecture", choices=sorted(PRICES), default="x86_64")
    parser.add_argument("--pc-count", type=int, default=0, help="provisioned environments")
    parser.add_argument(
        "--pc-hours",
        type=float,
        default=HOURS_PER_MONTH,
        help="hours per month provisioned concurrency is configured",
    )
    parser.add_argument(
        "--cold-start-rate",
        type=float,
        default=0.01,
        help="fraction of on-demand requests that start an environment",
    )
    parser.add_argument(
        "--init-ms", type=float, help="billed INIT duration (default: cold INIT from latest.json)"
    )
    parser.add_argument("--no-api-gateway", action="store_true", help="Lambda cost only")
    parser.add_argument("--results", type=Path, default=RESULTS / "latest.json")
    for name in ("request", "duration", "pc", "pc-duration"):
        parser.add_argument(f"--{name}-price", type=float, help=f"override the {name} price (USD)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    bench = latest_results(args.results)
    if bench is None and args.results == RESULTS / "latest.json":
        # A fresh clone has no latest.json (gitignored) but does have the documented run.
        committed = sorted(p for p in RESULTS.glob("bench-*.json") if "quick" not in p.name)
        if committed:
            args.results = committed[-1]
            bench = latest_results(args.results)
    duration, init = args.duration_ms, args.init_ms
    if duration is None or init is None:
        if bench is None:
            print(
                f"error: no benchmark results at {args.results}; run `make bench` or pass "
                "--duration-ms and --init-ms",
                file=sys.stderr,
            )
            return 2
        variant = f"handler_{args.model}"
        if duration is None:
            duration = bench["warm"][variant]["jpeg_640x480"]["mean"]
        if init is None:
            init = bench["cold"][variant]["total_ms"]
        vcpus = bench["machine"]["threads"]
        print(
            f"(from {args.results.name}: duration {duration:.1f} ms and INIT {init:.0f} ms "
            "measured "
            "by the benchmark with "
            f"{vcpus} threads, i.e. a {vcpus * MB_PER_VCPU} MB function; a different memory size "
            "changes the duration: see docs/performance.md)\n"
        )
    try:
        result = monthly_cost(
            Inputs(
                requests=args.requests,
                duration_ms=duration,
                memory_mb=args.memory_mb,
                architecture=args.architecture,
                pc_count=args.pc_count,
                pc_hours=args.pc_hours,
                cold_start_rate=args.cold_start_rate,
                init_ms=init,
                include_api_gateway=not args.no_api_gateway,
                request_price=args.request_price,
                duration_price=args.duration_price,
                pc_price=args.pc_price,
                pc_duration_price=args.pc_duration_price,
            )
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
