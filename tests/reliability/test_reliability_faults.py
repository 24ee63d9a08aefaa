"""Each fault the function depends on, injected from outside over real HTTP and real boto3.

One local endpoint (S3 server -> fault proxy -> execution environments -> gateway) serves the
whole module; every scenario prepares what it needs (a fresh environment, a warm one) itself.
For each: the status the client sees while the fault holds, recovery by itself once it ends (the
first request after it is answered right), and not one wrong answer among the 200s.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reliability.faults import FaultLab, FaultOutcome, fault_lab
from reliability.reference import Reference

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab(fp32_model_dir: Path, reference: Reference, photos: list[Path]) -> Iterator[FaultLab]:
    with fault_lab(fp32_model_dir, reference, photos) as running:
        yield running


def assert_503_then_recovered_on_the_next_request(outcome: FaultOutcome) -> None:
    assert outcome.client_saw == {"200": 1, "503": 2}, outcome  # the fault's two, then right
    assert outcome.recovered, outcome
    assert outcome.requests_to_recover == 1, outcome  # the function retried the load by itself
    assert outcome.wrong_answers == 0
    assert outcome.answers_checked >= 1


def test_slow_s3_at_init_still_answers_right(lab):
    outcome = lab.s3_slow()
    assert outcome.client_saw == {"200": 2}  # during the fault, and the check after it
    assert outcome.cold_starts == 1
    assert outcome.s3_requests >= 1  # the download really went through the slow proxy
    assert outcome.wrong_answers == 0


def test_s3_5xx_at_init_is_503_then_recovers_by_itself(lab):
    outcome = lab.s3_5xx()
    assert_503_then_recovered_on_the_next_request(outcome)
    assert outcome.s3_requests > 3  # boto3 retried each load before giving up


def test_s3_connection_reset_at_init_is_503_then_recovers_by_itself(lab):
    assert_503_then_recovered_on_the_next_request(lab.s3_reset())


def test_s3_truncated_body_at_init_is_503_then_recovers_by_itself(lab):
    assert_503_then_recovered_on_the_next_request(lab.s3_truncated())


def test_s3_returning_another_object_is_refused_and_nothing_untrusted_is_cached(
    lab, fp32_model_dir
):
    other = (fp32_model_dir / "model.onnx").read_bytes()[:-1] + b"\0"  # same size, other bytes
    outcome = lab.s3_other_object(other)
    assert_503_then_recovered_on_the_next_request(outcome)
    assert outcome.notes == "untrusted files left in any cache: 0"


def test_tmp_full_at_init_is_503_then_recovers_by_itself(lab):
    assert_503_then_recovered_on_the_next_request(lab.tmp_full())


@pytest.mark.parametrize("how", ["deleted", "corrupted"])
def test_cached_model_damaged_between_requests_is_never_served(lab, how):
    outcome = lab.cache_damaged(how)
    # The loaded model kept answering, and the reset environment answered right at once.
    assert outcome.client_saw == {"200": 3}, outcome
    assert outcome.requests_to_recover == 1
    assert outcome.recovered
    assert outcome.cold_starts == 1  # the reset environment ran INIT again
    assert outcome.s3_requests >= 1  # and fetched the model again instead of trusting /tmp
    assert outcome.notes == "re-downloaded and verified: cache intact again"
    assert outcome.wrong_answers == 0


def test_environment_killed_mid_request_is_502_then_a_cold_start(lab):
    outcome = lab.killed_mid_request()
    assert outcome.client_saw == {"200": 1, "502": 1}
    # The API's gateway response for INTEGRATION_FAILURE (stacks/gateway_responses.py).
    # (notes keep the start of the body)
    assert outcome.notes.startswith('body: {"error":{"code":"function_error"')
    assert outcome.recovered
    assert outcome.requests_to_recover == 1
    assert outcome.cold_starts == 1
    assert outcome.wrong_answers == 0
