"""Checks on the machine that builds the image: Docker, its builder, what the push will be.

``cdk deploy`` builds lambda_src/ with ``docker build --platform <stage's>`` (or ``$CDK_DOCKER``),
tags and pushes it. Lambda accepts one single-platform image manifest, not an OCI image index;
buildx turns a build into an index when it attaches its default provenance attestation, and
the containerd image store keeps it. A builder other than the ``docker`` driver does not load
the image into the engine, so the CLI's tag and push find nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from preflight.findings import Finding, blocker, ok, warn
from stacks.config import Architecture

ROOT = Path(__file__).resolve().parent.parent
CDK_CLI_BUNDLE = ROOT / "node_modules" / "aws-cdk" / "lib" / "index.js"
PLATFORMS: dict[Architecture, str] = {"x86_64": "linux/amd64", "arm64": "linux/arm64"}
_HOST_PLATFORMS = {"x86_64": "linux/amd64", "amd64": "linux/amd64", "aarch64": "linux/arm64"}
_HOST_PLATFORMS["arm64"] = "linux/arm64"
# The CLI's docker build passes this in its environment (aws-cdk issue #30258).
_CLI_SETS_NO_ATTESTATIONS = re.compile(r"BUILDX_NO_DEFAULT_ATTESTATIONS:\s*\"1\"")
_TRUTHY = ("1", "true", "yes")
_TIMEOUT_S = 30

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


def run(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed argv, no shell
        list(command), capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
    )


def cdk_cli_disables_attestations(bundle: Path = CDK_CLI_BUNDLE) -> bool | None:
    """Whether the installed CDK CLI builds with ``BUILDX_NO_DEFAULT_ATTESTATIONS=1``.

    ``None`` when the CLI is not installed (``make install`` / ``npm ci``).
    """
    if not bundle.is_file():
        return None
    return bool(
        _CLI_SETS_NO_ATTESTATIONS.search(bundle.read_text(encoding="utf-8", errors="replace"))
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _builder(docker: str, runner: Runner) -> tuple[str | None, list[str]] | None:
    """Driver and platforms of the builder ``docker build`` uses; None without buildx."""
    result = runner([docker, "buildx", "inspect"])
    if result.returncode != 0:
        return None
    driver = None
    platforms: list[str] = []
    for line in result.stdout.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Driver" and driver is None:
            driver = value.strip()
        elif key.strip() == "Platforms":
            platforms += [p.strip() for p in value.split(",") if p.strip()]
    return driver, platforms


def check_docker(
    architecture: Architecture,
    *,
    runner: Runner = run,
    environ: dict[str, str] | None = None,
    cli_bundle: Path | None = None,
) -> list[Finding]:
    """Docker present and reachable, a builder for the stage's platform, a single manifest.

    Args:
        architecture: The stage's Lambda architecture; the image is built for its platform.
        runner: Runs a docker command (tests pass a fake).
        environ: Environment to read (default: this process's).
        cli_bundle: The CDK CLI's bundle to inspect (default: node_modules' pinned CLI).
    """
    env = dict(os.environ if environ is None else environ)
    name = env.get("CDK_DOCKER", "docker")  # the CLI honours it too
    docker = shutil.which(name, path=env.get("PATH"))
    if docker is None:
        return [
            blocker(
                "docker",
                f"`{name}` not found on PATH; cdk deploy builds the function image with it",
                "install Docker (Engine with the buildx plugin, or Docker Desktop)",
            )
        ]
    try:
        info_run = runner([docker, "info", "--format", "{{json .}}"])
    except (OSError, subprocess.TimeoutExpired) as error:
        return [blocker("docker", f"`docker info` failed: {error}", "check the Docker install")]
    if info_run.returncode != 0:
        return [
            blocker(
                "docker",
                f"Docker daemon not reachable: {_last_line(info_run.stderr)}",
                "start Docker (or point DOCKER_HOST / `docker context use` at a running engine)",
            )
        ]
    try:
        info: dict[str, Any] = json.loads(info_run.stdout)
    except ValueError:
        info = {}
    server = info.get("ServerVersion", "?")
    driver_status = dict(info.get("DriverStatus") or [])
    containerd_store = "containerd" in str(driver_status.get("driver-type", ""))
    store = "containerd image store" if containerd_store else "classic image store"
    findings = [ok("docker", f"Docker Engine {server} reachable ({store})")]

    target = PLATFORMS[architecture]
    binfmt = f"docker run --privileged --rm tonistiigi/binfmt --install {target.split('/')[1]}"
    host = _HOST_PLATFORMS.get(
        str(info.get("Architecture", "")), f"unknown ({info.get('Architecture')})"
    )
    try:
        builder = _builder(docker, runner)
    except (OSError, subprocess.TimeoutExpired):
        builder = None
    if builder is None:
        if host == target:
            findings.append(
                ok("builder", f"no buildx: the classic builder builds {target} natively")
            )
        else:
            findings.append(
                blocker(
                    "builder",
                    f"{architecture} needs a {target} build on a {host} host, and buildx is "
                    "not installed",
                    f"install the docker-buildx plugin, then QEMU: {binfmt}",
                )
            )
    else:
        driver, platforms = builder
        if driver != "docker":
            findings.append(
                blocker(
                    "builder",
                    f"the selected buildx builder uses the {driver} driver, which does not load "
                    "the image into Docker: the CDK CLI could not tag and push it",
                    "docker buildx use default (and unset BUILDX_BUILDER)",
                )
            )
        elif host != target and target not in platforms:
            findings.append(
                blocker(
                    "builder",
                    f"{architecture} needs {target} images; this {host} builder offers "
                    f"{', '.join(platforms) or 'no platforms'}",
                    binfmt,
                )
            )
        else:
            how = "natively" if host == target else "under emulation"
            findings.append(ok("builder", f"buildx ({driver} driver) builds {target} {how}"))

    bundle = CDK_CLI_BUNDLE if cli_bundle is None else cli_bundle
    findings.append(_image_format(env, containerd_store, builder is not None, bundle))
    return findings


def _image_format(
    env: dict[str, str], containerd_store: bool, has_buildx: bool, cli_bundle: Path
) -> Finding:
    by_cli = cdk_cli_disables_attestations(cli_bundle)
    by_env = env.get("BUILDX_NO_DEFAULT_ATTESTATIONS", "").strip().lower() in _TRUTHY
    if by_cli or by_env:
        who = "the CDK CLI" if by_cli else "your environment"
        return ok(
            "image-format",
            f"single-platform image manifest: {who} builds with BUILDX_NO_DEFAULT_ATTESTATIONS=1",
        )
    if not has_buildx:
        return ok("image-format", "the classic builder adds no attestations")
    problem = (
        "buildx attaches a provenance attestation by default, which makes the pushed image an "
        "OCI image index; Lambda rejects it ('image manifest ... media type ... is not supported')"
    )
    fix = "export BUILDX_NO_DEFAULT_ATTESTATIONS=1 (make deploy does) and npm ci the pinned CDK CLI"
    if containerd_store:
        return blocker("image-format", problem, fix)
    # The classic store cannot hold the index: older engines drop the attestation, Docker
    # Engine 29 refuses the build; either way, turn it off.
    return warn("image-format", problem, fix)
