"""Start and stop `python -m local_mode.serve` for tests (shared by conftest and tests)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def port_is_closed(url: str) -> bool:
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) != 0


@dataclass
class ServedEndpoint:
    endpoint: str
    api_key: str
    s3_endpoint: str
    process: subprocess.Popen[str]
    log: Path
    outputs_file: Path  # what serve writes like `cdk deploy --outputs-file`


def start_serve(
    model_dir: Path, template: Path, workdir: Path, *extra: str
) -> tuple[subprocess.Popen[str], Path, Path]:
    ready = workdir / "ready.json"
    out = workdir / "serve.out"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "local_mode.serve",
            "--model-dir",
            str(model_dir),
            "--template",
            str(template),
            "--port",
            "0",
            "--ready-file",
            str(ready),
            "--function-log",
            str(workdir / "function.log"),
            # Never the repository's cdk-outputs-local.json: tests run beside `make serve`.
            "--outputs-file",
            str(workdir / "cdk-outputs-local.json"),
            *extra,
        ],
        cwd=REPO_ROOT,
        stdout=out.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        if process.poll() is not None:
            pytest.fail(f"local_mode.serve exited with {process.returncode}:\n{out.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"local_mode.serve not ready after 60 s:\n{out.read_text()}")
        time.sleep(0.1)
    return process, ready, out


def stop_serve(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
