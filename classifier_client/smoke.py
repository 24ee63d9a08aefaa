"""`make smoke STAGE=dev`: after a deploy, prove the endpoint serves the model you deployed.

Reads ``cdk-outputs-<stage>.json`` (written by ``make deploy``; ``make serve`` writes
``cdk-outputs-local.json``), fetches the API key's value with your AWS credentials, calls
``GET /health`` and ``POST /predict`` with ``rollout_hook/reference.jpg``, and checks that the
served model's sha256 is the one in the deployed manifest (``build/model/manifest.json``) and
that its top-1 for the photograph is the one the export recorded. Prints a PASS/FAIL table.

Exit status: 0 all checks passed, 1 a check failed, 2 it could not run (bad input, no
credentials, endpoint unreachable); the last two print one ``error:`` line, never a traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .client import ApiError, ClassifierError, Client, RetryPolicy
from .config import read_outputs_file, resolve_target

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO_ROOT / "rollout_hook"
DEFAULT_MODEL_DIR = REPO_ROOT / "build" / "model"
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


class SmokeError(ClassifierError):
    """The smoke test cannot run at all."""


@dataclass(frozen=True)
class Check:
    name: str
    result: str  # PASS / FAIL / SKIP
    detail: str


@dataclass(frozen=True)
class Expected:
    """What the deployed stage must serve, from the manifest of the deployed export."""

    sha256: str
    image: Path
    top1_index: int | None
    top1_label: str | None


def stack_name(stage: str) -> str:
    """The stack id of a stage, as stacks/config.py names it (``dev`` -> ``ResnetServingDev``)."""
    if not re.fullmatch(r"[a-z][a-z0-9]*", stage):
        raise SmokeError(f"stage must be lowercase letters and digits, like dev or prod: {stage!r}")
    return "ResnetServing" + stage.capitalize()


def read_expected(model_dir: Path) -> Expected:
    path = model_dir / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        sha256 = str(manifest["sha256"])
    except FileNotFoundError:
        raise SmokeError(
            f"no {path}: smoke compares the endpoint with the manifest you deployed; "
            "pass --model-dir (make smoke MODEL_DIR=...)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SmokeError(f"{path} is not an exporter manifest: {exc!r}") from None
    reference = manifest.get("reference")
    image = REFERENCE_DIR / "reference.jpg"
    if not isinstance(reference, dict):
        return Expected(sha256=sha256, image=image, top1_index=None, top1_label=None)
    try:
        image = REFERENCE_DIR / Path(str(reference["image"])).name
        recorded_for = str(reference["image_sha256"])
        top1 = reference["top1"]
        index, label = int(top1["index"]), top1.get("label")
    except (KeyError, TypeError, ValueError) as exc:
        raise SmokeError(f"{path} has a malformed reference: {exc!r}") from None
    try:
        actual = hashlib.sha256(image.read_bytes()).hexdigest()
    except OSError as exc:
        raise SmokeError(f"cannot read the reference photograph {image}: {exc.strerror}") from None
    if actual != recorded_for:
        raise SmokeError(
            f"{path} records its reference for another version of {image.name}: "
            "re-export with `make model` (and deploy it)"
        )
    return Expected(sha256=sha256, image=image, top1_index=index, top1_label=label)


def _short(sha256: object) -> str:
    return str(sha256)[:16] + "…" if isinstance(sha256, str) and len(sha256) > 16 else str(sha256)


def _served_sha(body: dict[str, Any]) -> object:
    model = body.get("model")
    return model.get("sha256") if isinstance(model, dict) else None


def run_checks(client: Client, expected: Expected, deployed_model_key: str | None) -> list[Check]:
    """Every check, in order; HTTP errors are failed checks, transport errors raise."""
    checks: list[Check] = []
    if deployed_model_key is not None:
        ok = expected.sha256 in deployed_model_key.split("/")
        checks.append(
            Check(
                "deployed model",
                PASS if ok else FAIL,
                f"stack output ModelKey {deployed_model_key}"
                + ("" if ok else f", but the manifest is {_short(expected.sha256)}"),
            )
        )
    try:
        health = client.health()
        checks.append(
            Check("GET /health", PASS, f"200, serves sha256 {_short(_served_sha(health))}")
        )
    except ApiError as exc:
        checks.append(Check("GET /health", FAIL, str(exc)))
    started = time.perf_counter()
    try:
        body = client.classify(expected.image, top_k=5)
    except ApiError as exc:
        checks.append(Check("POST /predict", FAIL, str(exc)))
        checks.append(Check("model sha256", FAIL, "no prediction to check"))
        checks.append(Check("top-1", FAIL, "no prediction to check"))
        return checks
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    predictions = body.get("predictions")
    top = predictions[0] if isinstance(predictions, list) and predictions else {}
    top = top if isinstance(top, dict) else {}
    checks.append(
        Check(
            "POST /predict",
            PASS if top else FAIL,
            f"200 in {elapsed_ms:.0f} ms, {expected.image.name}"
            if top
            else "200 without predictions",
        )
    )
    served = _served_sha(body)
    checks.append(
        Check(
            "model sha256",
            PASS if served == expected.sha256 else FAIL,
            f"served {_short(served)} "
            + ("==" if served == expected.sha256 else "!=")
            + f" manifest {_short(expected.sha256)}",
        )
    )
    got = f"{top.get('index')} {top.get('label')}"
    if expected.top1_index is None:
        checks.append(
            Check("top-1", SKIP, f"{got}; the manifest has no reference (re-export to record one)")
        )
    else:
        want = f"{expected.top1_index} {expected.top1_label}"
        same = top.get("index") == expected.top1_index
        relation = "==" if same else "!="
        checks.append(Check("top-1", PASS if same else FAIL, f"{got} {relation} reference {want}"))
    return checks


def format_table(checks: Sequence[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"  {c.name:<{width}}  {c.result}  {c.detail}" for c in checks]
    failed = sum(c.result == FAIL for c in checks)
    verdict = (
        f"smoke: FAIL ({failed} of {len(checks)} checks failed)"
        if failed
        else (f"smoke: PASS ({len(checks)} checks)")
    )
    return "\n".join([*lines, verdict])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m classifier_client.smoke", description=__doc__.split("\n")[0]
    )
    p.add_argument("--stage", required=True, help="dev, prod, ... or local (`make serve`)")
    p.add_argument(
        "--outputs-file",
        type=Path,
        help="default: cdk-outputs-<stage>.json in the current directory (what make deploy writes)",
    )
    p.add_argument(
        "--model-dir",
        type=Path,
        default=DEFAULT_MODEL_DIR,
        help="the deployed export's directory, for its manifest (default build/model)",
    )
    p.add_argument("--api-key", help="API key value (default: read with your AWS credentials)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per attempt (default 30)")
    p.add_argument(
        "--max-attempts", type=int, default=5, help="attempts on 429/5xx/timeouts (default 5)"
    )
    return p


def smoke(args: argparse.Namespace, out: TextIO) -> int:
    if args.max_attempts < 1 or args.timeout <= 0:
        raise SmokeError("--max-attempts must be >= 1 and --timeout > 0")
    stack = stack_name(args.stage)
    outputs_file = args.outputs_file or Path(f"cdk-outputs-{args.stage}.json")
    if not outputs_file.is_file():
        raise SmokeError(
            f"{outputs_file} not found: deploy first (make deploy STAGE={args.stage}; "
            "make serve for STAGE=local) or pass --outputs-file"
        )
    expected = read_expected(args.model_dir)
    outputs = read_outputs_file(outputs_file, stack)
    target = resolve_target(
        api_key=args.api_key, outputs_file=outputs_file, stack=stack, fetch_api_key=True, env={}
    )
    print(f"smoke {stack}: {target.endpoint}", file=out)
    with Client(
        target.endpoint,
        target.api_key,
        timeout_s=args.timeout,
        retry=RetryPolicy(max_attempts=args.max_attempts),
    ) as client:
        checks = run_checks(client, expected, (outputs.outputs or {}).get("ModelKey"))
    print(format_table(checks), file=out)
    return 1 if any(c.result == FAIL for c in checks) else 0


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return smoke(args, stdout or sys.stdout)
    except ClassifierError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
