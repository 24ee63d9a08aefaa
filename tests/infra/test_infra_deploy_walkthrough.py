"""README's "Deploy to AWS" block, run in order on a clean clone, up to the first real AWS call.

The clone is this repository's HEAD (plus uncommitted edits to tracked files) with the shared
.venv and node_modules linked in. What needs AWS or a Docker engine is replaced by stubs first
on PATH that record their arguments and environment:

* ``npx cdk …`` synthesizes the app exactly as the CDK CLI does before bootstrap/deploy/
  destroy (cdk.json's app command, CDK_CONTEXT_JSON with the -c flags) and fails when the app
  fails; then it plays AWS's part: bootstrap writes the CDKToolkit version parameter, deploying
  ResnetServingAccount creates its role and sets API Gateway's account setting, in a local AWS
  API (moto server) that preflight reads through AWS_ENDPOINT_URL;
* ``docker`` answers ``info`` and ``buildx inspect`` like a running engine.

One README line is rewritten, and the test checks it is the only one: ``WEIGHTS=imagenet`` becomes
``WEIGHTS=random`` because pretrained weights cannot be downloaded here (the real exporter runs,
with torch, and writes a real manifest). The block stops at ``make deploy``: the lines after it
call the deployed endpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from moto_server import running_moto_server

ROOT = Path(__file__).resolve().parents[2]
INSTALL_INPUTS = (
    "requirements.txt",
    "requirements-dev.txt",
    "lambda_src/requirements.txt",
    "model_export/requirements.txt",
    "package.json",
    "package-lock.json",
)
LAST_LOCAL_LINE = "make deploy STAGE=dev"
POST_DEPLOY = ("make smoke STAGE=dev", ".venv/bin/python -m classifier_client")

STUB_NPX = r'''#!{python}
"""npx stub: `cdk <command>` synthesizes like the CDK CLI, then plays AWS's part."""
import hashlib, json, os, shlex, subprocess, sys
from pathlib import Path

import boto3

argv = sys.argv[1:]
log = Path(os.environ["STUB_LOG"])
record = {{"tool": "npx", "argv": argv, "cwd": os.getcwd(),
          "BUILDX_NO_DEFAULT_ATTESTATIONS": os.environ.get("BUILDX_NO_DEFAULT_ATTESTATIONS"),
          "model_present": Path("build/model/manifest.json").is_file()}}
if argv[:1] != ["cdk"] or len(argv) < 2:
    print(f"npx stub: unexpected {{argv}}", file=sys.stderr)
    sys.exit(1)
command, rest = argv[1], argv[2:]
context, stacks, i = {{}}, [], 0
while i < len(rest):
    if rest[i] in ("-c", "--context"):
        key, _, value = rest[i + 1].partition("=")
        context[key] = value
        i += 2
    elif rest[i] in ("--outputs-file", "--require-approval"):
        i += 2
    elif rest[i].startswith("-"):
        i += 1
    else:
        stacks.append(rest[i])
        i += 1
cdk_json = json.loads(Path("cdk.json").read_text())
merged = {{**cdk_json["context"], **context}}
key = hashlib.sha256(json.dumps(merged, sort_keys=True).encode()).hexdigest()[:16]
outdir = Path(os.environ["STUB_WORK"]) / f"cdk.out-{{key}}"
if not (outdir / "manifest.json").is_file():
    env = {{**os.environ, "CDK_CONTEXT_JSON": json.dumps(merged), "CDK_OUTDIR": str(outdir)}}
    synth = subprocess.run(shlex.split(cdk_json["app"]), env=env, text=True, capture_output=True)
    if synth.returncode != 0:
        record["synth_error"] = synth.stderr.strip()
        log.open("a").write(json.dumps(record) + "\n")
        sys.stderr.write(synth.stderr)
        sys.exit(synth.returncode)
manifest = json.loads((outdir / "manifest.json").read_text())
record["synthesized"] = sorted(
    name for name, a in manifest["artifacts"].items() if a["type"] == "aws:cloudformation:stack")
record["outdir"] = str(outdir)
record["stacks"] = stacks
log.open("a").write(json.dumps(record) + "\n")

if command == "bootstrap":
    boto3.client("ssm").put_parameter(
        Name="/cdk-bootstrap/hnb659fds/version", Value="30", Type="String", Overwrite=True)
elif command == "deploy" and stacks == ["ResnetServingAccount"]:
    template = json.loads((outdir / "ResnetServingAccount.template.json").read_text())
    role = template["Resources"]["ApiGatewayCloudWatchRole"]["Properties"]
    trust = role["AssumeRolePolicyDocument"]
    role = boto3.client("iam").create_role(
        RoleName="ResnetServingAccount-ApiGatewayCloudWatchRole-STUB",
        AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    boto3.client("apigateway").update_account(
        patchOperations=[{{"op": "replace", "path": "/cloudwatchRoleArn", "value": role}}])
'''

STUB_DOCKER = r'''#!{python}
"""docker stub: a running engine with the default builder; records every call."""
import json, os, sys
from pathlib import Path

argv = sys.argv[1:]
Path(os.environ["STUB_LOG"]).open("a").write(json.dumps({{"tool": "docker", "argv": argv}}) + "\n")
if argv[:1] == ["info"]:
    print(json.dumps({{"ServerVersion": "29.0.1", "Architecture": "x86_64", "Driver": "overlayfs",
                      "DriverStatus": [["driver-type", "io.containerd.snapshotter.v1"]]}}))
elif argv[:2] == ["buildx", "inspect"]:
    print("Name: default\nDriver: docker\nPlatforms: linux/amd64, linux/386")
else:
    print(f"docker stub: unexpected {{argv}}", file=sys.stderr)
    sys.exit(1)
'''

STUB_AWS = r"""#!{python}
import json, os, sys
from pathlib import Path
record = {{"tool": "aws", "argv": sys.argv[1:]}}
Path(os.environ["STUB_LOG"]).open("a").write(json.dumps(record) + "\n")
"""


def readme_deploy_block() -> list[str]:
    """The commands of README's first ```bash block under "## Deploy to AWS", comments dropped."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Deploy to AWS\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, "README's Deploy to AWS section has no ```bash block"
    commands = [re.sub(r"\s+#.*$", "", line).strip() for line in block[1].splitlines()]
    return [command for command in commands if command]


def clean_clone(destination: Path) -> Path:
    """HEAD of this repository, plus the working tree's edits to tracked files."""
    subprocess.run(
        ["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(destination)], check=True
    )
    changed = subprocess.run(
        ["git", "-C", str(ROOT), "diff", "--name-only", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in changed:
        source, target = ROOT / name, destination / name
        if source.is_file():
            shutil.copy2(source, target)
        else:
            target.unlink(missing_ok=True)
    for shared in (".venv", "node_modules"):
        (destination / shared).symlink_to((ROOT / shared).resolve(), target_is_directory=True)
    # A fresh clone's files are newer than the shared installs' markers; date the inputs of
    # `make install` back so make sees what is true: everything is installed already.
    for name in INSTALL_INPUTS:
        os.utime(destination / name, (978307200, 978307200))  # 2001-01-01
    return destination


def write_stub(directory: Path, name: str, source: str) -> None:
    path = directory / name
    path.write_text(source.format(python=sys.executable), encoding="utf-8")
    path.chmod(0o755)


@pytest.fixture
def local_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with running_moto_server() as endpoint:
        yield endpoint


def records(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


def test_readme_block_names_the_steps_in_deploy_order() -> None:
    commands = readme_deploy_block()
    order = [
        "make install",
        "make bootstrap",
        "make model WEIGHTS=imagenet",
        "make preflight STAGE=dev",
        LAST_LOCAL_LINE,
    ]
    assert [c for c in commands if c in order] == order
    assert commands.index(LAST_LOCAL_LINE) == len(commands) - len(POST_DEPLOY) - 1
    for command, expected in zip(commands[-len(POST_DEPLOY) :], POST_DEPLOY, strict=True):
        assert command.startswith(expected)


def make_dry_run(*targets: str) -> list[str]:
    """The commands make would run (-n), with a model dir that does not exist."""
    result = subprocess.run(
        ["make", "-n", "--no-print-directory", *targets, "MODEL_DIR=/nonexistent/model"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # Whitespace folded: empty optional variables (ALARM_CONTEXT, CDK_DEPLOY_FLAGS) leave gaps.
    return [
        " ".join(line.split())
        for line in result.stdout.splitlines()
        if not line.startswith(("touch", "#"))
    ]


def test_make_destroy_needs_no_model() -> None:
    commands = make_dry_run("destroy", "STAGE=dev")
    assert "npx cdk destroy -c stage=dev -c without_model=true" in commands
    assert not [c for c in commands if "model_export" in c or "make model" in c]


def test_make_deploy_runs_preflight_first_and_exports_no_model_on_its_own() -> None:
    commands = make_dry_run("deploy", "STAGE=prod")
    preflight = commands.index(
        ".venv/bin/python -m preflight --stage prod --model-dir /nonexistent/model"
    )
    deploy = commands.index(
        "npx cdk deploy -c stage=prod -c model_dir=/nonexistent/model "
        "--outputs-file cdk-outputs-prod.json"
    )
    assert preflight < deploy
    assert not [c for c in commands if "model_export" in c]


@pytest.mark.slow
def test_readme_deploy_block_runs_in_order_from_a_clean_clone(
    tmp_path: Path, local_aws: str
) -> None:
    if (
        not (ROOT / ".venv" / ".installed").is_file()
        or not (ROOT / "node_modules" / ".installed").is_file()
    ):
        pytest.skip("needs the installed .venv and node_modules (make install)")
    clone = clean_clone(tmp_path / "clone")
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, source in (("npx", STUB_NPX), ("docker", STUB_DOCKER), ("aws", STUB_AWS)):
        write_stub(stubs, name, source)
    log = tmp_path / "calls.jsonl"
    log.touch()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "BUILDX_", "CDK_", "MAKE", "MFLAGS", "JSII_"))
    }
    env.update(
        PATH=f"{stubs}{os.pathsep}{env['PATH']}",
        STUB_LOG=str(log),
        STUB_WORK=str(tmp_path),
        AWS_ENDPOINT_URL=local_aws,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION="eu-west-1",
        AWS_DEFAULT_REGION="eu-west-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    installed = ["make", "-q", ".venv/.installed", "node_modules/.installed"]
    assert subprocess.run(installed, cwd=clone, env=env, check=False).returncode == 0, (
        "make would reinstall the shared .venv/node_modules: refusing to run the block"
    )

    commands = readme_deploy_block()
    local = commands[: commands.index(LAST_LOCAL_LINE) + 1]
    outputs: dict[str, str] = {}
    for command in local:
        run = command.replace("WEIGHTS=imagenet", "WEIGHTS=random")
        result = subprocess.run(
            ["bash", "-c", run],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert result.returncode == 0, f"`{command}` failed:\n{result.stdout}\n{result.stderr}"
        outputs[command] = result.stdout
    assert [c for c in local if "WEIGHTS=imagenet" in c] == ["make model WEIGHTS=imagenet"]

    # make install found everything in place and touched nothing shared.
    assert "Nothing to be done for 'install'" in outputs["make install"]

    calls = records(log)
    cdk = [c for c in calls if c["tool"] == "npx"]
    assert [c["argv"][:3] for c in cdk] == [
        ["cdk", "bootstrap", "-c"],
        ["cdk", "deploy", "ResnetServingAccount"],
        ["cdk", "deploy", "-c"],
    ]
    bootstrap, account, deploy = cdk
    # Bootstrap from a clean clone: no model yet, the whole app synthesized without one.
    assert bootstrap["argv"] == ["cdk", "bootstrap", "-c", "without_model=true"]
    assert bootstrap["model_present"] is False
    assert bootstrap["synthesized"] == [
        "ResnetServingAccount",
        "ResnetServingDev",
        "ResnetServingProd",
    ]
    assert account["argv"][3:] == ["-c", "without_model=true", "--require-approval", "never"]
    # The deploy: one stage, the exported model, attestations off for the image build.
    assert deploy["argv"] == [
        "cdk",
        "deploy",
        "-c",
        "stage=dev",
        "-c",
        "model_dir=build/model",
        "--outputs-file",
        "cdk-outputs-dev.json",
    ]
    assert deploy["BUILDX_NO_DEFAULT_ATTESTATIONS"] == "1"
    assert deploy["synthesized"] == ["ResnetServingDev"]
    manifest = json.loads((clone / "build" / "model" / "manifest.json").read_text("utf-8"))
    template = json.loads(
        (Path(deploy["outdir"]) / "ResnetServingDev.template.json").read_text("utf-8")
    )
    variables = template["Resources"]["PredictFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["MODEL_SHA256"] == manifest["sha256"]
    assert "NeverDeployWithoutModel" not in template.get("Rules", {})

    # Preflight ran on its own and again inside make deploy, both times without a blocker,
    # against the account bootstrap left behind.
    for command in ("make preflight STAGE=dev", LAST_LOCAL_LINE):
        lines = outputs[command].splitlines()
        assert any(line.startswith("preflight: 0 blockers") for line in lines), outputs[command]
        assert any(line.startswith("OK       bootstrap    CDKToolkit version 30") for line in lines)
        assert any(line.startswith("OK       api-logging") for line in lines)
    docker_infos = [c for c in calls if c["tool"] == "docker" and c["argv"][:1] == ["info"]]
    assert len(docker_infos) == 2
    first_docker = next(i for i, c in enumerate(calls) if c["tool"] == "docker")
    assert calls.index(account) < first_docker < calls.index(deploy)
