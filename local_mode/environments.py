"""Lambda's concurrency model on this machine: execution environments as separate processes.

Each execution environment is a process running runtime_interface.py, whose INIT is importing the
handler (the model download, checksum and ONNX session), and which serves one request at a time.
The pool behaves as Lambda does for synchronous invokes
(https://docs.aws.amazon.com/lambda/latest/dg/lambda-concurrency.html,
https://docs.aws.amazon.com/lambda/latest/dg/configuration-concurrency.html):

- at most `limit` requests run at once (the function's reserved concurrency); a request beyond
  that is not queued but rejected, and API Gateway answers a rejected invoke with a 500,
  worded by the API's INTEGRATION_FAILURE gateway response ("If the Lambda API rejects the
  invocation request, API Gateway returns a 500 error code", https://docs.aws.amazon.com/lambda/latest/dg/services-apigateway-errors.html);
- `provisioned` environments are initialized at start (AWS_LAMBDA_INITIALIZATION_TYPE
  provisioned-concurrency) and take requests first; the others start on demand, and the request
  that starts one waits for its INIT (a cold start);
- an idle environment is reused (a warm start); environments are not reaped when idle;
- an environment whose runtime crashes or times out mid-request is reset: the request fails (API
  Gateway: 502), the runtime is restarted by the next request it gets (INIT again, a cold start),
  and its /tmp is kept ("The Lambda reset does not clear the /tmp directory content prior to the
  next init phase", https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtime-environment.html).

Each environment has its own /tmp (MODEL_CACHE_DIR lives in it), as in Lambda. What the platform
would log (initStart, initReport, start, report with Duration, Max Memory Used and Init Duration)
goes to `on_platform_event` as Telemetry API records
(https://docs.aws.amazon.com/lambda/latest/dg/telemetry-schema-reference.html), by default as JSON
lines on stdout, which is the function's log.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import runtime_interface
from .gateway import LAMBDA_SRC, GatewayFailure, IntegrationFailure

# dev reserves no concurrency: in AWS it draws on the account's unreserved pool (1,000 by
# default, lower in new accounts: https://docs.aws.amazon.com/lambda/latest/dg/limits.html).
# Locally the default is 10, the quota new accounts commonly start with (see StageConfig's
# reserved_concurrency), which a 2-core machine can still start.
DEFAULT_UNRESERVED_LIMIT = 10

# API Gateway's answer when Lambda rejects the invoke (throttled): a 500, not a 429, and the
# same body as any integration failure.
INVOKE_REJECTED = GatewayFailure(
    500, "Internal server error", "InternalServerErrorException", "INTEGRATION_FAILURE"
)

SHUTDOWN_GRACE_S = 2.0  # Lambda caps the Shutdown phase at 2 s, then SIGKILL
# The variables a process needs to start at all; everything else comes from the function's
# configuration, as in Lambda, where the function sees only its own environment.
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "SYSTEMROOT")

PlatformEvent = dict[str, Any]


class ConcurrencyError(ValueError):
    """Concurrency settings Lambda would refuse (e.g. more provisioned than the limit)."""


class FunctionError(Exception):
    """The function failed (unhandled error, crash, timeout): API Gateway answers 502."""


@dataclass(frozen=True)
class Concurrency:
    """How many environments may run at once and how many are initialized ahead of traffic."""

    limit: int
    provisioned: int = 0
    source: str = ""  # where the values come from, for people

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ConcurrencyError(f"the concurrency limit must be at least 1, got {self.limit}")
        if not 0 <= self.provisioned <= self.limit:
            raise ConcurrencyError(
                f"provisioned concurrency {self.provisioned} must be between 0 and the "
                f"concurrency limit {self.limit}"
            )

    def describe(self) -> str:
        return f"at most {self.limit} at once, {self.provisioned} provisioned ({self.source})"


def concurrency_from_template(template: dict[str, Any], function_logical_id: str) -> Concurrency:
    """The stage's reserved concurrency (function) and provisioned concurrency (alias)."""
    resources = template.get("Resources", {})
    function = resources.get(function_logical_id, {}).get("Properties", {})
    reserved = function.get("ReservedConcurrentExecutions")
    provisioned = 0
    for resource in resources.values():
        if resource.get("Type") != "AWS::Lambda::Alias":
            continue
        props = resource.get("Properties", {})
        if _references(props.get("FunctionName"), function_logical_id):
            config = props.get("ProvisionedConcurrencyConfig") or {}
            provisioned = int(config.get("ProvisionedConcurrentExecutions", 0))
    if isinstance(reserved, int):
        source = f"the stage's reserved concurrency {reserved}"
        limit = reserved
    else:
        source = (
            f"no reserved concurrency in the stage: local default {DEFAULT_UNRESERVED_LIMIT}, "
            "a new account's quota"
        )
        limit = max(DEFAULT_UNRESERVED_LIMIT, provisioned)
    if provisioned:
        source += f", provisioned {provisioned} on the alias"
    return Concurrency(limit=limit, provisioned=provisioned, source=source)


def _references(value: Any, logical_id: str) -> bool:
    if isinstance(value, dict):
        if value.get("Ref") == logical_id:
            return True
        return any(_references(v, logical_id) for v in value.values())
    if isinstance(value, list):
        return any(_references(v, logical_id) for v in value)
    return value == logical_id


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def stdout_platform_log(event: PlatformEvent) -> None:
    """Lambda writes platform records into the function's log stream; so does local mode."""
    print(json.dumps(event), flush=True)


@dataclass
class Environment:
    """One execution environment: a /tmp that lasts, and a runtime process that may be reset."""

    id: str
    initialization_type: str  # "provisioned-concurrency" or "on-demand"
    tmp_dir: Path
    process: subprocess.Popen[bytes] | None = None
    sock: socket.socket | None = None
    busy: bool = False
    invocations: int = 0  # since the last INIT
    inits: int = 0
    last_init_ms: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def ready(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class PoolStats:
    invocations: int = 0
    cold_starts: int = 0  # INITs run for a request (not ahead of traffic)
    inits: int = 0
    throttles: int = 0
    resets: int = 0  # runtimes that crashed, timed out or were killed
    function_errors: int = 0
    peak_concurrency: int = 0


class EnvironmentPool:
    """Invokes the handler the way Lambda does; see the module docstring."""

    def __init__(
        self,
        *,
        environment: dict[str, str],
        function_name: str,
        memory_mb: int,
        timeout_s: int,
        concurrency: Concurrency,
        tmp_root: Path,
        handler: str = "handler.handler",
        code_dir: Path = LAMBDA_SRC,
        on_platform_event: Callable[[PlatformEvent], None] | None = stdout_platform_log,
        fault_injection: bool = False,
        python: str = sys.executable,
    ) -> None:
        self.environment = environment
        self.function_name = function_name
        self.memory_mb = memory_mb
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.tmp_root = tmp_root
        self.handler = handler
        self.code_dir = code_dir
        self.on_platform_event = on_platform_event
        self.python = python
        self.fault_file: Path | None = None
        if fault_injection:
            self.fault_file = tmp_root / "faults.json"
            self.fault_file.write_text("{}")
        self.stats = PoolStats()
        self._environments: list[Environment] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Initialize the provisioned environments, in parallel, as Lambda does on deploy."""
        with self._lock:
            fresh = [
                self._new_environment("provisioned-concurrency")
                for _ in range(self.concurrency.provisioned)
            ]
        threads = [
            threading.Thread(target=self._init_quietly, args=(env,), daemon=True) for env in fresh
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _init_quietly(self, env: Environment) -> None:
        # A provisioned environment that fails INIT is initialized again by its first request.
        with contextlib.suppress(FunctionError), env.lock:
            self._init(env, for_request=False)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            environments = list(self._environments)
        for env in environments:
            self._stop(env, graceful=True)

    def __enter__(self) -> EnvironmentPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- invoke -----------------------------------------------------------------------------

    def invoke(self, event: dict[str, Any], request_id: str) -> Any:
        """Run one request in a free environment; raise IntegrationFailure when throttled and
        FunctionError when the function fails (API Gateway: 500 and 502)."""
        env = self._acquire()
        if env is None:
            raise IntegrationFailure(
                INVOKE_REJECTED,
                f"Rate Exceeded: concurrency limit {self.concurrency.limit} reached "
                "(TooManyRequestsException, ReservedFunctionConcurrentInvocationLimitExceeded)",
            )
        try:
            with env.lock:
                init_ms = None
                if not env.ready:
                    init_ms = self._init(env, for_request=True)
                return self._run(env, event, request_id, init_ms)
        finally:
            with self._lock:
                env.busy = False

    def _acquire(self) -> Environment | None:
        with self._lock:
            if self._closed:
                raise FunctionError("the function is shutting down")
            idle = [e for e in self._environments if not e.busy]
            # Warm before reset, provisioned before on-demand.
            idle.sort(key=lambda e: (not e.ready, e.initialization_type == "on-demand"))
            env = idle[0] if idle else None
            if env is None:
                if len(self._environments) >= self.concurrency.limit:
                    self.stats.throttles += 1
                    return None
                env = self._new_environment("on-demand")
            env.busy = True
            busy = sum(e.busy for e in self._environments)
            self.stats.peak_concurrency = max(self.stats.peak_concurrency, busy)
            return env

    def _new_environment(self, initialization_type: str) -> Environment:
        env_id = f"env-{next(self._ids)}"
        tmp_dir = self.tmp_root / env_id / "tmp"
        tmp_dir.mkdir(parents=True)
        env = Environment(id=env_id, initialization_type=initialization_type, tmp_dir=tmp_dir)
        self._environments.append(env)
        return env

    def _process_environment(self, env: Environment) -> dict[str, str]:
        inherited = {k: os.environ[k] for k in _INHERITED if k in os.environ}
        variables = {
            **inherited,
            **self.environment,
            "AWS_LAMBDA_INITIALIZATION_TYPE": env.initialization_type,
            "AWS_LAMBDA_LOG_STREAM_NAME": f"local/[$LATEST]{env.id}",
            "MODEL_CACHE_DIR": str(env.tmp_dir / "model-cache"),
            "TMPDIR": str(env.tmp_dir),
        }
        if self.fault_file is not None:
            variables[runtime_interface.FAULT_FILE_VARIABLE] = str(self.fault_file)
        return variables

    def _init(self, env: Environment, *, for_request: bool) -> float:
        """Start the runtime and wait for INIT; the caller holds env.lock. Returns INIT ms."""
        self._emit(env, "platform.initStart", {"initializationType": env.initialization_type})
        parent, child = socket.socketpair()
        started = time.perf_counter()
        try:
            process = subprocess.Popen(  # noqa: S603 - our interpreter and our script
                [
                    self.python,
                    str(Path(runtime_interface.__file__)),
                    str(child.fileno()),
                    self.handler,
                    str(self.code_dir),
                ],
                env=self._process_environment(env),
                cwd=str(self.code_dir),
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            child.close()
        env.process, env.sock = process, parent
        # Lambda gives on-demand INIT its own limit; here the function timeout bounds it too.
        parent.settimeout(max(self.timeout_s, 30))
        try:
            message = runtime_interface.receive(parent)
        except OSError:
            message = None
        init_ms = (time.perf_counter() - started) * 1000
        env.inits += 1
        with self._lock:
            self.stats.inits += 1
            if for_request:
                self.stats.cold_starts += 1
        status = "success" if message and message.get("ok") else "failure"
        self._emit(
            env,
            "platform.initReport",
            {
                "initializationType": env.initialization_type,
                "phase": "init",
                "status": status,
                "metrics": {"durationMs": round(init_ms, 3)},
            },
        )
        if status != "success":
            self._stop(env, graceful=False)
            reason = (message or {}).get("errorMessage") or "the runtime exited during INIT"
            raise FunctionError(f"INIT failed in {env.id}: {reason}")
        env.invocations = 0
        env.last_init_ms = init_ms
        return init_ms

    def _run(
        self, env: Environment, event: dict[str, Any], request_id: str, init_ms: float | None
    ) -> Any:
        assert env.sock is not None
        deadline = time.time() + self.timeout_s
        self._emit(env, "platform.start", {"requestId": request_id})
        started = time.perf_counter()
        reply: dict[str, Any] | None = None
        status = "success"
        try:
            runtime_interface.send(
                env.sock,
                {
                    "requestId": request_id,
                    "deadlineEpochMs": int(deadline * 1000),
                    "event": event,
                },
            )
            env.sock.settimeout(self.timeout_s)
            reply = runtime_interface.receive(env.sock)
        except TimeoutError:
            status = "timeout"
        except OSError:
            reply = None
        duration_ms = (time.perf_counter() - started) * 1000
        with self._lock:
            self.stats.invocations += 1
        env.invocations += 1
        if reply is None:
            status = "timeout" if status == "timeout" else "error"
        elif not reply.get("ok"):
            status = "failure"
        metrics: dict[str, Any] = {
            "durationMs": round(duration_ms, 3),
            "billedDurationMs": math.ceil(duration_ms),
            "memorySizeMB": self.memory_mb,
        }
        if reply is not None:
            metrics["maxMemoryUsedMB"] = reply.get("maxMemoryUsedMB")
            metrics["rssMB"] = reply.get("rssMB")  # local addition: RSS now, for soak tests
        if init_ms is not None:
            metrics["initDurationMs"] = round(init_ms, 3)
        record: dict[str, Any] = {"requestId": request_id, "status": status, "metrics": metrics}
        if reply is None:
            # The runtime died or overran the timeout: the environment is reset (/tmp stays).
            self._stop(env, graceful=False)
            with self._lock:
                self.stats.resets += 1
                self.stats.function_errors += 1
            record["errorType"] = "Sandbox.Timedout" if status == "timeout" else "Runtime.ExitError"
            self._emit(env, "platform.report", record)
            if status == "timeout":
                raise FunctionError(f"Task timed out after {self.timeout_s:.2f} seconds")
            raise FunctionError(f"Runtime exited in {env.id} (the environment was reset)")
        if not reply.get("ok"):
            with self._lock:
                self.stats.function_errors += 1
            record["errorType"] = reply.get("errorType")
            self._emit(env, "platform.report", record)
            raise FunctionError(f"{reply.get('errorType')}: {reply.get('errorMessage')}")
        self._emit(env, "platform.report", record)
        return json.loads(reply["payload"])

    # -- control, for tests and fault injection ---------------------------------------------

    def environments(self) -> list[Environment]:
        with self._lock:
            return list(self._environments)

    def kill(self, env_id: str, sig: int = signal.SIGKILL, *, wait: bool = False) -> bool:
        """Kill an environment's runtime process (as an out-of-memory kill would); the request it
        runs fails and the environment is reset. With `wait`, return once the process is gone
        (an idle environment then runs INIT for its next request). False if it had none."""
        env = next((e for e in self.environments() if e.id == env_id), None)
        process = env.process if env is not None else None
        if process is None or process.poll() is not None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)
        if wait:
            process.wait(timeout=SHUTDOWN_GRACE_S * 5)
        return True

    def retire_idle(self) -> int:
        """Shut down and forget every idle environment, as Lambda reaps idle ones; the next
        request starts a new environment with an empty /tmp. Returns how many were retired."""
        with self._lock:
            idle = [e for e in self._environments if not e.busy]
            self._environments = [e for e in self._environments if e.busy]
        for env in idle:
            self._stop(env, graceful=True)
        return len(idle)

    def set_faults(self, **faults: Any) -> None:
        """Switch injected faults on or off in every environment (needs fault_injection=True)."""
        if self.fault_file is None:
            raise RuntimeError("this pool was created without fault_injection=True")
        tmp = self.fault_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(faults))
        tmp.replace(self.fault_file)

    @property
    def init_ms(self) -> float | None:
        """INIT duration of the most recently initialized environment."""
        inits = [e for e in self.environments() if e.last_init_ms is not None]
        return inits[-1].last_init_ms if inits else None

    # -- internals --------------------------------------------------------------------------

    def _stop(self, env: Environment, *, graceful: bool) -> None:
        sock, process = env.sock, env.process
        env.sock = env.process = None
        if sock is not None:
            sock.close()  # the runtime reads EOF and exits: Lambda's Shutdown
        if process is None:
            return
        if not graceful:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        try:
            process.wait(timeout=SHUTDOWN_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _emit(self, env: Environment, kind: str, record: dict[str, Any]) -> None:
        if self.on_platform_event is None:
            return
        self.on_platform_event(
            {"time": _now_iso(), "type": kind, "environment": env.id, "record": record}
        )
