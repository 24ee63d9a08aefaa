"""The per-stage attribution's reference path: the request path before issue #12, from git."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench.stages import REFERENCE_REV, STAGES, reference_src, summarize

ROOT = Path(__file__).resolve().parents[2]


def _has_revision(rev: str) -> bool:
    probe = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{rev}^{{commit}}"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _has_revision(REFERENCE_REV), reason="shallow clone without the revision")
def test_reference_is_the_path_before_issue_12(tmp_path: Path) -> None:
    src = reference_src(ROOT, tmp_path)
    assert src is not None
    old = (src / "preprocess.py").read_text()
    # The old path: whole-image resize then crop, 2x oversampled drafts, no crop-only resample.
    assert "def resized_crop" not in old
    assert "DRAFT_OVERSAMPLING = 2" in old
    assert (src / "handler.py").is_file()
    assert "def resized_crop" in (ROOT / "lambda_src" / "preprocess.py").read_text()
    assert reference_src(ROOT, tmp_path) == src  # extracted once, then reused


def test_unknown_revision_means_no_reference_not_an_error(tmp_path: Path) -> None:
    assert reference_src(ROOT, tmp_path, rev="0" * 40) is None


def test_summary_is_per_stage_medians_and_their_sum() -> None:
    samples = {name: [1.0, 2.0, 30.0] for name in STAGES}
    result = summarize(samples)
    assert result["p50_ms"] == {name: 2.0 for name in STAGES}
    assert result["non_model_sum_ms"] == pytest.approx(2.0 * len(STAGES))
    assert result["n"] == 3
