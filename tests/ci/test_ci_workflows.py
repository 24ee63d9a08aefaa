"""The GitHub Actions workflows, read as data: pinning, permissions, order, guards, shell.

GitHub Actions cannot run here; these tests hold the workflows to what docs/ci-cd.md promises,
and make sure the offline linters that `make lint` runs would catch the classic mistakes.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
BIN = Path(sys.executable).parent
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>\S+)(?P<comment>.*)$")
VERSION_COMMENT = re.compile(r"^\s+# v\d+\.\d+\.\d+$")
AWS_CREDENTIALS = "aws-actions/configure-aws-credentials@"


def load(name: str) -> dict[str, Any]:
    workflow: dict[str, Any] = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    # YAML 1.1 reads the bare key `on` as the boolean True.
    if True in workflow:
        workflow["on"] = workflow.pop(True)
    return workflow


@pytest.fixture(scope="module")
def pr() -> dict[str, Any]:
    return load("pr.yml")


@pytest.fixture(scope="module")
def deploy() -> dict[str, Any]:
    return load("deploy.yml")


def all_workflows() -> list[Path]:
    found = sorted(WORKFLOWS.glob("*.yml")) + sorted(WORKFLOWS.glob("*.yaml"))
    assert {path.name for path in found} >= {"pr.yml", "deploy.yml"}
    return found


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps", []))


def runs(job: dict[str, Any]) -> list[str]:
    return [str(step["run"]) for step in steps(job) if "run" in step]


def index_of(job: dict[str, Any], command: str) -> int:
    """Position of the first step whose `run:` contains ``command``."""
    for position, step in enumerate(steps(job)):
        if command in str(step.get("run", "")):
            return position
    raise AssertionError(f"no step runs {command!r}")


def assumes_a_role(job: dict[str, Any]) -> bool:
    return any(str(step.get("uses", "")).startswith(AWS_CREDENTIALS) for step in steps(job))


# --- pinning ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", all_workflows(), ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_full_sha_with_its_version(path: Path) -> None:
    lines = [m for line in path.read_text().splitlines() if (m := USES_LINE.match(line))]
    assert lines
    for match in lines:
        assert PINNED.match(match["ref"]), f"{path.name}: {match['ref']} is not pinned by SHA"
        assert VERSION_COMMENT.match(match["comment"]), f"{match['ref']}: add `# vX.Y.Z`"


def test_each_action_uses_one_sha_everywhere() -> None:
    seen: dict[str, set[str]] = {}
    for path in all_workflows():
        for line in path.read_text().splitlines():
            if match := USES_LINE.match(line):
                action, sha = match["ref"].split("@")
                seen.setdefault(action, set()).add(f"{sha}{match['comment']}")
    assert {action: pins for action, pins in seen.items() if len(pins) > 1} == {}


def test_pin_check_rejects_tags_and_short_shas() -> None:
    for ref in ("actions/checkout@v5", "actions/checkout@08c6903", "actions/checkout@main"):
        assert not PINNED.match(ref)
    assert PINNED.match("actions/checkout@08c6903cd8c0fde910a37f88322edcfb5dd907a8")


# --- permissions and triggers -----------------------------------------------------------


@pytest.mark.parametrize("name", ["pr.yml", "deploy.yml"])
def test_top_level_permissions_are_read_only(name: str) -> None:
    assert load(name)["permissions"] == {"contents": "read"}


@pytest.mark.parametrize("name", ["pr.yml", "deploy.yml"])
def test_only_role_assuming_jobs_get_an_oidc_token(name: str) -> None:
    for job_id, job in load(name)["jobs"].items():
        permissions = job.get("permissions", {})
        assert ("id-token" in permissions) == assumes_a_role(job), job_id
        if assumes_a_role(job):
            assert permissions["id-token"] == "write"


@pytest.mark.parametrize("name", ["pr.yml", "deploy.yml"])
def test_no_job_writes_anything_but_the_diff_comment(name: str) -> None:
    writes = {
        (job_id, scope)
        for job_id, job in load(name)["jobs"].items()
        for scope, level in job.get("permissions", {}).items()
        if level == "write" and scope != "id-token"
    }
    assert writes == ({("diff", "pull-requests")} if name == "pr.yml" else set())


def test_no_workflow_uses_pull_request_target() -> None:
    for path in all_workflows():
        assert "pull_request_target" not in load(path.name)["on"], path.name
        assert "pull_request_target" not in path.read_text(), path.name


def test_pr_workflow_runs_on_pull_requests_into_main(pr: dict[str, Any]) -> None:
    assert pr["on"] == {"pull_request": {"branches": ["main"]}}


def test_deploy_workflow_runs_on_pushes_to_main(deploy: dict[str, Any]) -> None:
    assert deploy["on"]["push"] == {"branches": ["main"]}


@pytest.mark.parametrize("name", ["pr.yml", "deploy.yml"])
def test_every_job_has_a_timeout(name: str) -> None:
    for job_id, job in load(name)["jobs"].items():
        assert 0 < int(job["timeout-minutes"]) <= 60, job_id


@pytest.mark.parametrize("name", ["pr.yml", "deploy.yml"])
def test_run_steps_use_bash_with_pipefail(name: str) -> None:
    assert load(name)["defaults"] == {"run": {"shell": "bash"}}


# --- injection and secrets ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["pr.yml", "deploy.yml"])
def test_no_expression_is_interpolated_into_a_run_script(name: str) -> None:
    # Untrusted values reach scripts through `env:` only (zizmor: template-injection).
    for job_id, job in load(name)["jobs"].items():
        for script in runs(job):
            assert "${{" not in script, f"{job_id}: {script[:60]}"


@pytest.mark.parametrize("name", ["pr.yml", "deploy.yml"])
def test_no_secrets_are_used(name: str) -> None:
    # OIDC replaces stored AWS keys; the comment uses the job's own token.
    assert "secrets." not in (WORKFLOWS / name).read_text()


@pytest.mark.parametrize("name", ["pr.yml", "deploy.yml"])
def test_checkouts_do_not_persist_the_token(name: str) -> None:
    for job in load(name)["jobs"].values():
        for step in steps(job):
            if str(step.get("uses", "")).startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False


# --- the pull-request workflow ----------------------------------------------------------


def test_pr_checks_run_lint_synth_nag_templates_and_tests(pr: dict[str, Any]) -> None:
    checks = pr["jobs"]["checks"]
    order = [
        index_of(checks, "make install"),
        index_of(checks, "make lint"),
        index_of(checks, "make synth"),
        index_of(checks, "NagReport.csv"),
        index_of(checks, "python -m stacks.snapshot --check"),
        index_of(checks, "make test"),
    ]
    assert order == sorted(order)


def test_make_synth_runs_cdk_nag_and_cfn_lint() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = makefile.split("\nsynth:", 1)[1].split("\n\n", 1)[0]
    assert "npx cdk synth" in recipe
    assert "cfn-lint cdk.out/*.template.json" in recipe
    # cdk-nag runs as an aspect of every synth of the app.
    assert "AwsSolutionsChecks" in (ROOT / "stacks" / "app_builder.py").read_text()


def test_make_lint_checks_the_workflows_offline() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "zizmor --offline .github/workflows" in recipe
    assert "check-jsonschema --builtin-schema vendor.github-workflows" in recipe


def test_pr_diff_is_skipped_for_forks_and_without_a_role(pr: dict[str, Any]) -> None:
    diff = pr["jobs"]["diff"]
    gate = steps(diff)[0]
    assert gate["id"] == "gate"
    assert gate["env"]["HEAD_REPO"] == "${{ github.event.pull_request.head.repo.full_name }}"
    assert gate["env"]["THIS_REPO"] == "${{ github.repository }}"
    assert gate["env"]["ROLE_ARN"] == "${{ vars.AWS_DIFF_ROLE_ARN }}"
    assert '[ "$HEAD_REPO" != "$THIS_REPO" ]' in gate["run"]
    assert '[ -z "$ROLE_ARN" ]' in gate["run"]
    # The skip is a notice and a green job, not a failure; every later step waits for the gate.
    assert "exit 1" not in gate["run"]
    assert "::notice" in gate["run"]
    for step in steps(diff)[1:]:
        assert step["if"] == "steps.gate.outputs.enabled == 'true'", step


def test_pr_diff_uses_the_lookup_role_and_updates_one_comment(pr: dict[str, Any]) -> None:
    diff = pr["jobs"]["diff"]
    credentials = next(s for s in steps(diff) if s.get("uses", "").startswith(AWS_CREDENTIALS))
    assert credentials["with"]["role-to-assume"] == "${{ vars.AWS_DIFF_ROLE_ARN }}"
    assert index_of(diff, "make diff") > steps(diff).index(credentials)
    script = steps(diff)[index_of(diff, "make diff")]["run"]
    assert "--method=template" in script  # the lookup role; a change set needs the deploy role
    assert "for stage in dev prod" in script
    post = steps(diff)[-1]
    assert "--method PATCH" in post["run"]
    assert "--method POST" in post["run"]
    assert post["env"]["MARKER"] == "<!-- resnet-serving:cdk-diff -->"


# --- the deploy workflow ------------------------------------------------------------------


def test_deploys_never_overlap_and_are_never_cancelled(deploy: dict[str, Any]) -> None:
    assert deploy["concurrency"]["cancel-in-progress"] is False
    assert deploy["concurrency"]["group"]


def test_deploy_order_is_dev_smoke_then_approved_prod_smoke(deploy: dict[str, Any]) -> None:
    jobs = deploy["jobs"]
    dev, prod = jobs["dev"], jobs["prod"]
    assert dev["environment"] == "dev"
    assert prod["environment"] == "prod"  # required reviewers live on this environment
    assert prod["needs"] == "dev"
    assert dev["needs"] == "model"
    assert index_of(dev, "make deploy STAGE=dev") < index_of(dev, "make smoke STAGE=dev")
    assert index_of(prod, "make deploy STAGE=prod") < index_of(prod, "make smoke STAGE=prod")
    assert not any("prod" in script for script in runs(dev))


def test_both_stages_deploy_the_one_exported_model(deploy: dict[str, Any]) -> None:
    model = deploy["jobs"]["model"]
    assert "make model WEIGHTS=imagenet" in runs(model)
    upload = next(s for s in steps(model) if s.get("uses", "").startswith("actions/upload-"))
    assert upload["with"]["name"] == "model"
    for stage in ("dev", "prod"):
        job = deploy["jobs"][stage]
        download = next(s for s in steps(job) if s.get("uses", "").startswith("actions/download-"))
        assert download["with"] == {"name": "model", "path": "build/model"}
        assert steps(job).index(download) < index_of(job, "make deploy")


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_deploy_is_unattended_and_pushes_a_docker_v2_manifest(
    deploy: dict[str, Any], stage: str
) -> None:
    job = deploy["jobs"][stage]
    step = steps(job)[index_of(job, "make deploy")]
    assert "CDK_DEPLOY_FLAGS=--require-approval=never" in step["run"]
    assert step["env"]["BUILDX_NO_DEFAULT_ATTESTATIONS"] == "1"
    credentials = next(s for s in steps(job) if s.get("uses", "").startswith(AWS_CREDENTIALS))
    assert credentials["with"]["role-to-assume"] == "${{ vars.AWS_DEPLOY_ROLE_ARN }}"


def test_make_deploy_passes_the_ci_flags_through() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    deploy = makefile.split("\ndeploy:", 1)[1].split("\n\n", 1)[0]
    diff = makefile.split("\ndiff:", 1)[1].split("\n\n", 1)[0]
    assert "npx cdk deploy" in deploy
    assert "$(CDK_DEPLOY_FLAGS)" in deploy
    assert "npx cdk diff" in diff
    assert "$(CDK_DIFF_FLAGS)" in diff


def test_deploy_is_skipped_cleanly_without_a_deploy_role(deploy: dict[str, Any]) -> None:
    config = deploy["jobs"]["config"]
    assert config["steps"][0]["env"]["ROLE_ARN"] == "${{ vars.AWS_DEPLOY_ROLE_ARN }}"
    assert "exit 1" not in config["steps"][0]["run"]
    assert deploy["jobs"]["model"]["if"] == "needs.config.outputs.enabled == 'true'"


# --- shell and the linters ----------------------------------------------------------------


def run_scripts() -> list[tuple[str, str]]:
    return [
        (f"{path.name}:{job_id}:{position}", str(step["run"]))
        for path in all_workflows()
        for job_id, job in load(path.name)["jobs"].items()
        for position, step in enumerate(steps(job))
        if "run" in step
    ]


def shellcheck(script: str) -> subprocess.CompletedProcess[str]:
    # What GitHub runs for `shell: bash`: bash --noprofile --norc -eo pipefail {0}.
    return subprocess.run(
        [str(BIN / "shellcheck"), "--shell=bash", "--severity=style", "-"],
        input=f"#!/usr/bin/env bash\nset -eo pipefail\n{script}",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(("where", "script"), run_scripts(), ids=[w for w, _ in run_scripts()])
def test_run_steps_pass_shellcheck(where: str, script: str) -> None:
    result = shellcheck(script)
    assert result.returncode == 0, result.stdout


def test_shellcheck_harness_catches_an_unquoted_variable() -> None:
    assert shellcheck("rm -rf $TARGET/*\n").returncode != 0


def test_zizmor_flags_template_injection_and_unpinned_actions(tmp_path: Path) -> None:
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "bad.yml").write_text(
        "on: pull_request\npermissions:\n  contents: read\njobs:\n  a:\n"
        "    runs-on: ubuntu-24.04\n    steps:\n"
        "      - uses: actions/checkout@v5\n        with:\n          persist-credentials: false\n"
        '      - run: echo "${{ github.event.pull_request.title }}"\n',
        encoding="utf-8",
    )
    result = subprocess.run(
        [str(BIN / "zizmor"), "--offline", "--persona=pedantic", str(workflows)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "template-injection" in result.stdout
    assert "unpinned-uses" in result.stdout


def test_workflow_schema_check_works_offline_and_rejects_a_bad_workflow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    steps:\n      - run: true\n", encoding="utf-8")
    command = [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows"]
    result = subprocess.run(
        [*command, str(bad)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode != 0
    assert "runs-on" in result.stdout + result.stderr
    good = subprocess.run(
        [*command, *map(str, all_workflows())],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert good.returncode == 0, good.stdout + good.stderr


def test_dependabot_keeps_the_pinned_actions_current() -> None:
    config = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text(encoding="utf-8"))
    assert {u["package-ecosystem"] for u in config["updates"]} == {"github-actions"}
    result = subprocess.run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.dependabot",
            str(ROOT / ".github" / "dependabot.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
