"""`python -m local_mode.demo` end to end, and its reuse of an existing export."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys

from serve_helpers import REPO_ROOT, port_is_closed

from local_mode.demo import reusable_manifest


def test_demo_runs_end_to_end_and_leaves_nothing_running(fp32_model_dir, stack_template, tmp_path):
    function_log = tmp_path / "function.log"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "local_mode.demo",
            "--model-dir",
            str(fp32_model_dir),
            "--template",
            str(stack_template),
            "--function-log",
            str(function_log),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "Traceback" not in done.stderr
    for heading in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert heading in out
    # The session model is untrained, and the demo must say so plainly.
    assert "UNTRAINED" in out
    assert "Reusing" in out
    for photo in ("chelsea.png", "astronaut.png"):
        assert photo in out
    assert re.search(r"cold start, first request end to end\s+\d+ ms", out)
    assert re.search(r"warm, p50 of \d+ requests end to end\s+[\d.]+ ms", out)
    assert "top-1 identical to the single requests" in out
    assert '403 {"error":{"code":"invalid_api_key"' in out
    assert re.search(r'-> 400 \{"error":\{"code":"[a-z_]+"', out)
    assert '403 {"error":{"code":"route_not_found"' in out
    # The function's logs went to the log file (CloudWatch's stand-in), not the terminal.
    assert '"Model ready"' in function_log.read_text()
    assert '"Model ready"' not in out
    # Every server it started is gone.
    urls = re.findall(r"(http://127\.0\.0\.1:\d+)", out)
    assert len(set(urls)) >= 2
    assert all(port_is_closed(url + "/") for url in set(urls))


def test_existing_export_is_reused_only_when_it_matches_its_manifest(fp32_model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(fp32_model_dir, copy)
    manifest = reusable_manifest(copy)
    assert manifest is not None
    original = json.loads((fp32_model_dir / "manifest.json").read_text())
    assert manifest["sha256"] == original["sha256"]

    with (copy / "model.onnx").open("r+b") as handle:  # one flipped byte
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    assert reusable_manifest(copy) is None
    assert reusable_manifest(tmp_path / "missing") is None


def test_demo_with_a_missing_template_fails_with_one_clear_line(fp32_model_dir, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "local_mode.demo",
            "--model-dir",
            str(fp32_model_dir),
            "--template",
            str(tmp_path / "absent.template.json"),
            "--function-log",
            str(tmp_path / "f.log"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("error: ")
    assert "absent.template.json not found" in last


def test_ctrl_c_during_the_demo_stops_every_server(fp32_model_dir, stack_template, tmp_path):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "local_mode.demo",
            "--model-dir",
            str(fp32_model_dir),
            "--template",
            str(stack_template),
            "--function-log",
            str(tmp_path / "function.log"),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    seen: list[str] = []
    for line in process.stdout:  # interrupt while it is classifying
        seen.append(line)
        if line.startswith("[3/5]"):
            process.send_signal(signal.SIGINT)
            break
    rest, _ = process.communicate(timeout=60)
    out = "".join(seen) + rest
    assert process.returncode == 130, out
    assert "Interrupted: everything was stopped." in out
    assert "Traceback" not in out
    urls = set(re.findall(r"(http://127\.0\.0\.1:\d+)", out))
    assert len(urls) >= 2
    assert all(port_is_closed(url + "/") for url in urls)
