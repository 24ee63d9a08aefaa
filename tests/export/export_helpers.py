"""Shared helpers for the export tests (imported by module name; tests/ has no packages)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def offline_env(torch_home: Path, **extra: str) -> dict[str, str]:
    """Environment in which the exporter cannot reach the network, even on a connected machine.

    An empty TORCH_HOME means no cached weights; the proxy variables point at a closed local
    port, so any download attempt fails at once instead of reaching download.pytorch.org.
    """
    env = dict(os.environ)
    dead = f"http://127.0.0.1:{closed_port()}"
    env.update(
        {
            "TORCH_HOME": str(torch_home),
            "HTTPS_PROXY": dead,
            "https_proxy": dead,
            "HTTP_PROXY": dead,
            "http_proxy": dead,
            # Local servers (moto, a closed port) are reached directly.
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "PYTHONWARNINGS": "ignore",
        }
    )
    env.update(extra)
    return env


def run_cli(
    args: list[str], env: dict[str, str], timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "model_export", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_main(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> subprocess.CompletedProcess[str]:
    """The CLI entry point in-process (no second torch import), shaped like run_cli's result."""
    from model_export.__main__ import main

    code = main(args)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The CLI's final stderr line, after asserting the failure contract (exit 1, no traceback)."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr
    return last
