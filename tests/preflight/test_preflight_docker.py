"""The build machine: builder platforms, and what format the pushed image will have."""

from __future__ import annotations

import os
from pathlib import Path

from preflight_helpers import FakeDocker

from preflight.docker_checks import CDK_CLI_BUNDLE, cdk_cli_disables_attestations, check_docker
from preflight.findings import Finding


def by_check(findings: list[Finding]) -> dict[str, Finding]:
    return {finding.check: finding for finding in findings}


def old_cli(tmp_path: Path) -> Path:
    """A CDK CLI bundle from before the CLI turned buildx's default attestations off."""
    bundle = tmp_path / "index.js"
    bundle.write_text("await this.execute(buildCommand, { cwd: options.directory });\n", "utf-8")
    return bundle


def test_pinned_cdk_cli_builds_images_without_default_attestations() -> None:
    # The deploy path's guarantee of a single-platform manifest: `cdk deploy` runs
    # `docker build` with BUILDX_NO_DEFAULT_ATTESTATIONS=1 whatever the caller's environment.
    # A CLI bump that dropped it would fail here (package.json pins the CLI).
    assert CDK_CLI_BUNDLE.is_file(), "node_modules/aws-cdk is missing: make install"
    assert cdk_cli_disables_attestations() is True


def test_a_cli_that_keeps_attestations_is_recognised(tmp_path: Path) -> None:
    assert cdk_cli_disables_attestations(old_cli(tmp_path)) is False
    assert cdk_cli_disables_attestations(tmp_path / "absent.js") is None


def test_containerd_store_with_attestations_on_is_a_blocker(
    docker: FakeDocker, tmp_path: Path
) -> None:
    docker.engine(containerd_store=True)
    found = by_check(check_docker("x86_64", cli_bundle=old_cli(tmp_path), environ=_env()))
    assert found["image-format"].level == "BLOCKER"
    assert "OCI image index" in found["image-format"].message
    assert "BUILDX_NO_DEFAULT_ATTESTATIONS=1" in str(found["image-format"].fix)


def test_attestations_turned_off_in_the_environment_make_a_single_manifest(
    docker: FakeDocker, tmp_path: Path
) -> None:
    docker.engine(containerd_store=True)
    env = _env(BUILDX_NO_DEFAULT_ATTESTATIONS="1")
    found = by_check(check_docker("x86_64", cli_bundle=old_cli(tmp_path), environ=env))
    assert found["image-format"].level == "OK"
    assert "your environment" in found["image-format"].message


def test_classic_store_with_attestations_on_is_a_warning(
    docker: FakeDocker, tmp_path: Path
) -> None:
    docker.engine(containerd_store=False)
    found = by_check(check_docker("x86_64", cli_bundle=old_cli(tmp_path), environ=_env()))
    assert found["docker"].message.endswith("(classic image store)")
    assert found["image-format"].level == "WARN"


def test_arm64_on_an_x86_host_without_emulation_is_a_blocker(docker: FakeDocker) -> None:
    docker.builder(platforms="linux/amd64, linux/amd64/v2, linux/386")
    found = by_check(check_docker("arm64", environ=_env()))
    assert found["builder"].level == "BLOCKER"
    assert "linux/arm64" in found["builder"].message
    assert found["builder"].fix == "docker run --privileged --rm tonistiigi/binfmt --install arm64"


def test_arm64_on_an_x86_host_with_qemu_registered_builds_under_emulation(
    docker: FakeDocker,
) -> None:
    docker.builder(platforms="linux/amd64, linux/arm64, linux/386")
    found = by_check(check_docker("arm64", environ=_env()))
    assert found["builder"] == Finding(
        "OK", "builder", "buildx (docker driver) builds linux/arm64 under emulation"
    )


def test_arm64_on_an_arm64_host_is_native(docker: FakeDocker) -> None:
    docker.engine(architecture="aarch64")
    docker.builder(platforms="linux/arm64")
    found = by_check(check_docker("arm64", environ=_env()))
    assert found["builder"].message == "buildx (docker driver) builds linux/arm64 natively"


def test_no_buildx_is_fine_natively_and_a_blocker_across_architectures(
    docker: FakeDocker,
) -> None:
    docker.no_buildx()
    native = by_check(check_docker("x86_64", environ=_env()))
    assert native["builder"].level == "OK"
    cross = by_check(check_docker("arm64", environ=_env()))
    assert cross["builder"].level == "BLOCKER"
    assert "buildx is not installed" in cross["builder"].message


def test_cdk_docker_names_the_container_client_like_the_cli(docker: FakeDocker) -> None:
    env = _env(CDK_DOCKER="finch")
    found = check_docker("x86_64", environ=env)
    assert found == [
        Finding(
            "BLOCKER",
            "docker",
            "`finch` not found on PATH; cdk deploy builds the function image with it",
            "install Docker (Engine with the buildx plugin, or Docker Desktop)",
        )
    ]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BUILDX_NO_DEFAULT_ATTESTATIONS"}
    env.update(extra)
    return env
