"""``make fuzz``: run every atheris target for a time budget, print a table, fail on a finding.

    python -m fuzz [--seconds 60] [--runs N] [--target image|event ...] [--out build/fuzz]

Each target runs in its own process (``python -m fuzz.target NAME``) over a corpus kept in
OUT/corpus/NAME (grown run after run) and seeds regenerated in OUT/seeds/NAME. A finding stops
its target (libFuzzer's way) and is saved as OUT/NAME/{crash,timeout,oom}-<sha1>; the full log
is OUT/NAME/fuzz.log, the figures OUT/summary.json. Exit status: 0 if nothing was found, 1 on
a finding, 2 if a target could not run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from fuzz import seeds
from fuzz.properties import ROOT

TARGETS = ("image", "event")
# libFuzzer grows inputs up to this size. Every refused class fits in it (a 1,000-scan JPEG is
# 16 kB, a sliver PNG 86 bytes, a 40 MP gray PNG ~40 kB) while mutations stay cheap; the 6 MiB
# body limit itself is a length check, covered by the handler tests.
MAX_LEN = 64 * 1024


@dataclasses.dataclass
class Result:
    target: str
    executions: int = 0
    coverage: int = 0  # libFuzzer "cov": instrumented Python branches (edges) reached
    features: int = 0  # libFuzzer "ft"
    corpus: int = 0
    seconds: float = 0.0
    costliest_cpu_s: float = 0.0  # the most CPU any one input took
    costliest_memory_mib: float = 0.0  # the most peak-RSS growth any one input caused
    finding: str | None = None  # "crash: <first line>", "timeout", "oom"
    artifact: str | None = None
    error: str | None = None  # the target did not run


def parse_log(target: str, log: str, returncode: int, seconds: float) -> Result:
    """libFuzzer's output (with -print_final_stats=1) -> the figures of one run."""
    result = Result(target, seconds=seconds)
    if m := re.search(r"stat::number_of_executed_units:\s+(\d+)", log):
        result.executions = int(m.group(1))
    status_lines = re.findall(r"^#\d+\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/", log, re.M)
    if status_lines:
        cov, ft, corp = status_lines[-1]
        result.coverage, result.features, result.corpus = int(cov), int(ft), int(corp)
    if m := re.search(r"Test unit written to (\S+)", log):
        result.artifact = m.group(1)
    if "=== Uncaught Python exception: ===" in log:
        after = log.split("=== Uncaught Python exception: ===", 1)[1].strip().splitlines()
        result.finding = "crash: " + (after[0] if after else "?")
    elif m := re.search(r"ERROR: libFuzzer: (timeout|out-of-memory|deadly signal)", log):
        result.finding = {"out-of-memory": "oom"}.get(m.group(1), m.group(1))
    elif returncode != 0:
        last = log.strip().splitlines()[-1:] or ["(no output)"]
        result.error = f"exit status {returncode}: {last[0]}"
    return result


def run_target(
    target: str, out: Path, seconds: int, runs: int | None, python: str = sys.executable
) -> Result:
    corpus, seed_dir, artifacts = out / "corpus" / target, out / "seeds" / target, out / target
    for directory in (corpus, artifacts):
        directory.mkdir(parents=True, exist_ok=True)
    seeds.write(target, seed_dir)
    dictionary = out / f"{target}.dict"
    seeds.write_dictionary(target, dictionary)
    command = [
        python, "-m", "fuzz.target", target,
        f"-max_total_time={seconds}", f"-max_len={MAX_LEN}", f"-dict={dictionary}",
        f"-artifact_prefix={artifacts}/", "-print_final_stats=1",
        *([f"-runs={runs}"] if runs is not None else []),
        str(corpus), str(seed_dir),
    ]  # fmt: skip
    costliest = artifacts / "costliest.json"
    costliest.unlink(missing_ok=True)
    started = time.monotonic()
    completed = subprocess.run(  # noqa: S603 - fixed argv, no shell
        command,
        cwd=ROOT,
        env={**os.environ, "FUZZ_COSTLIEST_FILE": str(costliest)},
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    elapsed = time.monotonic() - started
    log = completed.stdout + completed.stderr
    (artifacts / "fuzz.log").write_text(log)
    result = parse_log(target, log, completed.returncode, elapsed)
    if costliest.exists():
        worst = json.loads(costliest.read_text())
        result.costliest_cpu_s, result.costliest_memory_mib = worst["cpu_s"], worst["memory_mib"]
    return result


def table(results: list[Result]) -> str:
    header = ("target", "executions", "exec/s", "cov", "ft", "corpus", "seconds",
              "max CPU s", "max MiB", "findings")  # fmt: skip
    rows = [header]
    for r in results:
        rows.append(
            (
                r.target,
                f"{r.executions:,}",
                f"{r.executions / r.seconds if r.seconds else 0.0:,.0f}",
                str(r.coverage),
                str(r.features),
                str(r.corpus),
                f"{r.seconds:.0f}",
                f"{r.costliest_cpu_s:.3f}",
                f"{r.costliest_memory_mib:.0f}",
                "error" if r.error else ("1" if r.finding else "0"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    for r in results:
        if r.finding:
            lines.append(f"{r.target}: {r.finding}")
            lines.append(
                f"  input: {r.artifact}; replay: python -m fuzz.target {r.target} {r.artifact}"
            )
        if r.error:
            lines.append(f"{r.target}: did not run ({r.error})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="time budget per target")
    parser.add_argument("--runs", type=int, help="stop a target after this many executions")
    parser.add_argument("--target", action="append", choices=TARGETS, help="default: all")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "fuzz")
    args = parser.parse_args(argv)
    if args.seconds < 1:
        parser.error("--seconds must be at least 1")
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed: `make fuzz` installs fuzz/requirements.txt (Linux x86_64)")
        return 2
    results = []
    for target in args.target or TARGETS:
        print(f"fuzzing {target} for up to {args.seconds} s ...", flush=True)
        results.append(run_target(target, args.out.resolve(), args.seconds, args.runs))
    print(table(results))
    summary = {"seconds_per_target": args.seconds, "runs_per_target": args.runs,
               "targets": [dataclasses.asdict(r) for r in results]}  # fmt: skip
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if any(r.error for r in results):
        return 2
    return 1 if any(r.finding for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
