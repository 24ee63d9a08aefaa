"""What a stage takes from the account's concurrency pool, and the quota the docs ask for."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from preflight.aws_checks import Hold, concurrency_holds, concurrency_quota_needed
from stacks.config import DEV, PROD

ROOT = Path(__file__).resolve().parents[2]


def test_prod_holds_the_predict_and_the_batch_reservations() -> None:
    assert concurrency_holds(PROD) == [
        Hold("predict", 50, reserved=True),
        Hold("batch", 50, reserved=True),
    ]
    assert concurrency_quota_needed(PROD) == 50 + 50 + 100


def test_dev_holds_nothing_so_any_quota_deploys_it() -> None:
    assert concurrency_holds(DEV) == []
    assert concurrency_quota_needed(DEV) == 0


def test_unreserved_predict_counts_its_provisioned_maximum_beside_the_batch_reservation() -> None:
    stage = replace(
        DEV,
        provisioned_concurrency_min=1,
        provisioned_concurrency_max=5,
        batch_reserved_concurrency=20,
        batch_max_concurrency=20,
    )
    assert concurrency_holds(stage) == [
        Hold("predict", 5, reserved=False),
        Hold("batch", 20, reserved=True),
    ]
    assert concurrency_quota_needed(stage) == 125


def test_a_stage_without_batch_does_not_count_its_reservation() -> None:
    stage = replace(PROD, batch_enabled=False)
    assert concurrency_holds(stage) == [Hold("predict", 50, reserved=True)]


# Every place the docs state prod's quota, and the value they must state.
QUOTA_CLAIMS = {
    "README.md": [r"quota of at least (\d+) for prod", r"quota below (\d+) for prod"],
    "docs/infrastructure.md": [
        r"quota of at least (\d+) for prod",
        r"prod: \*\*≥ (\d+)\*\*",
        r"--desired-value (\d+)",
        r"`UnreservedConcurrentExecutions` ≥ (\d+)",
    ],
    "docs/batch.md": [r"need a quota of at least (\d+)", r"quota of at least (\d+) \(the default"],
}


@pytest.mark.parametrize("path", sorted(QUOTA_CLAIMS))
def test_docs_ask_for_the_quota_prod_needs(path: str) -> None:
    text = " ".join((ROOT / path).read_text(encoding="utf-8").split())
    for pattern in QUOTA_CLAIMS[path]:
        found = re.findall(pattern, text)
        assert found, f"{path}: no {pattern!r}"
        assert {int(value) for value in found} == {concurrency_quota_needed(PROD)}, (path, pattern)
