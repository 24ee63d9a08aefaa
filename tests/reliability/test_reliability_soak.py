"""Soak, shortened: one environment, hundreds of requests; memory stays bounded, answers right.

The long run (tens of thousands of requests) is `make soak`, or RELIABILITY_SOAK_REQUESTS=20000
for this test.
"""

from __future__ import annotations

import os

import pytest

from reliability.soak import memory_growth, run_soak

pytestmark = pytest.mark.slow

REQUESTS = int(os.environ.get("RELIABILITY_SOAK_REQUESTS", "300"))
# Bounded memory: RSS may settle by a few MB (allocator arenas); a leak of 50 kB per request
# grows it by about 12 MB over the 270 measured requests (see the detector's own test below).
MAX_GROWTH_MB = 8.0


def test_soak_through_one_environment_keeps_memory_bounded_and_answers_right(
    fp32_model_dir, reference, photos
):
    result = run_soak(fp32_model_dir, reference, photos, REQUESTS)
    s = result["summary"]
    assert result["environments"] == 1
    assert result["resets"] == 0
    assert s["requests"] == REQUESTS
    assert s["wrong_answers"] == 0
    assert s["right_answers"] == s["valid"]
    assert s["rejected_as_expected"] == s["invalid"]
    assert s["five_xx_total"] == 0
    assert s["dropped"] == 0
    assert len(result["rss_mb"]) == REQUESTS  # one RSS sample per request, from the platform
    assert result["memory"]["growth_mb"] is not None
    assert result["memory"]["growth_mb"] < MAX_GROWTH_MB, result["memory"]
    assert all(w is not None for w in result["p99_windows_ms"])


def test_the_growth_measure_catches_a_leak_and_ignores_the_warm_up():
    flat = [300.0 + (20.0 if i < 20 else 0.0) + (i % 3) * 0.1 for i in range(400)]
    assert abs(memory_growth(flat)["growth_mb"]) < 1
    leak = [300.0 + 0.05 * i for i in range(REQUESTS)]  # 50 kB per request
    grown = memory_growth(leak)
    assert grown["growth_mb"] > MAX_GROWTH_MB
    assert grown["slope_mb_per_1k"] == pytest.approx(50.0, rel=0.01)
