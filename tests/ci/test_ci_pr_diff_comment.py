"""scripts/pr_diff_comment.py: the body of the pull request's cdk diff comment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scripts.pr_diff_comment import MARKER, CommentError, StageDiff, clean, render

ROOT = Path(__file__).resolve().parents[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# The shape of `make diff` output with --no-color: make's echo, then CDK's report.
CHANGED = """npx cdk diff -c stage=dev -c model_dir=build/model --method=template --fail-on=never
Stack ResnetServingDev
IAM Statement Changes
+---+-----------------------+--------+----------------+
|   | Resource              | Effect | Action         |
+---+-----------------------+--------+----------------+
| + | ${ModelBucket.Arn}/*  | Allow  | s3:GetObject   |
+---+-----------------------+--------+----------------+

Resources
[~] AWS::Lambda::Function Predict/Function PredictFunction
 └─ [~] Environment
[+] AWS::Lambda::Version Predict/Function/CurrentVersion PredictFunctionCurrentVersion1234

\u2728  Number of stacks with differences: 1
"""
UNCHANGED = """npx cdk diff -c stage=prod
Stack ResnetServingProd
There were no differences

\u2728  Number of stacks with differences: 0
"""


def test_comment_starts_with_the_marker_the_workflow_searches_for() -> None:
    body = render([StageDiff("dev", clean(CHANGED))], commit=COMMIT)
    assert body.startswith(MARKER + "\n")
    pr_yml = (ROOT / ".github" / "workflows" / "pr.yml").read_text(encoding="utf-8")
    assert f'MARKER: "{MARKER}"' in pr_yml


def test_each_stage_gets_a_section_with_its_resource_change_count() -> None:
    body = render(
        [StageDiff("dev", clean(CHANGED)), StageDiff("prod", clean(UNCHANGED))], commit=COMMIT
    )
    assert "<details open><summary><b>dev</b>: 2 resource changes</summary>" in body
    assert "<details><summary><b>prod</b>: no change</summary>" in body
    assert body.index("<b>dev</b>") < body.index("<b>prod</b>")
    assert "Commit `0123456789ab`" in body


def test_clean_drops_colours_and_the_make_chatter_before_the_report() -> None:
    coloured = "npx cdk diff\n\x1b[1mStack ResnetServingDev\x1b[22m\n\x1b[32m[+] AWS::X A\x1b[39m\n"
    assert clean(coloured) == "Stack ResnetServingDev\n[+] AWS::X A"


def test_a_diff_holding_backticks_cannot_close_the_code_fence() -> None:
    body = render([StageDiff("dev", "Stack X\n[~] AWS::X A\n ``` sneaky")], commit=COMMIT)
    assert "````diff\n" in body
    assert body.count("````") == 2


def test_long_diffs_are_truncated_to_fit_githubs_comment_limit() -> None:
    long = "Stack ResnetServingDev\n" + "\n".join(f"[~] AWS::X Resource{i}" for i in range(9000))
    diffs = [StageDiff("dev", long), StageDiff("prod", clean(UNCHANGED))]
    body = render(diffs, commit=COMMIT, max_chars=20_000)
    assert len(body) <= 20_000
    assert "more lines: see the job log" in body
    # The short stage is untouched; the long one keeps its head.
    assert "There were no differences" in body
    assert "[~] AWS::X Resource0\n" in body
    assert "9000 resource changes" in body  # counted before truncation


def test_a_comment_that_cannot_fit_is_an_error() -> None:
    with pytest.raises(CommentError, match="cannot fit"):
        render([StageDiff("dev", "Stack X")], commit=COMMIT, max_chars=50)


def test_cli_writes_the_body_for_each_stage(tmp_path: Path) -> None:
    (tmp_path / "dev.txt").write_text(CHANGED, encoding="utf-8")
    (tmp_path / "prod.txt").write_text(UNCHANGED, encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.pr_diff_comment",
            "--commit",
            COMMIT,
            "--stage",
            f"dev={tmp_path / 'dev.txt'}",
            "--stage",
            f"prod={tmp_path / 'prod.txt'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(MARKER)
    assert "<b>prod</b>: no change" in result.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--commit", COMMIT, "--stage", "dev=/no/such/file"], "no cdk diff output for stage dev"),
        (["--commit", COMMIT, "--stage", "dev"], "--stage takes NAME=PATH"),
        (["--stage", "dev=x"], "the following arguments are required: --commit"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scripts.pr_diff_comment", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    assert message in line
