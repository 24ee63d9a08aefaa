"""Render the pull-request comment that shows each stage's ``cdk diff`` (.github/workflows/pr.yml).

    python -m scripts.pr_diff_comment --commit <sha> --stage dev=diff-dev.txt \\
        --stage prod=diff-prod.txt > comment.md

Each ``--stage NAME=PATH`` names a file holding what ``make diff STAGE=NAME`` printed. The
comment starts with ``MARKER``, which the workflow uses to find and update its own comment
instead of adding one per push. Colour codes are stripped, the output of each stage starts at
CDK's ``Stack <id>`` line (the make/synth chatter before it is dropped), and the body is kept
under GitHub's comment limit by truncating the longest diffs first.

Bad input (a missing file, a malformed ``--stage``) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

MARKER = "<!-- resnet-serving:cdk-diff -->"
# GitHub rejects issue comments longer than 65,536 characters; keep a margin.
MAX_BODY_CHARS = 60_000
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# CDK prints one line per resource change: [+] added, [-] removed, [~] modified.
_RESOURCE_CHANGE = re.compile(r"^\[[+\-~]\] ", re.MULTILINE)
_STAGE_ARG = re.compile(r"^(?P<name>[a-z][a-z0-9-]*)=(?P<path>.+)$")


class CommentError(Exception):
    """Bad input; the message is the one line the user sees."""


@dataclass(frozen=True)
class StageDiff:
    stage: str
    text: str  # cleaned cdk diff output

    @property
    def resource_changes(self) -> int:
        return len(_RESOURCE_CHANGE.findall(self.text))


def clean(raw: str) -> str:
    """Drop colour codes and everything before CDK's first ``Stack <id>`` line."""
    text = _ANSI.sub("", raw).replace("\r\n", "\n")
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Stack ")), 0)
    return "\n".join(lines[start:]).strip("\n")


def _fence(text: str) -> str:
    """A code fence longer than any backtick run inside ``text``."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    kept = text[:limit].rsplit("\n", 1)[0]
    dropped = text[len(kept) :].count("\n") + 1
    return f"{kept}\n… {dropped} more lines: see the job log"


def _section(diff: StageDiff, text: str) -> str:
    changes = diff.resource_changes
    summary = f"{changes} resource change{'s' if changes != 1 else ''}" if changes else "no change"
    fence = _fence(text)
    return (
        f"<details{' open' if changes else ''}><summary><b>{diff.stage}</b>: {summary}"
        f"</summary>\n\n{fence}diff\n{text}\n{fence}\n\n</details>"
    )


def render(diffs: list[StageDiff], *, commit: str, max_chars: int = MAX_BODY_CHARS) -> str:
    """The whole comment body, at most ``max_chars`` long."""
    header = (
        f"{MARKER}\n### `cdk diff` against the deployed stacks\n\n"
        f"Commit `{commit[:12]}`: template diff through the CDK lookup role (read-only). "
        "This comment is updated on every push.\n"
    )
    sections = {diff.stage: diff.text for diff in diffs}
    while True:
        body = "\n\n".join([header, *(_section(d, sections[d.stage]) for d in diffs)]) + "\n"
        excess = len(body) - max_chars
        if excess <= 0:
            return body
        longest = max(diffs, key=lambda d: len(sections[d.stage]))
        current = sections[longest.stage]
        if len(current) < 200:  # nothing left worth cutting
            raise CommentError(f"comment cannot fit in {max_chars} characters")
        sections[longest.stage] = _truncate(current, max(100, len(current) - excess - 200))


def _read_stage(argument: str) -> StageDiff:
    match = _STAGE_ARG.match(argument)
    if match is None:
        raise CommentError(
            f"--stage takes NAME=PATH (for example dev=diff-dev.txt), not {argument!r}"
        )
    path = Path(match["path"])
    if not path.is_file():
        raise CommentError(f"no cdk diff output for stage {match['name']}: {path} does not exist")
    return StageDiff(stage=match["name"], text=clean(path.read_text(encoding="utf-8")))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m scripts.pr_diff_comment", description=__doc__)
    parser.add_argument("--commit", required=True, help="the pull request's head commit")
    parser.add_argument(
        "--stage", action="append", required=True, metavar="NAME=PATH", help="repeat per stage"
    )
    args = parser.parse_args(argv)
    try:
        diffs = [_read_stage(argument) for argument in args.stage]
        sys.stdout.write(render(diffs, commit=args.commit))
    except CommentError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
