#!/usr/bin/env python3
"""CDK entry point: the only place that reads CDK context.

Context (all optional):
  -c stage=dev|prod          synthesize one stage (default: every stage)
  -c model_dir=PATH          exporter artifact dir (default: build/model); relative to the repo
  -c model_key=models/<sha256>/model.onnx -c model_sha256=<sha256>
                             serve an already-published model instead (no upload)
  -c alarm_email=ADDRESS     subscribe ADDRESS to the alarm topic of the stage(s) synthesized
                             (overrides StageConfig.alarm_email; empty = no subscription)
  -c slack_workspace_id=T... -c slack_channel_id=C...
                             also send alarms to that Slack channel through AWS Chatbot
  -c model_reference_top1=<index>   with model_key: its manifest's reference.top1.index
  -c without_model=true      for `cdk bootstrap` / `cdk destroy`, which synthesize the app but
                             deploy none of it: no model is read, and a CloudFormation rule makes
                             any deploy of these serving templates fail (make bootstrap/destroy)
  -c github_repo=OWNER/NAME  also add the optional GitHub OIDC roles stack (docs/ci-cd.md);
     [-c github_oidc_provider_arn=ARN]  reuse the account's existing GitHub OIDC provider

Without -c stage, the app also holds ResnetServingAccount, the account-wide stack that
`make bootstrap` deploys once (API Gateway's logging role).

The stacks are environment-agnostic on purpose: synth needs no credentials and no lookups,
and `cdk deploy` targets the account/region of the current AWS profile.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from aws_cdk import App

from stacks.app_builder import ROOT, add_account_stack, add_stages
from stacks.config import STAGES
from stacks.github_oidc import GitHubOidcError, GitHubOidcSettings, GitHubOidcStack
from stacks.model_source import ModelSource, ModelSourceError
from stacks.synth_guard import NO_MODEL, guard_against_deploy, parse_flag

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
        without_model = parse_flag("without_model", ctx("without_model"))
        if without_model:
            if key is not None or sha256 is not None or ctx("model_dir") is not None:
                raise ModelSourceError("-c without_model=true takes no model_dir/model_key")
            model = NO_MODEL
        elif key is not None or sha256 is not None:
            if key is None or sha256 is None:
                raise ModelSourceError("pass both -c model_key=... and -c model_sha256=...")
            model = ModelSource.published(
                key=str(key), sha256=str(sha256), reference_top1=ctx("model_reference_top1")
            )
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

    # Where alarms go: context overrides the stage's fields (empty value = none).
    notify = {
        key: str(value).strip() or None
        for key in ("alarm_email", "slack_workspace_id", "slack_channel_id")
        if (value := ctx(key)) is not None
    }
    if notify:
        try:
            stages = [replace(s, **notify) for s in stages]
        except ValueError as error:  # StageConfig's own validation, one line
            print(f"error: -c {' -c '.join(notify)}: {error}", file=sys.stderr)
            return 2

    serving = add_stages(app, stages=stages, model=model)
    if without_model:
        for stack in serving:
            guard_against_deploy(stack)
    if stage is None:
        add_account_stack(app)
    if github is not None:
        GitHubOidcStack(app, settings=github)
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
