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

Then one million images through batch predictions vs through the endpoint (``batch_vs_endpoint``):

  batch    = Lambda requests (one per batch) + GB-s (images / measured images/s) + INIT of each
             environment + Step Functions (parent state transitions, EXPRESS child requests and
             GB-s) + S3 (GET per image, LIST per 1,000 keys, PUT per batch and ResultWriter file)
  endpoint = the on-demand column above for the same images: Lambda requests and GB-s (measured
             per-image latency) + API Gateway REST requests
Both rates come from one ``python -m bench.batch`` run (bench/results/batch-*.json).
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

# Transcribed from https://aws.amazon.com/step-functions/pricing/ and https://aws.amazon.com/s3/pricing/
# (us-east-1, S3 Standard, first tiers, no free tier), checked 2026-12 against stored copies of
# those pages: Standard workflows $0.025 per 1,000 state transitions; Express workflows $1.00 per
# million requests and $0.00001667 per GB-second, billed in 100 ms and 64 MB increments; S3
# PUT/COPY/POST/LIST $0.005 and GET $0.0004 per 1,000 requests.
BATCH_PRICES_TAKEN = "2026-12 (us-east-1, AWS public pricing pages; re-check before use)"
SFN_STANDARD_TRANSITION = 0.025 / 1000
SFN_EXPRESS_REQUEST = 1.00 / 1_000_000
SFN_EXPRESS_GB_S = 0.00001667
EXPRESS_MEMORY_GB = 64 / 1024  # a child holding one batch of keys stays in the first 64 MB chunk
S3_GET = 0.0004 / 1000
S3_PUT_LIST = 0.005 / 1000
LIST_PAGE_KEYS = 1000  # ListObjectsV2 returns at most 1,000 keys per request
# Parent workflow: Choice, Map entered/exited, Succeed. Modelled, not published: each child
# workflow the Map Run starts is counted as one more parent transition (conservative).
PARENT_TRANSITIONS = 4
RESULT_WRITER_FILES = 3  # manifest.json + SUCCEEDED_0.json (+ FAILED_0.json)


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


@dataclass(frozen=True)
class BatchInputs:
    images: float
    images_per_s: float  # one batch function environment, measured (bench.batch)
    memory_mb: int
    items_per_batch: int
    architecture: str = "x86_64"
    environments: int = 10  # cold starts: one per concurrent environment (max concurrency)
    init_ms: float = 0.0
    # Per child: invoking the function and recording its result, on top of its duration.
    child_overhead_ms: float = 100.0


def batch_cost(i: BatchInputs) -> dict[str, Any]:
    """Line items in USD for ``i.images`` images through the Distributed Map."""
    if i.architecture not in PRICES:
        raise ValueError(f"architecture must be one of {sorted(PRICES)}")
    if i.images < 0 or i.images_per_s <= 0 or not 128 <= i.memory_mb <= 10240:
        raise ValueError("images >= 0, images_per_s > 0 and 128 <= memory_mb <= 10240 please")
    if not 1 <= i.items_per_batch <= 200 or i.environments < 0:
        raise ValueError("1 <= items_per_batch <= 200 and environments >= 0 please")
    price = PRICES[i.architecture]
    gb = i.memory_mb / 1024
    batches = math.ceil(i.images / i.items_per_batch)
    batch_s = i.items_per_batch / i.images_per_s
    billed_batch_s = math.ceil(batch_s * 1000) / 1000
    child_s = math.ceil((batch_s + i.child_overhead_ms / 1000) * 10) / 10  # 100 ms increments
    items = {
        "lambda_requests": batches * price["request"],
        "lambda_compute": batches * billed_batch_s * gb * price["duration_gb_s"],
        "lambda_init": i.environments * i.init_ms / 1000 * gb * price["duration_gb_s"],
        "sfn_state_transitions": (PARENT_TRANSITIONS + batches) * SFN_STANDARD_TRANSITION,
        "sfn_express_requests": batches * SFN_EXPRESS_REQUEST,
        "sfn_express_duration": batches * child_s * EXPRESS_MEMORY_GB * SFN_EXPRESS_GB_S,
        "s3_get": i.images * S3_GET,
        "s3_list": math.ceil(i.images / LIST_PAGE_KEYS) * S3_PUT_LIST,
        "s3_put": (batches + RESULT_WRITER_FILES) * S3_PUT_LIST,
    }
    total = sum(items.values())
    return {"batches": batches, "batch_seconds": round(batch_s, 3), **items, "total": total}


def batch_vs_endpoint(
    batch: BatchInputs, *, endpoint_ms: float, endpoint_memory_mb: int, cold_start_rate: float
) -> dict[str, Any]:
    endpoint = monthly_cost(
        Inputs(
            requests=batch.images,
            duration_ms=endpoint_ms,
            memory_mb=endpoint_memory_mb,
            architecture=batch.architecture,
            cold_start_rate=cold_start_rate,
            init_ms=batch.init_ms,
        )
    )["on_demand"]
    result = batch_cost(batch)
    return {
        "inputs": batch.__dict__
        | {"endpoint_ms": endpoint_ms, "endpoint_memory_mb": endpoint_memory_mb},
        "prices_taken": {"lambda_apigw": PRICES_TAKEN, "step_functions_s3": BATCH_PRICES_TAKEN},
        "batch": result,
        "endpoint": endpoint,
        "endpoint_over_batch": endpoint["total"] / result["total"] if result["total"] else None,
    }


def render_batch(result: dict[str, Any], source: str) -> str:
    i, b, e = result["inputs"], result["batch"], result["endpoint"]
    lines = [
        f"{i['images']:,.0f} images: batch predictions vs the endpoint ({source})",
        f"batch: {i['images_per_s']:.1f} images/s per environment at {i['memory_mb']} MB, "
        f"{i['items_per_batch']} per batch ({b['batches']:,} batches of {b['batch_seconds']:.1f} s)"
        f"; endpoint: {i['endpoint_ms']:.1f} ms per image at {i['endpoint_memory_mb']} MB",
        f"prices: Lambda/API Gateway {PRICES_TAKEN}; Step Functions/S3 {BATCH_PRICES_TAKEN}",
        "",
        f"| {'item':<40} | {'batch':>10} | {'endpoint':>10} |",
        f"|{'-' * 42}|{'-' * 12}|{'-' * 12}|",
    ]
    rows = [
        ("Lambda requests", b["lambda_requests"], e["requests"]),
        ("Lambda compute (GB-s)", b["lambda_compute"], e["compute"]),
        ("Lambda INIT (GB-s)", b["lambda_init"], e["cold_init"]),
        ("Step Functions state transitions", b["sfn_state_transitions"], None),
        ("Step Functions EXPRESS requests", b["sfn_express_requests"], None),
        ("Step Functions EXPRESS duration (GB-s)", b["sfn_express_duration"], None),
        ("S3 GET (one per image)", b["s3_get"], None),
        ("S3 LIST + PUT (listing, results)", b["s3_list"] + b["s3_put"], None),
        ("API Gateway REST requests", None, e["api_gateway"]),
        ("TOTAL (USD)", b["total"], e["total"]),
    ]
    for title, batch_usd, endpoint_usd in rows:
        bt = f"{batch_usd:.2f}" if batch_usd is not None else "-"
        et = f"{endpoint_usd:.2f}" if endpoint_usd is not None else "-"
        lines.append(f"| {title:<40} | {bt:>10} | {et:>10} |")
    if result["endpoint_over_batch"]:
        lines += ["", f"the endpoint costs {result['endpoint_over_batch']:.1f}x the batch run"]
    return "\n".join(lines)


def latest_batch_results(results_dir: Path = RESULTS) -> tuple[Path, dict[str, Any]] | None:
    """The newest full ``python -m bench.batch`` run (quick runs are smoke tests, not data)."""
    for path in sorted(results_dir.glob("batch-*.json"), reverse=True):
        if "quick" in path.name:
            continue
        data = latest_results(path)
        if data is not None:
            return path, data
    return None


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
    b = parser.add_argument_group("batch vs endpoint (from the newest bench/results/batch-*.json)")
    b.add_argument("--images", type=float, default=1_000_000, help="images to price")
    b.add_argument("--batch-results", type=Path, help="a `python -m bench.batch` result file")
    b.add_argument("--batch-images-per-s", type=float, help="override the measured rate")
    b.add_argument("--items-per-batch", type=int, default=100, help="ItemBatcher batch size")
    b.add_argument("--batch-environments", type=int, default=10, help="concurrent environments")
    b.add_argument("--no-batch", action="store_true", help="skip the batch comparison")
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
    if args.no_batch:
        return 0
    return _print_batch(args, init)


def _print_batch(args: argparse.Namespace, init_ms: float) -> int:
    found = (
        (args.batch_results, latest_results(args.batch_results))
        if args.batch_results
        else latest_batch_results()
    )
    if found is None or found[1] is None:
        print(
            "\n(no batch benchmark results: run `python -m bench.batch` or `make bench` for the "
            "batch vs endpoint comparison)"
        )
        return 0
    path, bench = found
    assert bench is not None
    rate = args.batch_images_per_s or bench["s3"]["images_per_s"]
    try:
        result = batch_vs_endpoint(
            BatchInputs(
                images=args.images,
                images_per_s=rate,
                memory_mb=int(bench["memory_mb"]),
                items_per_batch=args.items_per_batch,
                architecture=args.architecture,
                environments=args.batch_environments,
                init_ms=init_ms,
            ),
            # The same run's real-time handler: one image per request, same vCPUs.
            endpoint_ms=1000.0 / bench["realtime"]["images_per_s"],
            endpoint_memory_mb=int(bench["memory_mb"]),
            cold_start_rate=args.cold_start_rate,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    source = f"rates from {path.name}: batch over the local S3 server, real-time handler, same run"
    print("\n" + (json.dumps(result, indent=2) if args.json else render_batch(result, source)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
