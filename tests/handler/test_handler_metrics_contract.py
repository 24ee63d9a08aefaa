"""The dashboard and alarms read only metrics the real handler emits.

CloudWatch matches a metric by namespace, name and the exact set of dimensions: a widget that
asks for one dimension fewer than the EMF carries stays empty forever, with no error anywhere.
So each stage's committed template (kept equal to the code by the infra staleness test) is
walked for every metric in the function's namespace, the real handler runs as one fresh
execution environment with that stage's POWERTOOLS_* environment (a cold /predict, a warm
/predict, a refused request), and every metric read must be among those it printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from handler_testkit import AWS_ENV, PublishedModel

from model_export.photos import photographs

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = {
    "dev": ROOT / "templates" / "ResnetServingDev.template.json",
    "prod": ROOT / "templates" / "ResnetServingProd.template.json",
}
PROBE = Path(__file__).resolve().parent / "emf_probe.py"
# What Lambda would put in context.function_name: the function's physical name.
FUNCTION_NAME = "ResnetServing-PredictFunction-Probe1234"

Metric = tuple[str, str, frozenset[tuple[str, str]]]  # namespace, name, dimensions


def predict_function(template: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    (found,) = [
        (logical_id, resource["Properties"])
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Lambda::Function"
        and "POWERTOOLS_METRICS_NAMESPACE"
        in resource["Properties"].get("Environment", {}).get("Variables", {})
        # The batch function emits in the same namespace; this contract is the endpoint's.
        and resource["Properties"].get("ImageConfig", {}).get("Command") is None
    ]
    return found


UNRESOLVED = "<unresolved>"


class Resolver:
    """Template values -> what the running function sees; it knows only its own name."""

    def __init__(self, function_logical_id: str) -> None:
        self.known = {json.dumps({"Ref": function_logical_id}): FUNCTION_NAME}

    def __call__(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        key = json.dumps(value, sort_keys=True)
        return self.known.get(key, f"{UNRESOLVED} {key}")


def dashboard_metrics(template: dict[str, Any], resolve: Resolver) -> set[Metric]:
    """Every metric row of every widget; tokens inside the body become placeholders first."""
    (dashboard,) = [
        r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::CloudWatch::Dashboard"
    ]
    body = dashboard["DashboardBody"]
    parts = body["Fn::Join"][1] if isinstance(body, dict) else [body]
    tokens: dict[str, Any] = {}
    text = ""
    for part in parts:
        if isinstance(part, str):
            text += part
        else:
            placeholder = f"@@token{len(tokens)}@@"
            tokens[placeholder] = part
            text += placeholder
    found: set[Metric] = set()
    for widget in json.loads(text)["widgets"]:
        for row in widget.get("properties", {}).get("metrics", []):
            fields = [field for field in row if not isinstance(field, dict)]
            if not fields:  # a math expression row
                continue
            assert "." not in fields, f"dashboard shorthand not handled here: {row}"
            values = [resolve(tokens.get(field, field)) for field in fields]
            namespace, name, *pairs = values
            dimensions = frozenset(zip(pairs[::2], pairs[1::2], strict=True))
            found.add((namespace, name, dimensions))
    return found


def alarm_metrics(template: dict[str, Any], resolve: Resolver) -> set[Metric]:
    found: set[Metric] = set()
    for resource in template["Resources"].values():
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        props = resource["Properties"]
        metrics = [q["MetricStat"]["Metric"] for q in props.get("Metrics", []) if "MetricStat" in q]
        if "MetricName" in props:
            metrics.append(props)
        for metric in metrics:
            dimensions = frozenset(
                (d["Name"], resolve(d["Value"])) for d in metric.get("Dimensions", [])
            )
            found.add((metric["Namespace"], metric["MetricName"], dimensions))
    return found


def emitted_metrics(stdout: str) -> set[Metric]:
    """Every (namespace, name, dimension set) in the EMF blobs Powertools printed."""
    found: set[Metric] = set()
    for line in stdout.splitlines():
        try:
            blob = json.loads(line)
        except ValueError:
            continue
        if not isinstance(blob, dict) or "_aws" not in blob:
            continue
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            for dimension_set in directive["Dimensions"]:
                dimensions = frozenset((name, str(blob[name])) for name in dimension_set)
                for metric in directive["Metrics"]:
                    found.add((directive["Namespace"], metric["Name"], dimensions))
    return found


def run_probe(
    environment: dict[str, str], published: PublishedModel, cache_dir: Path, s3_endpoint: str
) -> tuple[list[int], str]:
    photo = next(p for p in photographs() if p.name == "rocket.jpg")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("POWERTOOLS_", "MODEL_"))},
        **AWS_ENV,
        **environment,
        "AWS_ENDPOINT_URL_S3": s3_endpoint,
        "MODEL_BUCKET": published.bucket,
        "MODEL_KEY": published.key,
        "MODEL_SHA256": published.sha256,
        "MODEL_CACHE_DIR": str(cache_dir),
        "PYTHONPATH": os.pathsep.join(str(p) for p in (ROOT / "lambda_src", PROBE.parent, ROOT)),
    }
    env.pop("AWS_LAMBDA_INITIALIZATION_TYPE", None)
    result = subprocess.run(
        [sys.executable, str(PROBE), FUNCTION_NAME, str(photo)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    statuses = json.loads(result.stderr.strip().splitlines()[-1])["statuses"]
    return statuses, result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("stage", sorted(TEMPLATES))
def test_every_metric_the_dashboard_and_alarms_read_is_emitted_by_the_handler(
    stage: str, fp32_published: PublishedModel, aws_env: str, tmp_path: Path
) -> None:
    template = json.loads(TEMPLATES[stage].read_text(encoding="utf-8"))
    logical_id, function = predict_function(template)
    variables = function["Environment"]["Variables"]
    namespace = variables["POWERTOOLS_METRICS_NAMESPACE"]
    resolve = Resolver(logical_id)
    read = {
        metric
        for metric in dashboard_metrics(template, resolve) | alarm_metrics(template, resolve)
        if metric[0] == namespace
    }
    unknowable = [metric for metric in read if UNRESOLVED in str(metric)]
    assert not unknowable, f"dimension values the function cannot emit: {unknowable}"
    # The walk found what the dashboard is known to show (it cannot pass vacuously).
    assert {"ModelLoadMs", "InferenceMs", "ColdStart"} <= {name for _, name, _ in read}

    powertools = {k: v for k, v in variables.items() if k.startswith("POWERTOOLS_")}
    statuses, stdout = run_probe(powertools, fp32_published, tmp_path / "cache", aws_env)
    assert statuses == [200, 200, 415]
    emitted = emitted_metrics(stdout)
    cold_starts = [line for line in stdout.splitlines() if '"ColdStart"' in line]
    assert len(cold_starts) == 1, "one cold start, then a warm request"

    missing = {
        f"{ns}/{name} {dict(sorted(dims))}; emitted: "
        + str([dict(sorted(d)) for n, nm, d in emitted if (n, nm) == (ns, name)])
        for ns, name, dims in read - emitted
    }
    assert not missing, "read but never emitted:\n" + "\n".join(sorted(missing))
