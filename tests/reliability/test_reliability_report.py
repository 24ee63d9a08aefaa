"""The figures in docs/reliability.md come from a run's JSON, by the report script."""

from __future__ import annotations

import json

from reliability.report import BEGIN, END, checked_answers, markdown, write_docs


def results() -> dict:
    summary = {
        "requests": 10,
        "valid": 7,
        "invalid": 3,
        "throughput_rps": 5.0,
        "latency_ms": {"p50": 10.0, "p95": 20.0, "p99": 30.0, "max": 31.0},
        "right_answers": 7,
        "wrong_answers": 0,
        "five_xx": {},
        "five_xx_total": 0,
        "dropped": 0,
        "rejected_as_expected": 3,
        "error_rate": 0.0,
    }
    fault = {
        "name": "S3 5xx at INIT",
        "injected": "503s",
        "client_saw": {"503": 2},
        "wrong_answers": 0,
        "answers_checked": 1,
        "recovered": True,
        "recovery_s": 1.5,
        "requests_to_recover": 1,
        "cold_starts": 1,
        "s3_requests": 7,
        "notes": "",
    }
    return {
        "created": "2026-01-01T00:00:00+00:00",
        "machine": {"cpus": 2, "cpu": "test CPU", "python": "3.11"},
        "target": {"kind": "local", "concurrency": 4, "provisioned": 2},
        "profiles": {"steady": {"summary": summary, "platform": {"cold_starts": 0}}},
        "faults": [fault],
        "soak": None,
        "fuzz": None,
    }


def test_tables_carry_the_json_values():
    text = markdown(results(), "run.json")
    assert checked_answers(results()) == (8, 0)
    assert "| steady | 10 (7 / 3) | 5.0 | 10.0 | 20.0 | 30.0 | 0 | none | 0 | 3 of 3 |" in text
    assert "| S3 5xx at INIT | 503s | 2x 503 | 1.5 s | 1 | 1 | 7 | 0 of 1 |" in text
    assert "| faults survived (recovered by itself, no wrong answer) | 1 of 1 |" in text
    assert "| fuzz cases run, findings | not in this run (`make fuzz`) |" in text


def test_fuzz_row_shows_cases_per_target_and_findings():
    run = results()
    run["fuzz"] = {
        "cases": 1500,
        "findings": 1,
        "source": "python -m fuzz --seconds 60",
        "targets": [
            {"target": "image", "cases": 1000, "findings": 1},
            {"target": "event", "cases": 500, "findings": 0},
        ],
        "error": None,
    }
    text = markdown(run, "run.json")
    assert (
        "| fuzz cases run, findings | 1,500 (`python -m fuzz --seconds 60`: image 1,000, "
        "event 500); **1 finding** |"
    ) in text
    run["fuzz"] = {**run["fuzz"], "cases": 0, "findings": 0, "targets": [], "error": "no atheris"}
    assert "| fuzz cases run, findings | did not run: no atheris |" in markdown(run, "run.json")


def test_write_docs_replaces_only_the_generated_part(tmp_path):
    doc = tmp_path / "reliability.md"
    doc.write_text(f"# Title\n\nprose\n\n{BEGIN}\nold table\n{END}\n\nmore prose\n")
    path = tmp_path / "run.json"
    path.write_text(json.dumps(results()))
    write_docs(results(), path, doc)
    text = doc.read_text()
    assert text.startswith("# Title\n\nprose\n\n")
    assert text.endswith("\n\nmore prose\n")
    assert "old table" not in text
    assert "| wrong answers | **0** |" in text
