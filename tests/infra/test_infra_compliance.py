"""Security and review guarantees: cdk-nag, cfn-lint, least privilege, determinism, snapshots."""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Annotations, Match
from infra_helpers import EXPECTED, FakeModel, Synthesized, resources_of, synthesize_all

from stacks import snapshot

ROOT = Path(__file__).resolve().parents[2]
# Actions AWS defines without resource-level permissions; "*" is the only valid Resource.
ACTIONS_WITHOUT_RESOURCES = {
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    # A state machine's X-Ray sampling and its CloudWatch Logs vended-log delivery (Step
    # Functions' documented logging policy; docs/batch.md).
    "xray:GetSamplingRules",
    "xray:GetSamplingTargets",
    "logs:CreateLogDelivery",
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",
}
DATA_SERVICES = ("s3:", "dynamodb:", "kms:", "secretsmanager:", "ssm:", "sqs:", "sns:")


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def wildcard_findings(statement: dict[str, Any]) -> list[str]:
    """Why an Allow statement grants wildcard access (empty when it does not)."""
    if statement.get("Effect") != "Allow":
        return []
    actions = [str(a) for a in _list(statement.get("Action", []))]
    resources = _list(statement.get("Resource", []))
    findings = [f"action {a}" for a in actions if a == "*" or a.endswith(":*")]
    if "*" in resources and not set(actions) <= ACTIONS_WITHOUT_RESOURCES:
        findings.append(f"Resource '*' for {actions}")
    data_actions = [a for a in actions if a.startswith(DATA_SERVICES)]
    if data_actions and any(
        isinstance(r, str) and r.endswith(":*") and r.count(":") <= 2 for r in resources
    ):
        findings.append(f"account-wide resource for {data_actions}")
    return findings


def iam_statements(raw: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for logical_id, resource in raw["Resources"].items():
        if resource["Type"] == "AWS::IAM::Policy":
            documents = [resource["Properties"]["PolicyDocument"]]
        elif resource["Type"] == "AWS::IAM::Role":
            documents = [p["PolicyDocument"] for p in resource["Properties"].get("Policies", [])]
        else:
            continue
        found += [(logical_id, s) for document in documents for s in document["Statement"]]
    return found


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ({"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::b/k"}, ["action s3:*"]),
        (
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"},
            ["Resource '*' for ['s3:GetObject']"],
        ),
        (
            {"Effect": "Allow", "Action": "*", "Resource": "*"},
            ["action *", "Resource '*' for ['*']"],
        ),
        ({"Effect": "Allow", "Action": "xray:PutTraceSegments", "Resource": "*"}, []),
        ({"Effect": "Deny", "Action": "s3:*", "Resource": "*"}, []),
        ({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/m.onnx"}, []),
    ],
)
def test_wildcard_check_flags_what_it_should(
    statement: dict[str, Any], expected: list[str]
) -> None:
    assert wildcard_findings(statement) == expected


def test_no_iam_statement_grants_wildcard_data_access(raw: dict[str, Any]) -> None:
    offenders = {
        f"{logical_id}: {finding}"
        for logical_id, statement in iam_statements(raw)
        for finding in wildcard_findings(statement)
    }
    assert not offenders


def test_only_aws_managed_policies_are_the_documented_service_ones(raw: dict[str, Any]) -> None:
    managed = {
        name
        for role in resources_of(raw, "AWS::IAM::Role").values()
        for arn in role["Properties"].get("ManagedPolicyArns", [])
        for name in re.findall(r"policy/(?:service-role/)?([A-Za-z0-9]+)", json.dumps(arn))
    }
    allowed = {
        "AWSLambdaBasicExecutionRole",  # CDK's BucketDeployment provider
        "AmazonAPIGatewayPushToCloudWatchLogs",
        "AWSCodeDeployRoleForLambdaLimited",
    }
    assert managed <= allowed


def test_cdk_nag_reports_no_unsuppressed_errors(synthesized: Synthesized, stage: str) -> None:
    stack = synthesized.stacks[stage]
    errors = Annotations.from_stack(stack).find_error(
        "*", Match.string_like_regexp("AwsSolutions-.*")
    )
    assert errors == []
    warnings = Annotations.from_stack(stack).find_warning(
        "*", Match.string_like_regexp("AwsSolutions-.*")
    )
    assert warnings == []


def test_cdk_nag_ran_on_every_stack(synthesized: Synthesized, stage: str) -> None:
    stack_id = EXPECTED[stage]["stack_id"]
    report = synthesized.outdir / f"AwsSolutions--{stack_id}-NagReport.csv"
    rows = list(csv.DictReader(report.read_text(encoding="utf-8").splitlines()))
    assert len(rows) > 50
    assert {row["Compliance"] for row in rows} <= {"Compliant", "Suppressed", "N/A"}
    assert any(row["Rule ID"] == "AwsSolutions-S10" for row in rows)


def test_every_nag_suppression_names_rule_and_reason(raw: dict[str, Any]) -> None:
    suppressions = [
        (logical_id, rule)
        for logical_id, resource in raw["Resources"].items()
        for rule in resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", [])
    ]
    assert suppressions
    for logical_id, rule in suppressions:
        assert rule["id"].startswith("AwsSolutions-"), logical_id
        assert len(rule["reason"]) >= 40, f"{logical_id} {rule['id']}: say why"


def test_every_suppressed_rule_is_documented(raw: dict[str, Any]) -> None:
    doc = (ROOT / "docs" / "infrastructure.md").read_text(encoding="utf-8")
    rules = {
        rule["id"]
        for resource in raw["Resources"].values()
        for rule in resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", [])
    }
    assert {rule for rule in rules if f"`{rule}`" not in doc} == set()


def cfn_lint(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    # cwd=ROOT picks up .cfnlintrc.yaml, exactly like `make synth`.
    return subprocess.run(
        [str(Path(sys.executable).with_name("cfn-lint")), *map(str, paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_synthesized_templates_pass_cfn_lint(synthesized: Synthesized) -> None:
    result = cfn_lint(sorted(synthesized.outdir.glob("*.template.json")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_cfn_lint_harness_catches_a_broken_template(tmp_path: Path) -> None:
    broken = tmp_path / "Broken.template.json"
    broken.write_text(
        json.dumps({"Resources": {"Fn": {"Type": "AWS::Lambda::Function", "Properties": {}}}}),
        encoding="utf-8",
    )
    result = cfn_lint([broken])
    assert result.returncode != 0
    assert "E3003" in result.stdout  # required property missing


def test_committed_templates_pass_cfn_lint() -> None:
    result = cfn_lint(sorted((ROOT / "templates").glob("*.template.json")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_two_synths_of_the_same_inputs_are_byte_identical(
    tmp_path: Path, fake_model: FakeModel
) -> None:
    # Back to back (not against the session synth): lambda_src/ may be edited meanwhile.
    first_run = synthesize_all(tmp_path / "first", fake_model.directory)
    second_run = synthesize_all(tmp_path / "second", fake_model.directory)
    for stage in ("dev", "prod"):
        stack_id = EXPECTED[stage]["stack_id"]
        first = (first_run.outdir / f"{stack_id}.template.json").read_text(encoding="utf-8")
        second = (second_run.outdir / f"{stack_id}.template.json").read_text(encoding="utf-8")
        diff = list(difflib.unified_diff(first.splitlines(), second.splitlines(), n=0))
        assert first == second, f"{stack_id}:\n" + "\n".join(diff[:20])


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return snapshot.render(tmp_path_factory.mktemp("snapshot"))


def test_committed_templates_are_up_to_date(rendered: dict[str, str]) -> None:
    stale = snapshot.stale(rendered)
    assert not stale, f"templates/ out of date for {stale}: run `make templates`"


def test_committed_templates_carry_no_asset_hashes(rendered: dict[str, str]) -> None:
    prod = rendered["ResnetServingProd"]
    assert ":<ASSET_HASH>" in prod
    assert '"PredictFunctionCurrentVersion"' in prod
    # The only 64-hex strings left are the documented placeholder model digest and the digest
    # of the rollout hook's reference photograph (content, not an asset hash).
    digests = set(re.findall(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])", prod))
    reference = hashlib.sha256((ROOT / "rollout_hook" / "reference.jpg").read_bytes()).hexdigest()
    assert digests == {snapshot.PLACEHOLDER_SHA256, reference}


def test_committed_templates_show_the_routes_the_local_emulator_reads(
    rendered: dict[str, str],
) -> None:
    for stage in ("dev", "prod"):
        template = json.loads(rendered[EXPECTED[stage]["stack_id"]])
        api = next(
            r for r in template["Resources"].values() if r["Type"] == "AWS::ApiGateway::RestApi"
        )
        assert api["Properties"]["BinaryMediaTypes"] == ["image/jpeg", "image/png", "image/webp"]
        routes = {
            r["Properties"]["HttpMethod"]
            for r in template["Resources"].values()
            if r["Type"] == "AWS::ApiGateway::Method" and r["Properties"]["ApiKeyRequired"]
        }
        assert routes == {"GET", "POST"}


def test_snapshot_check_fails_with_make_templates_hint_when_stale(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, rendered: dict[str, str], capsys: Any
) -> None:
    for stack_id, text in rendered.items():
        (tmp_path / f"{stack_id}.template.json").write_text(text, encoding="utf-8")
    (tmp_path / "ResnetServingDev.template.json").write_text("{}\n", encoding="utf-8")
    monkeypatch.setattr(snapshot, "TEMPLATES_DIR", tmp_path)
    monkeypatch.setattr(snapshot, "ROOT", tmp_path.parent)
    monkeypatch.setattr(snapshot, "render", lambda outdir=None: rendered)
    assert snapshot.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "ResnetServingDev.template.json is stale: run `make templates`" in err
    assert "Prod" not in err


def test_templates_are_environment_agnostic(synthesized: Synthesized, stage: str) -> None:
    # No account id or region baked in: synth used no credentials and no lookups, and the
    # same template deploys to whichever account/region the deployer's profile targets.
    text = json.dumps(synthesized.raw[stage])
    # Hashes (model and asset digests, the version's logical-id suffix) may hold 12 digits
    # in a row by chance.
    text = re.sub(r"[0-9A-Fa-f]{32,}", "<hash>", text)
    assert re.findall(r"(?<!\d)\d{12}(?!\d)", text) == []
    assert re.findall(r"\b(?:us|eu|ap|sa|ca|me|af|il|mx)-[a-z]+-\d\b", text) == []
    assert '{"Ref": "AWS::AccountId"}' in text
    assert '{"Ref": "AWS::Region"}' in text
