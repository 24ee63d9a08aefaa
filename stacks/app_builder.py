"""Build the CDK app: one ServingStack per stage, the account stack, cdk-nag on everything.

Shared by ``app.py`` (the CLI entry point), ``stacks.snapshot`` and the tests, so all three
synthesize exactly the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from aws_cdk import App, Aspects
from cdk_nag import AwsSolutionsChecks

from stacks.account_stack import AccountStack
from stacks.config import StageConfig
from stacks.model_source import ModelSource
from stacks.serving_stack import ServingStack

ROOT = Path(__file__).resolve().parent.parent
CDK_JSON = ROOT / "cdk.json"


def cdk_json_context() -> dict[str, Any]:
    """Feature flags and defaults from cdk.json, for apps built outside the CDK CLI."""
    context: dict[str, Any] = json.loads(CDK_JSON.read_text(encoding="utf-8"))["context"]
    return context


def new_app(*, outdir: Path | None = None, context: Mapping[str, Any] | None = None) -> App:
    """An App with cdk.json's context, as the CLI would create it."""
    merged = {**cdk_json_context(), **(context or {})}
    return App(
        context=merged,
        outdir=str(outdir) if outdir else None,
        analytics_reporting=False,
    )


def add_stages(
    app: App, *, stages: Iterable[StageConfig], model: ModelSource
) -> list[ServingStack]:
    """Add one stack per stage and the AwsSolutions checks."""
    built = [ServingStack(app, config=config, model=model) for config in stages]
    Aspects.of(app).add(AwsSolutionsChecks(verbose=True))
    return built


def add_account_stack(app: App) -> AccountStack:
    """The account/region-wide stack (API Gateway's logging role); ``make bootstrap`` deploys it.

    The AwsSolutions checks ``add_stages`` adds to the app cover it too.
    """
    return AccountStack(app)
