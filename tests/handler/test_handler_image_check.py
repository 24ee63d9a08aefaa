"""The Lambda image is buildable, proved statically (no Docker engine here)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from scripts import image_check

LAMBDA_SRC = image_check.LAMBDA_SRC


def test_dockerfile_uses_lambda_python312_base_and_handler_cmd():
    instructions = image_check.parse_dockerfile()
    assert instructions[0].keyword == "FROM"
    assert instructions[0].args == "public.ecr.aws/lambda/python:3.12"
    assert image_check.cmd_target(instructions) == ("handler", "handler")


def test_every_copy_source_exists_and_survives_dockerignore():
    assert image_check.check_copy_sources() == []


def test_every_runtime_module_is_copied_and_nothing_else():
    sources = set(image_check.copy_sources(image_check.parse_dockerfile()))
    modules = {p.name for p in LAMBDA_SRC.glob("*.py")}
    assert modules <= sources, f"not copied into the image: {sorted(modules - sources)}"
    assert sources - modules == {"requirements.txt"}


def test_cmd_imports_from_the_copied_files_only():
    assert image_check.check_cmd_importable() == []


def test_hadolint_is_clean():
    assert image_check.check_hadolint() == []


@pytest.fixture
def context(tmp_path: Path) -> Path:
    """A copy of the build context that a test can break."""
    ctx = tmp_path / "ctx"
    shutil.copytree(LAMBDA_SRC, ctx, ignore=shutil.ignore_patterns("__pycache__"))
    return ctx


def test_missing_copy_source_is_reported(context: Path):
    (context / "preprocess.py").unlink()
    assert image_check.check_copy_sources(context) == [
        f"COPY source preprocess.py does not exist in {context}"
    ]


def test_copy_source_excluded_by_dockerignore_is_reported(context: Path):
    ignore = context / ".dockerignore"
    ignore.write_text(ignore.read_text().replace("!api.py\n", ""))
    assert image_check.check_copy_sources(context) == [
        "COPY source api.py is excluded by .dockerignore"
    ]


def test_module_left_out_of_copy_makes_cmd_unimportable(context: Path):
    dockerfile = context / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace(" preprocess.py", ""))
    problems = image_check.check_cmd_importable(context)
    assert len(problems) == 1
    assert "No module named 'preprocess'" in problems[0]


def test_cmd_naming_a_missing_function_is_reported(context: Path):
    dockerfile = context / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace('"handler.handler"', '"handler.main"'))
    problems = image_check.check_cmd_importable(context)
    assert len(problems) == 1
    assert "handler.main" in problems[0]


def test_hadolint_findings_are_reported(tmp_path: Path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM python:latest\nRUN cd /tmp && pip install numpy\n")
    problems = image_check.check_hadolint(dockerfile)
    assert any("DL3007" in p for p in problems)  # :latest
    assert any("DL3003" in p for p in problems)  # cd instead of WORKDIR


def test_dockerignore_semantics():
    patterns = ["*", "!handler.py", "!*.txt", "requirements-dev.txt"]
    assert image_check.dockerignore_excludes("handler.py", patterns) is False
    assert image_check.dockerignore_excludes("requirements.txt", patterns) is False
    assert image_check.dockerignore_excludes("requirements-dev.txt", patterns) is True
    assert image_check.dockerignore_excludes("tests/x.py", patterns) is True


def test_pip_download_targets_cp312_manylinux_2_28_for_both_architectures(tmp_path: Path):
    command = image_check.pip_download_command("aarch64", tmp_path)
    assert "--only-binary=:all:" in command
    assert command[command.index("--python-version") + 1] == "3.12"
    platforms = [command[i + 1] for i, word in enumerate(command) if word == "--platform"]
    assert "manylinux_2_28_aarch64" in platforms
    assert all(p.endswith("_aarch64") for p in platforms)
    assert image_check.ARCHITECTURES == ("x86_64", "aarch64")


@pytest.mark.slow
@pytest.mark.parametrize("arch", image_check.ARCHITECTURES)
def test_every_pinned_requirement_has_a_cp312_wheel(arch):
    assert image_check.check_wheels(arch) == []


@pytest.mark.slow
def test_a_pin_without_wheels_for_the_platform_fails(tmp_path: Path):
    # torch publishes no manylinux cp312 wheel for this old version; the resolver must fail.
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("torch==1.13.1\n")
    problems = image_check.check_wheels("aarch64", requirements)
    assert problems
    assert all(p.startswith("aarch64: ") for p in problems)


def test_command_override_handlers_import_from_the_copied_files():
    assert image_check.COMMAND_OVERRIDES == ("batch.handler",)
    for target in image_check.COMMAND_OVERRIDES:
        assert image_check.check_cmd_importable(handler=target) == []


def test_batch_module_left_out_of_copy_breaks_the_batch_override(context: Path):
    dockerfile = context / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace(" batch.py", ""))
    problems = image_check.check_cmd_importable(context, handler="batch.handler")
    assert len(problems) == 1
    assert "command override batch.handler" in problems[0]
    assert "No module named 'batch'" in problems[0]
    # The image's own CMD is unaffected.
    assert image_check.check_cmd_importable(context) == []
