"""Committed, reviewable templates: ``templates/<StackId>.template.json``.

Rendered hermetically for every stage (and the account stack, ``ResnetServingAccount``) along
the default deploy path: an exporter artifact directory uploaded with the stack. The
artifact is a fixed placeholder written on the fly (``PLACEHOLDER_MODEL_BYTES`` + a minimal
manifest), so no torch and no exported model are
needed, the model upload (BucketDeployment, its provider function and role) is in the diff
like everything else, and the model digest stays constant. The templates are normalized so
that only infrastructure changes show up in a diff:

* asset hashes (the container image built from ``lambda_src/``, CDK's own provider code)
  become ``<ASSET_HASH>``;
* logical IDs that embed such a hash (the function's ``CurrentVersion<hash>``) lose it;
* the list of obsolete CDK bootstrap versions, which grows with aws-cdk-lib releases,
  becomes ``["<BOOTSTRAP_VERSIONS>"]`` (the template stays valid CloudFormation);
* keys are sorted and the JSON is indented.

    python -m stacks.snapshot --write   # refresh (make templates)
    python -m stacks.snapshot --check   # exit 1 if a committed template is stale
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from aws_cdk import Stack

from stacks.app_builder import ROOT, add_account_stack, add_stages, new_app
from stacks.config import STAGES
from stacks.model_source import MANIFEST_FILE, MODEL_FILE, ROLLOUT_HOOK_DIR, ModelSource
from stacks.rollout import REFERENCE_IMAGE

TEMPLATES_DIR = ROOT / "templates"
# Not a model: the committed templates track infrastructure, not weights.
PLACEHOLDER_MODEL_BYTES = b"placeholder for model.onnx: templates/ track infrastructure only\n"
PLACEHOLDER_SHA256 = hashlib.sha256(PLACEHOLDER_MODEL_BYTES).hexdigest()
ASSET_HASH = "<ASSET_HASH>"
BOOTSTRAP_VERSIONS = "<BOOTSTRAP_VERSIONS>"
_HASHED_LOGICAL_ID = re.compile(r"^(?P<stem>.+CurrentVersion)[0-9A-F]{8}[0-9a-f]{32}$")


def template_path(stack_id: str) -> Path:
    return TEMPLATES_DIR / f"{stack_id}.template.json"


def placeholder_artifact(directory: Path) -> ModelSource:
    """Write the placeholder artifact (model file + exporter-style manifest) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MODEL_FILE).write_bytes(PLACEHOLDER_MODEL_BYTES)
    manifest = {
        "format_version": 1,
        "file": MODEL_FILE,
        "sha256": PLACEHOLDER_SHA256,
        # So the rollout hook's environment shows every variable it gets from a real export.
        "reference": {
            "image": REFERENCE_IMAGE,
            "image_sha256": hashlib.sha256(
                (ROLLOUT_HOOK_DIR / REFERENCE_IMAGE).read_bytes()
            ).hexdigest(),
            "top1": {"index": 0, "label": "placeholder"},
        },
    }
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, sort_keys=True) + "\n")
    return ModelSource.from_artifact_dir(directory)


def synthesize(outdir: Path, model: ModelSource | None = None) -> dict[str, Path]:
    """Synthesize every stage and the account stack into ``outdir``; stack id -> template path.

    Without ``model``, the placeholder artifact is written to ``outdir/placeholder-model``.
    """
    if model is None:
        model = placeholder_artifact(outdir / "placeholder-model")
    app = new_app(outdir=outdir)
    stacks: list[Stack] = [*add_stages(app, stages=STAGES.values(), model=model)]
    stacks.append(add_account_stack(app))
    assembly = app.synth()
    return {
        stack.stack_name: Path(assembly.get_stack_by_name(stack.stack_name).template_full_path)
        for stack in stacks
    }


def asset_hashes(outdir: Path, stack_id: str) -> set[str]:
    """Hashes of every file and image asset the stack references."""
    manifest = json.loads((outdir / f"{stack_id}.assets.json").read_text(encoding="utf-8"))
    return set(manifest.get("files", {})) | set(manifest.get("dockerImages", {}))


def normalize(template_text: str, hashes: set[str]) -> str:
    """Replace churn with stable placeholders; pretty JSON with sorted keys."""
    for asset_hash in sorted(hashes, key=len, reverse=True):
        template_text = template_text.replace(asset_hash, ASSET_HASH)
    template: dict[str, Any] = json.loads(template_text)
    renames = {
        logical_id: match["stem"]
        for logical_id in template.get("Resources", {})
        if (match := _HASHED_LOGICAL_ID.match(logical_id))
    }
    text = json.dumps(template)
    for old, new in renames.items():
        text = text.replace(f'"{old}"', f'"{new}"')
    template = json.loads(text)
    rule = template.get("Rules", {}).get("CheckBootstrapVersion")
    if rule:
        # {"Fn::Not": [{"Fn::Contains": [[<obsolete versions>], {"Ref": "BootstrapVersion"}]}]}
        for assertion in rule.get("Assertions", []):
            contains = assertion["Assert"]["Fn::Not"][0]["Fn::Contains"]
            contains[0] = [BOOTSTRAP_VERSIONS]
    return json.dumps(template, indent=2, sort_keys=True) + "\n"


def render(outdir: Path | None = None) -> dict[str, str]:
    """Normalized template text of every stage, keyed by stack id.

    Synthesizes into ``outdir`` (kept, for callers that also want the raw assembly) or into
    a temporary directory.
    """
    if outdir is None:
        with tempfile.TemporaryDirectory(prefix="resnet-snapshot-") as tmp:
            return render(Path(tmp))
    raw = synthesize(outdir)
    return {
        stack_id: normalize(path.read_text(encoding="utf-8"), asset_hashes(outdir, stack_id))
        for stack_id, path in raw.items()
    }


def stale(rendered: dict[str, str]) -> list[str]:
    """Stack ids whose committed template differs from ``rendered`` (or is missing)."""
    return [
        stack_id
        for stack_id, text in rendered.items()
        if not template_path(stack_id).is_file()
        or template_path(stack_id).read_text(encoding="utf-8") != text
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stacks.snapshot", description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="refresh templates/")
    mode.add_argument("--check", action="store_true", help="fail if templates/ is stale")
    args = parser.parse_args(argv)
    rendered = render()
    if args.write:
        TEMPLATES_DIR.mkdir(exist_ok=True)
        for stack_id, text in rendered.items():
            template_path(stack_id).write_text(text, encoding="utf-8")
            print(f"wrote {template_path(stack_id).relative_to(ROOT)}")
        return 0
    outdated = stale(rendered)
    for stack_id in outdated:
        print(
            f"{template_path(stack_id).relative_to(ROOT)} is stale: run `make templates`",
            file=sys.stderr,
        )
    return 1 if outdated else 0


if __name__ == "__main__":
    sys.exit(main())
