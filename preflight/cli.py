"""``python -m preflight --stage dev [--model-dir DIR]``: one line per check.

Exit codes: 0 ready to deploy (warnings allowed), 1 at least one BLOCKER, 2 bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import boto3
from botocore.exceptions import BotoCoreError, ClientError, ProfileNotFound

from preflight.aws_checks import (
    CredentialsProblem,
    bootstrap_version_required,
    check_api_gateway_logging,
    check_bootstrap,
    check_concurrency,
    check_identity,
    check_memory,
    could_not_read,
    stack_outputs,
)
from preflight.docker_checks import Runner, check_docker, run
from preflight.findings import Finding, blocker
from preflight.local_checks import check_model, synthesized_template
from stacks.app_builder import ROOT
from stacks.config import STAGES, StageConfig

DEFAULT_MODEL_DIR = Path("build") / "model"


def default_session() -> Any:
    """The caller's credentials, with the region the CDK CLI would deploy to.

    The CLI (AWS SDK for JavaScript) honours AWS_REGION; botocore only AWS_DEFAULT_REGION.
    """
    return boto3.Session(region_name=os.environ.get("AWS_REGION") or None)


class BadInput(Exception):
    """Wrong command-line input: reported in one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise BadInput(message)


def aws_findings(session_factory: Callable[[], Any], config: StageConfig) -> list[Finding]:
    try:
        session = session_factory()
    except ProfileNotFound as error:
        fix = "pick one from `aws configure list-profiles` (AWS_PROFILE=<name>)"
        return [blocker("credentials", str(error), fix)]
    try:
        findings = [check_identity(session)]
    except CredentialsProblem as problem:
        return [problem.finding]
    try:
        required: int | None = bootstrap_version_required(synthesized_template(config))
    except Exception as error:  # jsii surfaces synth errors as plain exceptions
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        findings.append(
            blocker("synth", f"{config.stack_id} does not synthesize: {first}", "make synth")
        )
        required = None
    findings.append(check_bootstrap(session, required))
    try:
        outputs = stack_outputs(session, config.stack_id)
    except (ClientError, BotoCoreError) as error:
        findings.append(
            could_not_read(
                "stack",
                config.stack_id,
                error,
                f"aws cloudformation describe-stacks --stack-name {config.stack_id}",
            )
        )
        outputs = {}
    concurrency, numbers = check_concurrency(session, config, outputs)
    findings.append(concurrency)
    findings.append(check_memory(session, config, outputs, numbers.get("quota")))
    findings.append(check_api_gateway_logging(session))
    return findings


def summary(findings: Sequence[Finding], stage: str) -> str:
    blockers = sum(f.level == "BLOCKER" for f in findings)
    warnings = sum(f.level == "WARN" for f in findings)
    counts = f"{blockers} blocker{'s' * (blockers != 1)}, {warnings} warning{'s' * (warnings != 1)}"
    if blockers:
        return f"preflight: {counts}: fix the BLOCKER lines before `make deploy STAGE={stage}`"
    return f"preflight: {counts}: ready for `make deploy STAGE={stage}`"


def main(
    argv: Sequence[str] | None = None,
    *,
    session_factory: Callable[[], Any] = default_session,
    docker_runner: Runner = run,
    environ: dict[str, str] | None = None,
) -> int:
    parser = _Parser(prog="python -m preflight", description=__doc__)
    parser.add_argument("--stage", required=True, help=f"one of {', '.join(STAGES)}")
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=DEFAULT_MODEL_DIR,
        help="exporter artifact dir (default build/model; relative to the repo)",
    )
    try:
        args = parser.parse_args(argv)
        if args.stage not in STAGES:
            choices = " or ".join(f"STAGE={name}" for name in STAGES)
            raise BadInput(f"unknown stage {args.stage!r}: pass {choices}")
    except BadInput as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    config = STAGES[args.stage]
    model_dir = args.model_dir if args.model_dir.is_absolute() else ROOT / args.model_dir

    batch = (
        f"; batch {config.batch_memory_mb} MB, reserved concurrency "
        f"{config.batch_reserved_concurrency or 0}"
        if config.batch_enabled
        else ""
    )
    print(
        f"preflight {config.stack_id} (stage {config.name}: {config.architecture}, "
        f"{config.memory_mb} MB, reserved concurrency {config.reserved_concurrency or 0}{batch})",
        flush=True,
    )
    findings = aws_findings(session_factory, config)
    findings += check_docker(config.architecture, runner=docker_runner, environ=environ)
    findings += check_model(model_dir, config)
    for finding in findings:
        print(finding.line())
    print(summary(findings, config.name))
    return 1 if any(f.level == "BLOCKER" for f in findings) else 0
