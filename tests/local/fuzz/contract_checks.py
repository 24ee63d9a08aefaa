"""schemathesis hooks for the contract run: a check the built-in ones cannot express.

Loaded by schemathesis itself (tests/local/fuzz/schemathesis.toml), not collected by pytest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import schemathesis
import yaml

SPEC = yaml.safe_load((Path(__file__).resolve().parents[3] / "docs" / "openapi.yaml").read_text())
# The only reasons docs/openapi.yaml gives for refusing a schema-valid request.
IMAGE_CODES = frozenset(SPEC["components"]["schemas"]["ImageErrorCode"]["enum"])


@schemathesis.check
def valid_requests_are_refused_only_for_image_content(ctx: Any, response: Any, case: Any) -> None:
    """A schema-valid request may be refused (400/413/415/422) only for its image bytes."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    if response.status_code not in (400, 413, 415, 422):
        return None
    try:
        code = json.loads(response.content)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = None
    if code not in IMAGE_CODES:
        raise AssertionError(
            f"schema-valid request refused with {response.status_code} {code!r}; only "
            f"{sorted(IMAGE_CODES)} may refuse one (docs/openapi.yaml ImageErrorCode)"
        )
    return None
