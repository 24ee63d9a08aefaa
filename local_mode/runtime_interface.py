"""The runtime process of one local Lambda execution environment (local mode's stand-in for the
Lambda runtime interface client). Started by environments.EnvironmentPool as

    python runtime_interface.py <socket fd> <module.function> <code dir>

with the function's environment variables only. INIT is importing the handler module, as in
Lambda; then it answers one invocation at a time over the socket (4-byte length + JSON), with
the function's own output going to the inherited stdout/stderr, as Lambda sends it to CloudWatch.

Standard library only, and nothing from this repository is imported, so the handler runs in an
interpreter that holds exactly what the Lambda image would hold.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import socket
import struct
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

# When set, a JSON file of faults to inject, re-read at each use so a test can switch them on
# and off while the environment runs. Only "enospc" exists: writes of new files under the model
# cache directory go to /dev/full, so they fail with ENOSPC as on a full /tmp.
FAULT_FILE_VARIABLE = "LOCAL_LAMBDA_FAULT_FILE"


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode()
    sock.sendall(struct.pack("!I", len(data)) + data)


def receive(sock: socket.socket) -> dict[str, Any] | None:
    """The next message, or None when the other side has gone."""
    header = _read_exact(sock, 4)
    if header is None:
        return None
    body = _read_exact(sock, struct.unpack("!I", header)[0])
    return None if body is None else json.loads(body)


def _read_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks, remaining = [], size
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class Context:
    """The attributes of the Lambda Python runtime's context object."""

    def __init__(self, request_id: str, deadline_epoch_ms: int) -> None:
        env = os.environ
        self.aws_request_id = request_id
        self.function_name = env.get("AWS_LAMBDA_FUNCTION_NAME", "local")
        self.function_version = env.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = int(env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
        self.invoked_function_arn = (
            f"arn:aws:lambda:{env.get('AWS_REGION', 'us-east-1')}:123456789012:function:"
            f"{self.function_name}:live"
        )
        self.log_group_name = env.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = env.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self._deadline_epoch_ms = deadline_epoch_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_epoch_ms - int(time.time() * 1000))


def memory_mb() -> tuple[float, float]:
    """(peak RSS, current RSS) of this process in MB: Lambda's "Max Memory Used" and now."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        current = pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        current = peak
    return round(peak, 1), round(current, 1)


def install_fault_hooks() -> None:
    fault_file = os.environ.get(FAULT_FILE_VARIABLE)
    cache_dir = os.environ.get("MODEL_CACHE_DIR")
    if not fault_file or not cache_dir:
        return
    real_mkstemp = tempfile.mkstemp
    cache = os.path.realpath(cache_dir)

    def faulty_mkstemp(*args: Any, **kwargs: Any) -> Any:
        fd, name = real_mkstemp(*args, **kwargs)
        try:
            faults = json.loads(Path(fault_file).read_text() or "{}")
        except (OSError, ValueError):
            faults = {}
        if faults.get("enospc") and os.path.realpath(name).startswith(cache + os.sep):
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)  # every write fails with ENOSPC
        return fd, name

    tempfile.mkstemp = faulty_mkstemp


def main(argv: list[str]) -> int:
    fd, handler, code_dir = int(argv[1]), argv[2], argv[3]
    sock = socket.socket(fileno=fd)
    sys.path.insert(0, code_dir)
    os.environ.setdefault("AWS_LAMBDA_LOG_STREAM_NAME", "local/[$LATEST]" + uuid.uuid4().hex)
    install_fault_hooks()
    module_name, _, attr = handler.rpartition(".")
    started = time.perf_counter()
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # Runtime.ImportModuleError / an exception in INIT code
        traceback.print_exc()
        sys.stderr.flush()
        send(
            sock,
            {
                "type": "init",
                "ok": False,
                "durationMs": (time.perf_counter() - started) * 1000,
                "errorType": f"Runtime.{type(exc).__name__}",
                "errorMessage": str(exc),
            },
        )
        return 1
    send(sock, {"type": "init", "ok": True, "durationMs": (time.perf_counter() - started) * 1000})
    while True:
        message = receive(sock)
        if message is None:
            return 0  # the platform closed the environment
        context = Context(message["requestId"], int(message["deadlineEpochMs"]))
        started = time.perf_counter()
        reply: dict[str, Any] = {"type": "result"}
        try:
            result = function(message["event"], context)
        except Exception as exc:  # the runtime reports it as a function error and goes on
            traceback.print_exc()
            reply.update(ok=False, errorType=type(exc).__name__, errorMessage=str(exc))
        else:
            try:
                reply.update(ok=True, payload=json.dumps(result))
            except (TypeError, ValueError) as exc:
                reply.update(ok=False, errorType="Runtime.MarshalError", errorMessage=str(exc))
        sys.stdout.flush()
        sys.stderr.flush()
        peak, current = memory_mb()
        reply.update(
            durationMs=(time.perf_counter() - started) * 1000, maxMemoryUsedMB=peak, rssMB=current
        )
        send(sock, reply)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
