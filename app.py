#!/usr/bin/env python3
"""CDK entry point: the only place that reads CDK context.

Context (all optional):
  -c stage=dev|prod          synthesize one stage (default: every stage)
  -c model_dir=PATH          exporter artifact dir (default: build/model); relative to the repo
  -c model_key=models/<sha256>/model.onnx -c model_sha256=<sha256>
                             serve an already-published model instead (no upload)
  -c github_repo=OWNER/NAME  also add the optional GitHub OIDC roles stack (docs/ci-cd.md);
     [-c github_oidc_provider_arn=ARN]  reuse the account's existing GitHub OIDC provider

The stacks are environment-agnostic on purpose: synth needs no credentials and no lookups,
and `cdk deploy` targets the account/region of the current AWS profile.
"""

from __future__ import annotations

import sys
from pathlib import Path

from aws_cdk import App

from stacks.app_builder import ROOT, add_stages
from stacks.config import STAGES
from stacks.github_oidc import GitHubOidcError, GitHubOidcSettings, GitHubOidcStack
from stacks.model_source import ModelSource, ModelSourceError

DEFAULT_MODEL_DIR = Path("build") / "model"


def main() -> int:
    app = App()
    ctx = app.node.try_get_context
    try:
        stage = ctx("stage")
        if stage is not None and stage not in STAGES:
            raise ModelSourceError(
                f"unknown stage {stage!r}: pass -c stage={' or -c stage='.join(STAGES)}"
            )
        stages = [STAGES[stage]] if stage else list(STAGES.values())

        key, sha256 = ctx("model_key"), ctx("model_sha256")
        if key is not None or sha256 is not None:
            if key is None or sha256 is None:
                raise ModelSourceError("pass both -c model_key=... and -c model_sha256=...")
            model = ModelSource.published(key=str(key), sha256=str(sha256))
        else:
            model_dir = Path(ctx("model_dir") or DEFAULT_MODEL_DIR)
            model = ModelSource.from_artifact_dir(
                model_dir if model_dir.is_absolute() else ROOT / model_dir
            )
        github = GitHubOidcSettings.from_context(
            ctx("github_repo"), ctx("github_oidc_provider_arn")
        )
    except (ModelSourceError, GitHubOidcError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    add_stages(app, stages=stages, model=model)
    if github is not None:
        GitHubOidcStack(app, settings=github)
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
