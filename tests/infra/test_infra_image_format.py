"""The function image: one platform, the function's, so the push is one image manifest."""

from __future__ import annotations

import json
from typing import Any

from infra_helpers import EXPECTED, Synthesized

PLATFORM_OF = {"x86_64": "linux/amd64", "arm64": "linux/arm64"}


def test_function_image_is_built_for_exactly_the_functions_platform(
    synthesized: Synthesized, stage: str, raw: dict[str, Any]
) -> None:
    stack_id = EXPECTED[stage]["stack_id"]
    assets = json.loads((synthesized.outdir / f"{stack_id}.assets.json").read_text("utf-8"))
    (image,) = assets["dockerImages"].values()
    function = raw["Resources"]["PredictFunction"]
    (architecture,) = function["Properties"]["Architectures"]
    # One --platform for `docker build`, the one Lambda runs: Lambda takes no multi-platform
    # index, and an image of the other architecture would fail at INIT.
    assert image["source"]["platform"] == PLATFORM_OF[architecture]
    assert len(image["destinations"]) == 1
    # No custom --output: the CLI's tag-and-push path is what the preflight checks assume.
    assert "dockerOutputs" not in image["source"]
