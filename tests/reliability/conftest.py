"""Fixtures for the reliability tests: the right answers, computed once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from local_mode.apispec import load_spec
from model_export.photos import photographs
from reliability.reference import Reference, compute_reference

# Four photographs keep each request cheap; the load test uses the same four.
PHOTOS = 4


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    return photographs()[:PHOTOS]


@pytest.fixture(scope="session")
def reference(fp32_model_dir: Path, photos: list[Path]) -> Reference:
    """torchvision + ONNX Runtime on the artifact, with the function's session settings."""
    return compute_reference(fp32_model_dir, photos, load_spec().memory_mb)
