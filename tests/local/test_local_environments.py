"""Lambda's concurrency model in local mode: environments as processes, limit, provisioned, reset.

Small handlers written into tmp_path stand in for the model handler, so INIT takes milliseconds
and each behaviour is deterministic (a handler can wait for a gate file to hold its environment
busy). The real handler runs in these environments in tests/local/test_local_e2e.py and
tests/reliability/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from serve_helpers import REPO_ROOT

from local_mode.apispec import load_spec, template_path
from local_mode.environments import (
    Concurrency,
    ConcurrencyError,
    EnvironmentPool,
    FunctionError,
    concurrency_from_template,
)
from local_mode.gateway import IntegrationFailure, LocalGateway, serve_gateway

KEY = "environments-test-key-0123456789"

HANDLER = """
import json, os, pathlib, time
INIT_PID = os.getpid()
TMP = pathlib.Path(os.environ["TMPDIR"])
(TMP / "written-at-init").write_text(str(INIT_PID))
if os.environ.get("FAIL_INIT_ONCE") and not (TMP / "failed-once").exists():
    (TMP / "failed-once").write_text("")
    raise RuntimeError("INIT failed once")

def handler(event, context):
    action = (event.get("queryStringParameters") or {}).get("action", "ok")
    if action == "wait":
        gate = pathlib.Path(os.environ["GATE"])
        while not gate.exists():
            time.sleep(0.01)
    if action == "sleep":
        time.sleep(60)
    if action == "raise":
        raise ValueError("handler failed")
    if action == "unserializable":
        return {"statusCode": 200, "body": object()}
    body = {
        "pid": os.getpid(),
        "init_pid": INIT_PID,
        "initialization_type": os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE"),
        "tmp": str(TMP),
        "cache_dir": os.environ.get("MODEL_CACHE_DIR"),
        "parent_only": os.environ.get("LOCAL_TEST_PARENT_ONLY"),
        "request_id": context.aws_request_id,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "tmp_files": sorted(p.name for p in TMP.iterdir()),
    }
    return {"statusCode": 200, "body": json.dumps(body)}
"""


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events if e["type"] == kind]


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    (code / "app.py").write_text(HANDLER)
    return code


def make_pool(
    tmp_path: Path,
    code_dir: Path,
    *,
    limit: int,
    provisioned: int = 0,
    timeout_s: int = 20,
    extra_env: dict[str, str] | None = None,
) -> tuple[EnvironmentPool, Recorder]:
    recorder = Recorder()
    tmp_root = tmp_path / "environments"
    tmp_root.mkdir()
    pool = EnvironmentPool(
        environment={"GATE": str(tmp_path / "gate"), **(extra_env or {})},
        function_name="Test",
        memory_mb=512,
        timeout_s=timeout_s,
        concurrency=Concurrency(limit=limit, provisioned=provisioned, source="test"),
        tmp_root=tmp_root,
        handler="app.handler",
        code_dir=code_dir,
        on_platform_event=recorder,
    )
    return pool, recorder


def event(action: str = "ok") -> dict[str, Any]:
    return {"httpMethod": "GET", "path": "/health", "queryStringParameters": {"action": action}}


def call(pool: EnvironmentPool, action: str = "ok", request_id: str = "r") -> dict[str, Any]:
    return json.loads(pool.invoke(event(action), request_id)["body"])


def wait_until(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.fixture
def pool_factory(tmp_path: Path, code_dir: Path) -> Iterator[Any]:
    pools: list[EnvironmentPool] = []

    def factory(**kwargs: Any) -> tuple[EnvironmentPool, Recorder]:
        pool, recorder = make_pool(tmp_path, code_dir, **kwargs)
        pools.append(pool)
        pool.start()
        return pool, recorder

    yield factory
    for pool in pools:
        pool.close()


# -- the stage's values ---------------------------------------------------------------------


@pytest.mark.parametrize("stack", ["ResnetServingDev", "ResnetServingProd"])
def test_concurrency_comes_from_each_stages_template_and_config(stack):
    from stacks.config import STAGES

    spec = load_spec(template_path(stack))
    template = json.loads(template_path(stack).read_text())
    got = concurrency_from_template(template, spec.function_logical_id)
    stage = STAGES[stack.removeprefix("ResnetServing").lower()]
    assert got.provisioned == stage.provisioned_concurrency_min
    if stage.reserved_concurrency is None:
        assert got.limit == 10  # the documented local default for the unreserved pool
        assert "no reserved concurrency" in got.source
    else:
        assert got.limit == stage.reserved_concurrency


def test_more_provisioned_than_the_limit_is_refused():
    with pytest.raises(ConcurrencyError, match="provisioned concurrency 3"):
        Concurrency(limit=2, provisioned=3)


def test_serve_refuses_conflicting_flags_in_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "local_mode.serve", "--concurrency", "1", "--provisioned", "2"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stdout.strip().splitlines()
    assert lines == [
        "error: provisioned concurrency 2 must be between 0 and the concurrency limit 1"
    ]
    assert "Traceback" not in result.stderr


# -- environments ---------------------------------------------------------------------------


def test_provisioned_environments_are_initialized_before_any_request(pool_factory):
    pool, recorder = pool_factory(limit=3, provisioned=2)
    envs = pool.environments()
    assert len(envs) == 2
    assert all(e.ready for e in envs)
    assert len(recorder.of("platform.initReport")) == 2
    body = call(pool)
    assert body["initialization_type"] == "provisioned-concurrency"
    (report,) = recorder.of("platform.report")
    assert "initDurationMs" not in report["record"]["metrics"]  # warm: INIT ran ahead
    assert pool.stats.cold_starts == 0


def test_each_environment_is_a_process_with_its_own_tmp_and_only_its_environment(
    pool_factory, monkeypatch
):
    monkeypatch.setenv("LOCAL_TEST_PARENT_ONLY", "must not leak into the function")
    pool, _ = pool_factory(limit=2)
    gate = Path(pool.environment["GATE"])
    results: list[dict[str, Any]] = []
    threads = [
        threading.Thread(target=lambda: results.append(call(pool, "wait"))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    wait_until(lambda: sum(e.busy for e in pool.environments()) == 2)
    gate.write_text("")
    for t in threads:
        t.join()
    pids = {r["pid"] for r in results}
    assert len(pids) == 2
    assert os.getpid() not in pids
    assert len({r["tmp"] for r in results}) == 2
    assert all(r["cache_dir"].startswith(r["tmp"]) for r in results)
    assert all(r["parent_only"] is None for r in results)
    assert all(r["initialization_type"] == "on-demand" for r in results)


def test_an_idle_environment_is_reused_warm(pool_factory):
    pool, recorder = pool_factory(limit=4)
    first, second = call(pool, request_id="a"), call(pool, request_id="b")
    assert first["pid"] == second["pid"]
    assert first["request_id"] == "a"
    assert second["request_id"] == "b"
    assert 0 < second["remaining_ms"] <= 20_000
    reports = recorder.of("platform.report")
    assert "initDurationMs" in reports[0]["record"]["metrics"]  # the cold start
    assert "initDurationMs" not in reports[1]["record"]["metrics"]
    assert pool.stats.cold_starts == 1
    assert len(pool.environments()) == 1


def test_a_request_over_the_limit_is_rejected_not_queued(pool_factory):
    pool, _ = pool_factory(limit=1)
    gate = Path(pool.environment["GATE"])
    holder = threading.Thread(target=call, args=(pool, "wait"))
    holder.start()
    wait_until(lambda: any(e.busy for e in pool.environments()))
    try:
        with pytest.raises(IntegrationFailure) as info:
            call(pool)
    finally:
        gate.write_text("")
        holder.join()
    assert info.value.failure.status == 500
    assert "concurrency limit 1" in str(info.value)
    assert pool.stats.throttles == 1
    assert call(pool)["pid"]  # capacity is back once the running request ends


def test_throttled_invoke_is_apigateways_500_over_http(tmp_path, code_dir, stack_template):
    pool, _ = make_pool(tmp_path, code_dir, limit=1)
    gate = Path(pool.environment["GATE"])
    pool.start()
    try:
        gateway = LocalGateway(load_spec(stack_template), pool, KEY, throttle=False)
        with serve_gateway(gateway) as running:
            url = running.endpoint + "health"
            headers = {"x-api-key": KEY}
            holder = threading.Thread(
                target=requests.get, args=(url + "?action=wait",), kwargs={"headers": headers}
            )
            holder.start()
            wait_until(lambda: any(e.busy for e in pool.environments()))
            throttled = requests.get(url, headers=headers, timeout=10)
            gate.write_text("")
            holder.join()
            after = requests.get(url, headers=headers, timeout=10)
    finally:
        pool.close()
    assert throttled.status_code == 500
    # INTEGRATION_FAILURE's gateway response from the template: the API's one error shape.
    assert throttled.json()["error"]["code"] == "function_error"
    assert throttled.headers["x-amzn-ErrorType"] == "InternalServerErrorException"
    assert after.status_code == 200


def test_environment_killed_mid_request_is_502_then_a_cold_start_with_tmp_kept(
    tmp_path, code_dir, stack_template
):
    pool, recorder = make_pool(tmp_path, code_dir, limit=1)
    pool.start()
    try:
        gateway = LocalGateway(load_spec(stack_template), pool, KEY, throttle=False)
        with serve_gateway(gateway) as running:
            url = running.endpoint + "health"
            headers = {"x-api-key": KEY}
            before = requests.get(url, headers=headers, timeout=10).json()
            result: dict[str, requests.Response] = {}
            t = threading.Thread(
                target=lambda: result.setdefault(
                    "r", requests.get(url + "?action=wait", headers=headers, timeout=30)
                )
            )
            t.start()
            wait_until(lambda: any(e.busy for e in pool.environments()))
            (env,) = pool.environments()
            assert pool.kill(env.id)
            t.join()
            after = requests.get(url, headers=headers, timeout=30).json()
    finally:
        pool.close()
    assert result["r"].status_code == 502
    assert result["r"].json()["error"]["code"] == "function_error"
    assert after["pid"] != before["pid"]
    assert after["tmp"] == before["tmp"]  # the same environment, reset: /tmp survives
    assert after["tmp_files"] == ["written-at-init"]
    reports = recorder.of("platform.report")
    assert reports[1]["record"]["errorType"] == "Runtime.ExitError"
    assert "initDurationMs" in reports[2]["record"]["metrics"]  # the next request was cold
    assert pool.stats.resets == 1


def test_a_request_past_the_timeout_is_a_502_and_resets_the_environment(pool_factory):
    pool, recorder = pool_factory(limit=1, timeout_s=1)
    first = call(pool)
    with pytest.raises(FunctionError, match=r"Task timed out after 1\.00 seconds"):
        call(pool, "sleep")
    assert call(pool)["pid"] != first["pid"]
    assert recorder.of("platform.report")[1]["record"]["status"] == "timeout"


def test_a_handler_exception_is_a_function_error_without_a_reset(pool_factory):
    pool, _ = pool_factory(limit=1)
    first = call(pool)
    with pytest.raises(FunctionError, match="ValueError: handler failed"):
        call(pool, "raise")
    with pytest.raises(FunctionError, match=r"Runtime\.MarshalError"):
        call(pool, "unserializable")
    assert call(pool)["pid"] == first["pid"]
    assert pool.stats.resets == 0


def test_failed_init_fails_the_request_and_the_next_one_initializes_again(pool_factory):
    pool, recorder = pool_factory(limit=1, extra_env={"FAIL_INIT_ONCE": "1"})
    with pytest.raises(FunctionError, match="INIT failed once"):
        call(pool)
    assert call(pool)["pid"]
    statuses = [e["record"]["status"] for e in recorder.of("platform.initReport")]
    assert statuses == ["failure", "success"]


def test_close_stops_every_runtime_process(tmp_path, code_dir):
    pool, _ = make_pool(tmp_path, code_dir, limit=2, provisioned=2)
    pool.start()
    processes = [e.process for e in pool.environments()]
    pool.close()
    assert all(p is not None and p.poll() is not None for p in processes)


def test_retiring_idle_environments_starts_the_next_request_in_a_fresh_tmp(pool_factory):
    pool, _ = pool_factory(limit=1)
    first = call(pool)
    assert pool.retire_idle() == 1
    second = call(pool)
    assert second["tmp"] != first["tmp"]
    assert second["pid"] != first["pid"]
    assert pool.stats.cold_starts == 2
