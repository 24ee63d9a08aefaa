"""`make loadtest`: load profiles, fault scenarios and a soak in one run, figures as JSON + plot.

    python -m reliability.loadtest                       # local endpoint, everything
    python -m reliability.loadtest --outputs-file cdk-outputs-dev.json --fetch-api-key \\
        --profiles steady --steady-rps 4                 # a deployed stage, load only

Locally, each profile gets a fresh `python -m local_mode.serve` (the stage's template, the usage
plan's throttle off so the function is what is measured) with `--concurrency` and
`--provisioned` execution environments; the function's platform records (its log) give the cold
starts. Against a deployed stage the same Locust clients run against the stage's URL: the usage
plan's limits apply there (dev: 5 requests/s, burst 10), so pick rates below them.

After the faults and the soak, the atheris fuzz targets (`python -m fuzz`, what `make fuzz` runs)
run for --fuzz-seconds each; their executions and findings are the run's fuzz figures.

Profiles: steady (paced clients, below capacity), ramp (closed-loop clients added step by step:
the knee is where throughput stops growing) and spike (from the provisioned environments' load
to several times the concurrency limit and back). Every request is bounded in count and time.
Requests mix valid photographs (each answer checked against a reference computed once) with
invalid ones that must get a 4xx JSON error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .reference import Reference, compute_reference
from .stats import (
    by_users,
    knee,
    per_second,
    platform_events,
    platform_summary,
    read_jsonl,
    summarize,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "reliability" / "results"
DEFAULT_PLOT = REPO_ROOT / "docs" / "img" / "reliability.png"
FUZZ_OUT = REPO_ROOT / "build" / "fuzz"  # where `make fuzz` keeps its corpus and findings
PHOTOS = 4  # the first four shipped photographs: two PNG, a JPEG-sized mix


class LoadTestError(Exception):
    """A problem the user can fix (no model, bad outputs file, endpoint down): one line."""


@dataclass(frozen=True)
class Settings:
    concurrency: int = 4
    provisioned: int = 2
    steady_users: int = 2
    steady_rps: float = 8.0
    steady_s: float = 20.0
    ramp_step_s: float = 6.0
    ramp_max_users: int = 6
    spike_users: int = 10
    spike_s: float = 8.0
    max_requests: int = 3000
    timeout_s: float = 60.0


def profile_stages(name: str, s: Settings) -> list[dict[str, Any]]:
    """(until second, users, per-user rate or None) stages of a profile."""
    if name == "steady":
        rate = s.steady_rps / s.steady_users
        return [{"until": s.steady_s, "users": s.steady_users, "rate": rate}]
    if name == "ramp":
        return [
            {"until": s.ramp_step_s * users, "users": users, "rate": None}
            for users in range(1, s.ramp_max_users + 1)
        ]
    if name == "spike":
        base = max(1, s.provisioned)
        calm = 4.0  # requests/s per client outside the spike
        return [
            {"until": 6.0, "users": base, "rate": calm},
            {"until": 6.0 + s.spike_s, "users": s.spike_users, "rate": None},
            {"until": 12.0 + s.spike_s, "users": base, "rate": calm},
        ]
    raise LoadTestError(f"unknown profile {name!r}: steady, ramp or spike")


def photos_for_load() -> list[Path]:
    from model_export.photos import photographs

    return photographs()[:PHOTOS]


def load_reference(model_dir: Path, photos: list[Path], memory_mb: int | None = None) -> Reference:
    if memory_mb is None:
        from local_mode.apispec import load_spec

        memory_mb = load_spec().memory_mb
    return compute_reference(model_dir, photos, memory_mb)


# -- one profile --------------------------------------------------------------------------


def run_driver(
    endpoint: str,
    api_key: str,
    profile: str,
    settings: Settings,
    reference: Reference,
    photos: list[Path],
    workdir: Path,
) -> list[dict[str, Any]]:
    stages = profile_stages(profile, settings)
    max_seconds = stages[-1]["until"] + settings.timeout_s + 5  # room for requests in flight
    records_out = workdir / f"{profile}.requests.jsonl"
    config = {
        "endpoint": endpoint,
        "api_key": api_key,
        "profile": {"name": profile, "stages": stages},
        "max_requests": settings.max_requests,
        "max_seconds": max_seconds,
        "timeout_s": settings.timeout_s,
        "photos": [
            {"name": p.name, "path": str(p), "content_type": reference.answers[p.name].content_type}
            for p in photos
        ],
        "reference": reference.to_json(),
        "records_out": str(records_out),
    }
    config_path = workdir / f"{profile}.config.json"
    config_path.write_text(json.dumps(config))
    result = subprocess.run(  # noqa: S603 - our interpreter, our module
        [sys.executable, "-m", "reliability.load_driver", str(config_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=max_seconds + settings.timeout_s + 60,
    )
    if result.returncode != 0 or not records_out.is_file():
        raise LoadTestError(f"the Locust driver failed:\n{result.stderr[-2000:]}")
    return read_jsonl(records_out)


class LocalServe:
    """`python -m local_mode.serve` in a subprocess, for one profile."""

    def __init__(self, model_dir: Path, settings: Settings, workdir: Path, name: str) -> None:
        self.ready = workdir / f"{name}.ready.json"
        self.function_log = workdir / f"{name}.function.log"
        self.out = workdir / f"{name}.serve.out"
        self.command = [
            sys.executable,
            "-m",
            "local_mode.serve",
            "--model-dir",
            str(model_dir),
            "--port",
            "0",
            "--no-throttle",
            "--short-access-log",
            "--concurrency",
            str(settings.concurrency),
            "--provisioned",
            str(settings.provisioned),
            "--ready-file",
            str(self.ready),
            "--function-log",
            str(self.function_log),
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> dict[str, Any]:
        self.process = subprocess.Popen(  # noqa: S603 - our interpreter, our module
            self.command, cwd=REPO_ROOT, stdout=self.out.open("wb"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 180
        while not self.ready.is_file():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise LoadTestError(f"local_mode.serve did not start:\n{self.out.read_text()}")
            time.sleep(0.1)
        return dict(json.loads(self.ready.read_text()))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def platform(self) -> list[dict[str, Any]]:
        if not self.function_log.is_file():
            return []
        return platform_events(self.function_log.read_text(errors="replace").splitlines())


def profile_result(
    name: str,
    records: list[dict[str, Any]],
    platform: list[dict[str, Any]] | None,
    settings: Settings,
) -> dict[str, Any]:
    cold = platform_summary(platform) if platform is not None else None
    cold_ids = set(cold["cold_request_ids"]) if cold else None
    result: dict[str, Any] = {
        "profile": name,
        "stages": profile_stages(name, settings),
        "summary": summarize(records, cold_ids),
        "platform": {k: v for k, v in cold.items() if k != "cold_request_ids"} if cold else None,
        "timeline": per_second(records),
        "latencies": [
            [r["t"], r["ms"], r["outcome"], r["request_id"] in (cold_ids or ())]
            for r in records
            if r["status"] is not None
        ],
    }
    if name == "ramp":
        steps = by_users(records)
        result["steps"] = steps
        result["knee"] = knee(steps)
    if name == "spike":
        stages = profile_stages(name, settings)
        bounds = [0.0] + [s["until"] for s in stages]
        phases = []
        for label, lo, hi in zip(("before", "spike", "after"), bounds, bounds[1:], strict=False):
            part = [r for r in records if lo <= r["t"] < hi]
            s = summarize(part, cold_ids)
            phases.append(
                {
                    "phase": label,
                    **{
                        k: s[k]
                        for k in (
                            "requests",
                            "throughput_rps",
                            "latency_ms",
                            "five_xx",
                            "cold_requests",
                            "wrong_answers",
                        )
                    },
                }
            )
        result["phases"] = phases
    return result


# -- the whole run ------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings(
        concurrency=args.concurrency,
        provisioned=args.provisioned,
        steady_rps=args.steady_rps,
        steady_s=args.steady_seconds,
        ramp_max_users=args.ramp_max_users,
        spike_users=args.spike_users,
        max_requests=args.max_requests,
    )
    photos = photos_for_load()
    deployed = args.outputs_file is not None or args.endpoint is not None
    target: dict[str, Any] = {}
    if deployed:
        from classifier_client import ClassifierError
        from classifier_client.config import resolve_target

        try:
            resolved = resolve_target(
                endpoint=args.endpoint,
                api_key=args.api_key,
                outputs_file=args.outputs_file,
                stack=args.stack,
                fetch_api_key=args.fetch_api_key,
            )
        except ClassifierError as exc:
            raise LoadTestError(str(exc)) from exc
        target = {"kind": "deployed", "endpoint": resolved.endpoint, "source": resolved.source}
        api_key = str(resolved.api_key)
    else:
        target = {
            "kind": "local",
            "concurrency": settings.concurrency,
            "provisioned": settings.provisioned,
        }
    if not (args.model_dir / "manifest.json").is_file():
        raise LoadTestError(
            f"no model in {args.model_dir} (the reference answers come from it): `make model`"
        )
    print(f"Reference answers: {len(photos)} photographs through torchvision + ONNX Runtime ...")
    reference = load_reference(args.model_dir, photos)
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    for p in profiles:
        profile_stages(p, settings)  # unknown names fail before anything starts
    results: dict[str, Any] = {
        "schema": 1,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "target": target,
        "settings": vars(settings),
        "reference": {
            "model_sha256": reference.model_sha256,
            "photos": sorted(reference.answers),
            "min_top1_margin": round(min(a.margin for a in reference.answers.values()), 5),
        },
        "profiles": {},
        "faults": None,
        "soak": None,
        "fuzz": None,  # run_fuzz's figures, after the faults and the soak (local only)
    }
    with tempfile.TemporaryDirectory(prefix="loadtest-") as tmp:
        workdir = Path(tmp)
        for name in profiles:
            print(f"Profile {name}: {profile_stages(name, settings)}")
            if deployed:
                records = run_driver(
                    target["endpoint"], api_key, name, settings, reference, photos, workdir
                )
                platform = None
            else:
                serve = LocalServe(args.model_dir, settings, workdir, name)
                with serve as ready:
                    records = run_driver(
                        ready["endpoint"],
                        ready["api_key"],
                        name,
                        settings,
                        reference,
                        photos,
                        workdir,
                    )
                platform = serve.platform()
            result = profile_result(name, records, platform, settings)
            results["profiles"][name] = result
            print_profile(result)
    if deployed or not (args.faults or args.soak_requests or args.fuzz_seconds):
        return results
    from local_mode.console import stdout_to_file

    from .faults import fault_lab, run_all
    from .soak import run_soak

    function_log = RESULTS_DIR.parent.parent / "build" / "local" / "loadtest-function.log"
    # The environments inherit stdout: their logs go to a file, progress to the terminal.
    with stdout_to_file(function_log) as terminal:

        def say(message: str) -> None:
            print(message, file=terminal, flush=True)

        if args.faults:
            say(f"Fault scenarios (local; the function's log: {function_log}) ...")
            other = (args.model_dir / "model.onnx").read_bytes()[:-1] + b"\0"
            with fault_lab(args.model_dir, reference, photos) as lab:
                outcomes = run_all(lab, other, say)
            results["faults"] = [o.to_json() for o in outcomes]
        if args.soak_requests:
            say(f"Soak: {args.soak_requests:,} requests through one environment ...")
            results["soak"] = run_soak(
                args.model_dir, reference, photos, args.soak_requests, log=say
            )
    if args.fuzz_seconds:
        print(f"Fuzzing (atheris): up to {args.fuzz_seconds} s per target ...", flush=True)
        results["fuzz"] = run_fuzz(args.fuzz_seconds, FUZZ_OUT)
    return results


def run_fuzz(seconds: int, out: Path) -> dict[str, Any]:
    """`python -m fuzz` (what `make fuzz` runs) in a subprocess; its summary.json as figures.

    A finding (exit status 1) is a figure, not a failure of the run; a target that could not
    run (exit status 2, e.g. atheris missing) is recorded with its reason.
    """
    command = [sys.executable, "-m", "fuzz", "--seconds", str(seconds), "--out", str(out)]
    summary_path = out / "summary.json"
    summary_path.unlink(missing_ok=True)
    completed = subprocess.run(  # noqa: S603 - our interpreter, our module
        command, cwd=REPO_ROOT, capture_output=True, text=True, errors="replace", check=False
    )
    source = f"python -m fuzz --seconds {seconds}"
    if not summary_path.is_file():
        last = (completed.stdout + completed.stderr).strip().splitlines()[-1:] or ["no output"]
        return {"cases": 0, "findings": 0, "source": source, "targets": [], "error": last[0]}
    summary = json.loads(summary_path.read_text())
    return fuzz_figures(summary, source)


def fuzz_figures(summary: dict[str, Any], source: str) -> dict[str, Any]:
    """fuzz/__main__.py's summary.json -> {"cases", "findings", "source", per target}."""
    targets = [
        {
            "target": t["target"],
            "cases": t["executions"],
            "findings": 1 if t.get("finding") else 0,
            "finding": t.get("finding"),
            "error": t.get("error"),
            "seconds": round(t["seconds"], 1),
            "coverage": t.get("coverage"),
            "costliest_cpu_s": t.get("costliest_cpu_s"),
            "costliest_memory_mib": t.get("costliest_memory_mib"),
        }
        for t in summary["targets"]
    ]
    errors = [f"{t['target']}: {t['error']}" for t in targets if t["error"]]
    return {
        "cases": sum(t["cases"] for t in targets),
        "findings": sum(t["findings"] for t in targets),
        "source": source,
        "seconds_per_target": summary.get("seconds_per_target"),
        "targets": targets,
        "error": "; ".join(errors) or None,
    }


def machine() -> dict[str, Any]:
    import os
    import platform

    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": model, "python": platform.python_version()}


def print_profile(result: dict[str, Any]) -> None:
    s = result["summary"]
    lat = s["latency_ms"]
    cold = result["platform"]["cold_starts"] if result["platform"] else "n/a"
    print(
        f"  {result['profile']}: {s['requests']} requests, {s['throughput_rps']} req/s, "
        f"p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms; "
        f"wrong {s['wrong_answers']}, 5xx {s['five_xx']}, dropped {s['dropped']}, "
        f"cold starts {cold}"
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reliability.loadtest", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model-dir", type=Path, default=REPO_ROOT / "build" / "model")
    p.add_argument("--profiles", default="steady,ramp,spike", help="comma-separated")
    target = p.add_argument_group("a deployed stage instead of the local endpoint")
    target.add_argument("--outputs-file", default=None, help="cdk deploy --outputs-file JSON")
    target.add_argument("--stack", default=None, help="stack in the outputs file")
    target.add_argument("--endpoint", default=None, help="endpoint URL (instead of outputs)")
    target.add_argument("--api-key", default=None, help="API key value ($CLASSIFIER_API_KEY)")
    target.add_argument(
        "--fetch-api-key", action="store_true", help="read the key's value with your credentials"
    )
    local = p.add_argument_group("the local endpoint")
    local.add_argument("--concurrency", type=int, default=Settings.concurrency)
    local.add_argument("--provisioned", type=int, default=Settings.provisioned)
    local.add_argument("--no-faults", dest="faults", action="store_false")
    local.add_argument(
        "--soak-requests", type=int, default=2000, help="short soak in the run (0 = none)"
    )
    local.add_argument(
        "--fuzz-seconds",
        type=int,
        default=60,
        help="run the atheris fuzz targets (make fuzz) this long each (0 = none)",
    )
    load = p.add_argument_group("load")
    load.add_argument("--steady-rps", type=float, default=Settings.steady_rps)
    load.add_argument("--steady-seconds", type=float, default=Settings.steady_s)
    load.add_argument("--ramp-max-users", type=int, default=Settings.ramp_max_users)
    load.add_argument("--spike-users", type=int, default=Settings.spike_users)
    load.add_argument("--max-requests", type=int, default=Settings.max_requests)
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, default=None, help="result JSON (default: results/)")
    out.add_argument("--plot", type=Path, default=None, help=f"plot (default {DEFAULT_PLOT})")
    out.add_argument(
        "--write-docs", action="store_true", help="regenerate docs/reliability.md's figures"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.concurrency < 1 or not 0 <= args.provisioned <= args.concurrency:
            raise LoadTestError("need --concurrency >= 1 and 0 <= --provisioned <= --concurrency")
        if args.fuzz_seconds < 0:
            raise LoadTestError("need --fuzz-seconds >= 0 (0 = no fuzzing)")
        results = run(args)
    except LoadTestError as exc:
        print(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        print("\nInterrupted: every server and client was stopped.")
        return 130
    stamp = results["created"].replace(":", "").replace("-", "").replace("+0000", "Z")
    out = args.out or RESULTS_DIR / f"loadtest-{results['target']['kind']}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"Results: {out}")
    from .report import plot, write_docs

    plot_path = args.plot or (DEFAULT_PLOT if results["target"]["kind"] == "local" else None)
    if plot_path is None:
        plot_path = out.with_suffix(".png")
    plot(results, plot_path)
    print(f"Plot: {plot_path}")
    if args.write_docs:
        if results["target"]["kind"] != "local":
            print("error: --write-docs takes a local run (the documented figures are local)")
            return 1
        write_docs(results, out)
        print("Updated the figures in docs/reliability.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
