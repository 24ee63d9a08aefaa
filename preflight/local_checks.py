"""Checks that need no AWS: the model artifact and what the synthesized template requires."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Any

from preflight.findings import Finding, blocker, ok, warn
from stacks.app_builder import new_app
from stacks.config import StageConfig
from stacks.model_source import MANIFEST_FILE, MODEL_FILE, ModelSource, ModelSourceError
from stacks.serving_stack import ServingStack
from stacks.synth_guard import NO_MODEL


@functools.cache
def synthesized_template(config: StageConfig) -> dict[str, Any]:
    """The stage's template as cdk synth writes it (around a placeholder model reference).

    Only the parts that do not depend on the model are read from it (the bootstrap rule), so
    one synth per stage and process is enough; it takes a few seconds.
    """
    with tempfile.TemporaryDirectory(prefix="preflight-synth-") as outdir:
        app = new_app(outdir=Path(outdir))
        stack = ServingStack(app, config=config, model=NO_MODEL)
        template: dict[str, Any] = app.synth().get_stack_by_name(stack.stack_name).template
    return template


def check_model(model_dir: Path, config: StageConfig) -> list[Finding]:
    """The exporter artifact exists, matches its manifest, and fits the stage's /tmp."""
    if not (model_dir / MANIFEST_FILE).is_file() or not (model_dir / MODEL_FILE).is_file():
        return [
            blocker("model", f"no exported model in {model_dir}", "make model WEIGHTS=imagenet")
        ]
    try:
        model = ModelSource.from_artifact_dir(model_dir)
    except ModelSourceError as error:
        return [blocker("model", str(error), "make model WEIGHTS=imagenet")]
    size_mb = (model.size_bytes or 0) / 1_000_000
    findings = [ok("model", f"{model.key}: {size_mb:.1f} MB, sha256 matches {MANIFEST_FILE}")]
    needed = model.min_ephemeral_storage_mb
    if needed is not None and config.ephemeral_storage_mb < needed:
        findings.append(
            blocker(
                "model",
                f"{config.name}'s /tmp is {config.ephemeral_storage_mb} MB; this model needs "
                f">= {needed} MB (two copies plus headroom)",
                f"raise ephemeral_storage_mb for {config.name} in stacks/config.py",
            )
        )
    manifest = json.loads((model_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    verification = manifest.get("verification")
    if isinstance(verification, dict) and verification.get("weights_trained") is False:
        findings.append(
            warn(
                "model",
                "this model is untrained (exported without pretrained weights): its "
                "predictions are meaningless",
                "make model WEIGHTS=imagenet (or a trained checkpoint)",
            )
        )
    return findings
