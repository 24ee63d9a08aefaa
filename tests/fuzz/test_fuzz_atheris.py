"""`make fuzz` end to end: the real atheris targets, bounded by execution count.

atheris is installed by `make fuzz` (fuzz/requirements.txt, Linux x86_64 wheels only), not by
`make install`; without it these tests are reported as skipped with that reason, and
test_fuzz_properties.py still drives the same check functions with hypothesis.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fuzz import properties, seeds
from fuzz.__main__ import main, parse_log, table

pytest.importorskip("atheris", reason="atheris comes with `make fuzz` (fuzz/requirements.txt)")

pytestmark = pytest.mark.slow
ROOT = properties.ROOT
RUNS = 2000


def test_each_target_runs_thousands_of_inputs_and_finds_nothing(tmp_path, capsys):
    # A child inherits its parent's peak RSS (getrusage), and libFuzzer's -rss_limit_mb checks
    # that: raise this process's peak past the limit a fresh target would get, as a test
    # session that exported models does, so a limit not set above it shows as a false "oom".
    high = np.ones(5 << 28, dtype=np.uint8)  # 1.25 GiB, every page touched
    assert high.sum() == 5 << 28
    del high
    code = main(["--seconds", "120", "--runs", str(RUNS), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [t["target"] for t in summary["targets"]] == ["image", "event"]
    for result in summary["targets"]:
        target = result["target"]
        assert re.search(rf"^{target}\s+{result['executions']:,}\s", out, re.M), out
        assert result["executions"] >= RUNS, target
        assert result["coverage"] > 100, target  # instrumented branches (Pillow, the function)
        assert result["corpus"] >= 5, target
        assert (result["finding"], result["error"]) == (None, None), target
        assert not list((tmp_path / target).glob("crash-*")), target
    assert summary["targets"][0]["costliest_cpu_s"] > 0  # decoding is measured, not skipped
    # Inputs that found new coverage are kept for the next run.
    assert len(list((tmp_path / "corpus" / "image").iterdir())) > 0


def test_a_planted_bug_is_saved_as_a_crash_and_reported(tmp_path):
    """The image target with Pillow's conversion of grayscale images broken (a seed is one)."""
    planted = tmp_path / "planted_target.py"
    planted.write_text(
        textwrap.dedent(
            """
            import sys
            from fuzz import target  # instruments and imports Pillow and the function
            from PIL import Image

            real_convert = Image.Image.convert

            def convert(self, *args, **kwargs):
                if self.mode == "L":
                    raise RuntimeError("planted")
                return real_convert(self, *args, **kwargs)

            Image.Image.convert = convert
            target.main([sys.argv[0], "image", *sys.argv[1:]])
            """
        )
    )
    seed_dir, artifacts = tmp_path / "seeds", tmp_path / "out"
    seeds.write("image", seed_dir)
    artifacts.mkdir()
    completed = subprocess.run(
        [
            sys.executable,
            str(planted),
            f"-runs={RUNS}",
            f"-artifact_prefix={artifacts}/",
            "-print_final_stats=1",
            str(seed_dir),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    log = completed.stdout + completed.stderr
    assert completed.returncode != 0, log[-2000:]
    result = parse_log("image", log, completed.returncode, seconds=1.0)
    assert result.finding == "crash: Finding: preprocess raised RuntimeError: planted", log[-2000:]
    assert result.artifact is not None
    crash = Path(result.artifact)
    assert crash.parent == artifacts
    assert f"replay: python -m fuzz.target image {crash}" in table([result])
    # The saved input is the one that fails: a grayscale image the unbroken function accepts.
    assert properties.check_image(crash.read_bytes()) == "tensor"
