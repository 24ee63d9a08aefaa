"""scripts/bench_handler.py still runs end to end (its numbers are not asserted: shared CPU)."""

from __future__ import annotations

import os
import re

import pytest

from scripts import bench_handler


@pytest.mark.slow
def test_bench_script_prints_cold_phases_and_warm_percentiles(fp32_model_dir, capsys):
    env_before = dict(os.environ)
    code = bench_handler.main(
        ["--model-dir", str(fp32_model_dir), "--cold-runs", "1", "--warm-requests", "5"]
    )
    assert code == 0
    assert dict(os.environ) == env_before
    out = capsys.readouterr().out
    for phase in bench_handler.PHASES:
        assert re.search(rf"^  {phase}\s+\d+\.\d$", out, re.M), phase
    assert re.search(r"^  download_ms\s+(\d+\.\d)$", out, re.M).group(1) != "0.0"
    for row in ("handler total", "decode+preprocess", "inference"):
        assert re.search(rf"^  {re.escape(row)}\s+\d+\.\d\s+\d+\.\d$", out, re.M), row
