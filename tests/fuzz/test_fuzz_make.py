"""`make fuzz` sets itself up from the repository's files and fails clearly without atheris."""

from __future__ import annotations

import subprocess
import sys

from fuzz.properties import ROOT


def test_make_fuzz_installs_atheris_from_the_repo_then_runs_with_the_time_budget():
    # -B: every target out of date, as on a fresh clone; -n: print the recipes, run nothing.
    completed = subprocess.run(
        ["make", "-n", "-B", "fuzz", "FUZZ_SECONDS=7"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = completed.stdout.splitlines()
    install = lines.index(".venv/bin/python -m pip install --quiet -r fuzz/requirements.txt")
    dev = lines.index(".venv/bin/python -m pip install --quiet -r requirements-dev.txt")
    assert dev < install < lines.index(".venv/bin/python -m fuzz --seconds 7")
    pins = (ROOT / "fuzz" / "requirements.txt").read_text().split()
    assert "atheris==3.0.0" in pins


def test_without_atheris_the_runner_says_how_to_get_it_in_one_line():
    hide_atheris = (
        "import sys; sys.modules['atheris'] = None\n"
        "from fuzz.__main__ import main\n"
        "sys.exit(main(['--seconds', '1']))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", hide_atheris], cwd=ROOT, capture_output=True, text=True
    )
    assert completed.returncode == 2
    assert completed.stdout.splitlines() == [
        "atheris is not installed: `make fuzz` installs fuzz/requirements.txt (Linux x86_64)"
    ]
    assert "Traceback" not in completed.stderr
