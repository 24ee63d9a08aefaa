"""The load test's profiles, shortened: real Locust clients against `local_mode.serve`.

Assertions are about what the clients got (statuses, bodies, answers, connections), never about
how fast: this machine is shared.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from reliability.loadtest import REPO_ROOT, LocalServe, Settings, profile_result, run_driver
from reliability.reference import Reference

pytestmark = pytest.mark.slow

SHORT = Settings(
    concurrency=2,
    provisioned=1,
    steady_users=2,
    steady_rps=6.0,
    steady_s=6.0,
    spike_users=6,
    spike_s=4.0,
    max_requests=400,
)


def run_profile(
    name: str,
    settings: Settings,
    model_dir: Path,
    reference: Reference,
    photos: list[Path],
    tmp_path: Path,
) -> dict:
    serve = LocalServe(model_dir, settings, tmp_path, name)
    with serve as ready:
        records = run_driver(
            ready["endpoint"], ready["api_key"], name, settings, reference, photos, tmp_path
        )
    result = profile_result(name, records, serve.platform(), settings)
    result["records"] = records
    return result


def test_steady_load_has_no_5xx_no_dropped_connection_and_no_wrong_answer(
    fp32_model_dir, reference, photos, tmp_path
):
    result = run_profile("steady", SHORT, fp32_model_dir, reference, photos, tmp_path)
    s = result["summary"]
    assert s["valid"] > 10
    assert s["invalid"] > 5
    assert s["five_xx_total"] == 0, s["five_xx"]
    assert s["dropped"] == 0
    assert s["unfinished"] == 0  # every request ended with an answer within the bounds
    assert s["wrong_answers"] == 0
    assert s["right_answers"] == s["valid"]  # every valid request: a right 200
    assert s["rejected_as_expected"] == s["invalid"]  # every invalid one: a 4xx JSON error
    assert s["accepted_invalid"] == 0
    assert s["non_json_4xx"] == 0
    assert {r["kind"] for r in result["records"]} >= {"photo", "not_an_image", "no_api_key"}
    # Steady stays within the provisioned environment's capacity: no cold start in it.
    assert result["platform"]["provisioned_inits"] == 1


THROTTLED_START = '{"error":{"code":"function_error"'


def test_a_spike_past_the_concurrency_limit_gets_api_gateways_throttle_answer(
    fp32_model_dir, reference, photos, tmp_path
):
    result = run_profile("spike", SHORT, fp32_model_dir, reference, photos, tmp_path)
    s = result["summary"]
    throttled = [r for r in result["records"] if r["status"] is not None and r["status"] >= 500]
    assert throttled, "six back-to-back clients on two environments must be throttled"
    assert {r["status"] for r in throttled} == {500}
    # API Gateway's answer to a rejected invoke, in the API's error shape (INTEGRATION_FAILURE).
    # (details keep the start of the body)
    assert {r["detail"][: len(THROTTLED_START)] for r in throttled} == {THROTTLED_START}
    assert s["dropped"] == 0
    assert s["wrong_answers"] == 0
    # One environment was provisioned; the spike needed the second, started cold.
    assert result["platform"]["environments"] == 2
    assert result["platform"]["cold_starts"] == 1
    assert s["cold_requests"] == 1


def test_loadtest_cli_refuses_bad_settings_in_one_line(tmp_path):
    for extra, expected in (
        (["--concurrency", "1", "--provisioned", "2"], "error: need --concurrency >= 1"),
        (["--outputs-file", str(tmp_path / "missing.json")], "error: outputs file not found"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "reliability.loadtest", *extra],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        assert result.stdout.strip().startswith(expected), result.stdout
        assert len(result.stdout.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr


def test_unknown_profile_is_refused():
    from reliability.loadtest import LoadTestError, profile_stages

    with pytest.raises(LoadTestError, match="unknown profile 'burst'"):
        profile_stages("burst", replace(SHORT))


def test_profiles_are_bounded_in_time():
    from reliability.loadtest import profile_stages

    for name in ("steady", "ramp", "spike"):
        stages = profile_stages(name, Settings())
        assert stages[-1]["until"] <= 60
        assert json.dumps(stages)  # what the driver receives
