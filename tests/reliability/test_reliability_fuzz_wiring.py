"""`make loadtest` runs the fuzz targets (`python -m fuzz`) and records their figures.

The fuzzer itself is stubbed at the process boundary: these tests check the command line, how
summary.json becomes the results' "fuzz" entry, and the flag's validation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from reliability import loadtest


def _summary(out: Path) -> None:
    targets = [
        {"target": "image", "executions": 1200, "seconds": 3.04, "coverage": 900,
         "costliest_cpu_s": 0.2, "costliest_memory_mib": 40.0,
         "finding": "crash: ValueError: boom", "artifact": "x", "error": None},
        {"target": "event", "executions": 3400, "seconds": 3.01, "coverage": 700,
         "costliest_cpu_s": 0.01, "costliest_memory_mib": 1.0,
         "finding": None, "artifact": None, "error": None},
    ]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"seconds_per_target": 3, "targets": targets}))


def test_run_fuzz_runs_python_m_fuzz_and_records_cases_and_findings(tmp_path, monkeypatch):
    calls: list[list[str]] = []

    def fake_run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        _summary(tmp_path)
        return subprocess.CompletedProcess(command, 1, "", "")  # 1: a finding, not a failure

    monkeypatch.setattr(loadtest.subprocess, "run", fake_run)
    fuzz = loadtest.run_fuzz(3, tmp_path)
    assert calls == [[sys.executable, "-m", "fuzz", "--seconds", "3", "--out", str(tmp_path)]]
    assert fuzz["cases"] == 4600
    assert fuzz["findings"] == 1
    assert fuzz["source"] == "python -m fuzz --seconds 3"
    assert [(t["target"], t["cases"], t["findings"]) for t in fuzz["targets"]] == [
        ("image", 1200, 1),
        ("event", 3400, 0),
    ]
    assert fuzz["error"] is None


def test_run_fuzz_without_a_summary_records_why(tmp_path, monkeypatch):
    (tmp_path / "summary.json").write_text("{}")  # a previous run's: must not be read

    def fake_run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 2, "atheris is not installed\n", "")

    monkeypatch.setattr(loadtest.subprocess, "run", fake_run)
    fuzz = loadtest.run_fuzz(3, tmp_path)
    assert fuzz == {
        "cases": 0,
        "findings": 0,
        "source": "python -m fuzz --seconds 3",
        "targets": [],
        "error": "atheris is not installed",
    }


def test_fuzz_seconds_defaults_to_a_bounded_run_and_zero_skips():
    assert loadtest._parser().parse_args([]).fuzz_seconds == 60
    assert loadtest._parser().parse_args(["--fuzz-seconds", "0"]).fuzz_seconds == 0


def test_negative_fuzz_seconds_is_one_line_and_exit_1(capsys, monkeypatch):
    def no_run(args: object) -> dict[str, Any]:
        raise AssertionError("nothing may start on bad input")

    monkeypatch.setattr(loadtest, "run", no_run)
    assert loadtest.main(["--fuzz-seconds", "-1"]) == 1
    out = capsys.readouterr().out
    assert out == "error: need --fuzz-seconds >= 0 (0 = no fuzzing)\n"


@pytest.mark.parametrize("deployed", [False, True])
def test_the_run_fuzzes_locally_only(deployed, tmp_path, monkeypatch):
    """run() calls run_fuzz for a local run with --fuzz-seconds, never for a deployed stage."""
    fuzzed: list[int] = []
    monkeypatch.setattr(loadtest, "run_fuzz", lambda s, out: fuzzed.append(s) or {"cases": 1})
    monkeypatch.setattr(loadtest, "photos_for_load", lambda: [])
    fake_ref = SimpleNamespace(model_sha256="0" * 64, answers={"a.png": SimpleNamespace(margin=1)})
    monkeypatch.setattr(loadtest, "load_reference", lambda *a, **k: fake_ref)
    (tmp_path / "manifest.json").write_text("{}")
    argv = ["--model-dir", str(tmp_path), "--profiles", "", "--no-faults", "--soak-requests",
            "0", "--fuzz-seconds", "2"]  # fmt: skip
    if deployed:
        argv += ["--endpoint", "https://example.invalid/prod", "--api-key", "k"]
    results = loadtest.run(loadtest._parser().parse_args(argv))
    assert fuzzed == ([] if deployed else [2])
    assert results["fuzz"] == (None if deployed else {"cases": 1})
