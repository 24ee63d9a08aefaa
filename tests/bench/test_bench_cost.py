"""The cost model against numbers worked out by hand from AWS's published Lambda formula.

Prices below are typed in from the AWS pricing pages (us-east-1), not read from bench.cost, so a
wrong constant or formula in the code fails here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.cost import Inputs, break_even_utilization, monthly_cost

ROOT = Path(__file__).resolve().parents[2]

X86_REQUEST = 0.20 / 1e6
X86_GB_S = 0.0000166667
X86_PC_GB_S = 0.0000041667
X86_PC_DURATION_GB_S = 0.0000097222
ARM_GB_S = 0.0000133334
APIGW = 3.50 / 1e6


def test_on_demand_bills_rounded_duration_requests_init_and_api_gateway() -> None:
    # 10M requests of 87.3 ms -> billed 88 ms each, on a 2048 MB (2 GB) x86 function.
    result = monthly_cost(
        Inputs(
            requests=10_000_000,
            duration_ms=87.3,
            memory_mb=2048,
            cold_start_rate=0.01,
            init_ms=1500,
        )
    )
    od = result["on_demand"]
    assert result["billed_duration_ms"] == 88
    assert od["requests"] == pytest.approx(10_000_000 * X86_REQUEST)  # $2.00
    assert od["compute"] == pytest.approx(10_000_000 * 0.088 * 2 * X86_GB_S)  # $29.33
    assert od["compute"] == pytest.approx(29.3334, abs=1e-3)
    assert od["cold_init"] == pytest.approx(100_000 * 1.5 * 2 * X86_GB_S)  # 100k cold starts
    assert od["api_gateway"] == pytest.approx(35.0)
    assert od["total"] == pytest.approx(2.0 + 29.33339 + 5.00001 + 35.0, abs=1e-3)


def test_provisioned_concurrency_all_month_serves_everything_at_the_pc_rate() -> None:
    result = monthly_cost(
        Inputs(
            requests=10_000_000,
            duration_ms=87.3,
            memory_mb=2048,
            pc_count=3,
            cold_start_rate=0.01,
            init_ms=1500,
        )
    )
    pc = result["provisioned"]
    # 3 environments x 2 GB x 730 h x 3600 s x PC price = $65.70
    assert pc["pc_charge"] == pytest.approx(3 * 2 * 730 * 3600 * X86_PC_GB_S)
    assert pc["pc_charge"] == pytest.approx(65.70, abs=0.01)
    # 3.8 requests/s on average against a capacity of 3 / 0.088 s = 34 requests/s: all served.
    assert result["requests_served_by_pc"] == pytest.approx(10_000_000)
    assert pc["pc_compute"] == pytest.approx(10_000_000 * 0.088 * 2 * X86_PC_DURATION_GB_S)
    assert pc["on_demand_compute"] == pytest.approx(0.0)
    assert pc["cold_init"] == pytest.approx(0.0)  # provisioned INIT runs ahead of traffic
    assert pc["total"] == pytest.approx(2.0 + 65.7004 + 17.1111 + 35.0, abs=1e-3)


def test_partial_hours_and_capacity_limit_spill_over_to_on_demand() -> None:
    # Half the month provisioned: half the (evenly spread) requests land on PC environments.
    half = monthly_cost(
        Inputs(
            requests=1_000_000,
            duration_ms=100,
            memory_mb=1024,
            pc_count=2,
            pc_hours=365,
            include_api_gateway=False,
        )
    )
    assert half["requests_served_by_pc"] == pytest.approx(500_000)
    assert half["provisioned"]["on_demand_compute"] == pytest.approx(500_000 * 0.1 * 1 * X86_GB_S)
    # 100M requests/month = 38.05/s; one environment at 100 ms serves 10/s; 26.28% on PC.
    capped = monthly_cost(
        Inputs(
            requests=100_000_000,
            duration_ms=100,
            memory_mb=1024,
            pc_count=1,
            include_api_gateway=False,
        )
    )
    share = 10 / (100_000_000 / (730 * 3600))
    assert capped["requests_served_by_pc"] == pytest.approx(100_000_000 * share)
    assert capped["pc_utilization"] == pytest.approx(1.0)
    assert capped["provisioned"]["api_gateway"] == 0.0


def test_arm64_price_and_break_even() -> None:
    result = monthly_cost(
        Inputs(requests=1_000_000, duration_ms=50, memory_mb=1769, architecture="arm64")
    )
    assert result["on_demand"]["compute"] == pytest.approx(
        1_000_000 * 0.05 * 1769 / 1024 * ARM_GB_S
    )
    # PC pays off when u * (on-demand - PC duration) > PC price: u > 0.0000041667 / 0.0000069445
    assert break_even_utilization("x86_64") == pytest.approx(
        X86_PC_GB_S / (X86_GB_S - X86_PC_DURATION_GB_S)
    )
    assert break_even_utilization("x86_64") == pytest.approx(0.60, abs=0.005)


@pytest.mark.parametrize(
    "bad",
    [
        {"memory_mb": 64},
        {"architecture": "sparc"},
        {"cold_start_rate": 2.0},
        {"pc_hours": 800},
    ],
)
def test_bad_inputs_are_refused(bad: dict) -> None:
    args = {"requests": 1000, "duration_ms": 10, "memory_mb": 1024} | bad
    with pytest.raises(ValueError, match=r"memory_mb|architecture|cold_start_rate|pc_hours"):
        monthly_cost(Inputs(**args))


def test_cli_prints_both_totals_and_refuses_bad_input(tmp_path: Path) -> None:
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.cost",
            "--requests",
            "10000000",
            "--duration-ms",
            "87.3",
            "--init-ms",
            "1500",
            "--cold-start-rate",
            "0.01",
            "--memory-mb",
            "2048",
            "--pc-count",
            "3",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    total_line = next(line for line in ok.stdout.splitlines() if "TOTAL" in line)
    assert "71.33" in total_line  # 2.00 + 29.33 + 5.00 + 35.00
    assert "119.81" in total_line  # 2.00 + 65.70 + 17.11 + 35.00
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.cost",
            "--duration-ms",
            "10",
            "--init-ms",
            "100",
            "--memory-mb",
            "20000",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("error:")
    assert "Traceback" not in bad.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "bench.cost", "--results", str(tmp_path / "none.json")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert missing.returncode == 2
    assert "make bench" in missing.stderr


# ---------------------------------------------------------------- batch vs endpoint

SFN_TRANSITION = 0.025 / 1000
SFN_EXPRESS_REQUEST = 1.00 / 1e6
SFN_EXPRESS_GB_S = 0.00001667
S3_GET = 0.0004 / 1000
S3_PUT_LIST = 0.005 / 1000


def test_batch_cost_for_a_million_images_worked_out_by_hand() -> None:
    from bench.cost import BatchInputs, batch_cost

    # 1M images at 40 images/s per 3538 MB environment, 100 per batch: 10,000 batches of 2.5 s.
    result = batch_cost(
        BatchInputs(
            images=1_000_000,
            images_per_s=40,
            memory_mb=3538,
            items_per_batch=100,
            environments=10,
            init_ms=2000,
            child_overhead_ms=100,
        )
    )
    gb = 3538 / 1024
    assert result["batches"] == 10_000
    assert result["lambda_requests"] == pytest.approx(10_000 * X86_REQUEST)
    assert result["lambda_compute"] == pytest.approx(10_000 * 2.5 * gb * X86_GB_S)
    assert result["lambda_compute"] == pytest.approx(1.4396, abs=1e-3)
    assert result["lambda_init"] == pytest.approx(10 * 2.0 * gb * X86_GB_S)
    assert result["sfn_state_transitions"] == pytest.approx((4 + 10_000) * SFN_TRANSITION)
    assert result["sfn_express_requests"] == pytest.approx(10_000 * SFN_EXPRESS_REQUEST)
    # Each child runs 2.5 s + 0.1 s, billed in 100 ms steps, in one 64 MB chunk.
    assert result["sfn_express_duration"] == pytest.approx(10_000 * 2.6 * 0.0625 * SFN_EXPRESS_GB_S)
    assert result["s3_get"] == pytest.approx(1_000_000 * S3_GET)  # $0.40
    assert result["s3_list"] == pytest.approx(1_000 * S3_PUT_LIST)  # 1,000 keys per LIST
    assert result["s3_put"] == pytest.approx((10_000 + 3) * S3_PUT_LIST)
    assert result["total"] == pytest.approx(
        0.002 + 1.43962 + 0.0011517 + 0.2501 + 0.01 + 0.0270888 + 0.40 + 0.005 + 0.050015,
        abs=1e-4,
    )


def test_endpoint_side_of_the_comparison_is_the_on_demand_column() -> None:
    from bench.cost import BatchInputs, batch_vs_endpoint

    result = batch_vs_endpoint(
        BatchInputs(images=1_000_000, images_per_s=40, memory_mb=3538, items_per_batch=100),
        endpoint_ms=28.6,
        endpoint_memory_mb=3538,
        cold_start_rate=0.0,
    )
    endpoint = result["endpoint"]
    assert endpoint["api_gateway"] == pytest.approx(1_000_000 * APIGW)  # $3.50
    assert endpoint["compute"] == pytest.approx(1_000_000 * 0.029 * 3538 / 1024 * X86_GB_S)
    assert result["endpoint_over_batch"] == pytest.approx(
        endpoint["total"] / result["batch"]["total"]
    )
    assert result["endpoint_over_batch"] > 1


def test_cost_cli_prices_batch_from_a_bench_batch_result(tmp_path: Path) -> None:
    results = tmp_path / "batch-20261203T000000.json"
    results.write_text(
        '{"memory_mb": 3538, "s3": {"images_per_s": 40.0}, "realtime": {"images_per_s": 35.0}}'
    )
    common = ["--duration-ms", "30", "--init-ms", "2000", "--cold-start-rate", "0"]
    ok = subprocess.run(
        [sys.executable, "-m", "bench.cost", *common, "--batch-results", str(results)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "1,000,000 images: batch predictions vs the endpoint" in ok.stdout
    batch_total = ok.stdout.splitlines()[-3]
    assert batch_total.startswith("| TOTAL (USD)")
    # endpoint: 1M x (0.20e-6 + 0.029 s x 3.455 GB x price) + 3.50; 1000/35 = 28.57 -> 29 ms
    endpoint = 0.20 + 1_000_000 * 0.029 * 3538 / 1024 * X86_GB_S + 3.50
    assert f"{endpoint:.2f}" in batch_total
    skipped = subprocess.run(
        [sys.executable, "-m", "bench.cost", *common, "--no-batch"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert skipped.returncode == 0
    assert "batch predictions" not in skipped.stdout
