"""The fuzz targets' property, driven by hypothesis (no atheris needed), and proof it can fail.

``make fuzz`` is the long, coverage-guided run of the same check functions (fuzz/target.py);
here they get the generated seeds, bounded hypothesis searches over the same inputs, and one
planted bug of each kind they must flag.
"""

from __future__ import annotations

import base64
import os
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import api
import preprocess
from errors import ApiError
from fuzz import event_input, properties, seeds
from fuzz.__main__ import MAX_LEN
from fuzz.properties import Budget, Finding, check_event, check_image
from fuzz.seeds import hostile

EXAMPLES = int(os.environ.get("FUZZ_PROPERTY_EXAMPLES", "100"))
PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,  # shared machine; the budget is the harness's own check
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
IMAGE_SEEDS = seeds.image_seeds()
EVENT_SEEDS = seeds.event_seeds()

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")


def check_event_input(data: bytes) -> str:
    event, expected = event_input.decode(data)
    return "not json" if event is None else check_event(event, expected)


# ---------------------------------------------------------------- seeds


def test_image_seeds_are_accepted_photos_the_limits_and_each_refused_class():
    outcomes = {name: check_image(data) for name, data in IMAGE_SEEDS.items()}
    photos = {name for name in outcomes if name.startswith("photo")}
    assert len(photos) >= 12
    assert {outcomes[name] for name in photos} == {"tensor"}
    # The largest image the limits admit is admitted (what a header-only claim gives is
    # libjpeg's and Pillow's business: the property holds either way).
    assert outcomes["limit-40mp-gray.png"] == "tensor"
    assert {n: code for n, code in outcomes.items() if not n.startswith(("photo", "limit"))} == {
        "sliver.png": "extreme_aspect_ratio",
        "sliver.webp": "extreme_aspect_ratio",
        "scans-40.jpg": "image_too_complex",
        "comments-1100.jpg": "image_too_complex",
        "claims-100mp.png": "image_too_large",
        "eps.eps": "unsupported_image_format",
    }
    # All of them fit the fuzzer's input size, so none is cut when libFuzzer loads it.
    assert max(map(len, IMAGE_SEEDS.values())) <= MAX_LEN


def test_event_seeds_reach_parsing_and_each_refusal_they_were_made_for():
    outcomes = {name: check_event_input(data) for name, data in EVENT_SEEDS.items()}
    parsed = {name for name, outcome in outcomes.items() if outcome == "parsed"}
    assert parsed >= {"raw-jpeg", "raw-png-multivalue", "json-single", "json-batch"}
    assert outcomes["json-big-int"] == "malformed_json"
    assert outcomes["json-nested"] == "json_too_complex"
    assert outcomes["json-surrogate"] == "invalid_event"
    assert outcomes["direct-odd-types"] == "invalid_event"
    assert outcomes["direct-health"] == "/health"


def test_event_layout_round_trips_a_binary_body():
    body = IMAGE_SEEDS["photo.png"]
    data = event_input.encode("image/png", event_input.BINARY, body, top_k="4", lower=True)
    event, expected = event_input.decode(data)
    assert event["headers"]["content-type"] == "image/png"
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == body
    assert event["queryStringParameters"] == {"top_k": "4"}
    assert expected == [body]
    request = api.parse_predict(event)
    assert (request.images, request.top_k) == ([body], 4)


# ---------------------------------------------------------------- bounded searches


@st.composite
def mutated(draw: st.DrawFn, corpus: dict[str, bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(sorted(corpus.values()))))
    for at, value in draw(st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)),
                                   max_size=6)):  # fmt: skip
        data[at % len(data)] = value
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@PROPERTY_SETTINGS
@given(data=mutated(IMAGE_SEEDS) | st.binary(max_size=256))
def test_image_property_holds_for_mutated_seeds(data):
    check_image(data)


@PROPERTY_SETTINGS
@given(data=mutated(EVENT_SEEDS) | st.binary(max_size=256))
def test_event_property_holds_for_mutated_seeds(data):
    check_event_input(data)


# ---------------------------------------------------------------- planted bugs it must flag


def _photo() -> bytes:
    return IMAGE_SEEDS["photo.jpg"]


def test_an_exception_other_than_api_error_is_a_finding(monkeypatch):
    def broken_resize(self, *args, **kwargs):
        raise ValueError("planted")

    monkeypatch.setattr(Image.Image, "resize", broken_resize)
    with pytest.raises(Finding, match="preprocess raised ValueError: planted"):
        check_image(_photo())


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (ApiError(500, "internal_error", "planted"), "answered 500 internal_error"),
        (ApiError(400, "made_up_code", "planted"), "undocumented code 'made_up_code'"),
        (ApiError(400, "corrupt_image", ""), "without a message"),
    ],
)
def test_an_api_error_outside_the_contract_is_a_finding(monkeypatch, error, message):
    def refusing_resize(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(Image.Image, "resize", refusing_resize)
    with pytest.raises(Finding, match=message):
        check_image(_photo())


def test_an_output_row_left_unwritten_is_a_finding(monkeypatch):
    """The handler reads the batch row it passed as ``out``, not the return value."""
    real_transform = preprocess.transform

    def transform_ignoring_out(img, spec=preprocess.IMAGENET, out=None):
        return real_transform(img, spec)

    monkeypatch.setattr(preprocess, "transform", transform_ignoring_out)
    with pytest.raises(Finding, match="unwritten"):
        check_image(_photo())


def test_cpu_over_budget_is_a_finding(monkeypatch):
    real_resize = Image.Image.resize

    def slow_resize(self, *args, **kwargs):
        until = time.process_time() + 0.3
        while time.process_time() < until:
            pass
        return real_resize(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", slow_resize)
    budget = Budget(cpu_s=0.1, memory_mib=properties.IMAGE_BUDGET.memory_mib)
    with pytest.raises(Finding, match=r"took \d+\.\d\d s of CPU \(budget 0.1 s\)"):
        check_image(_photo(), budget)


@pytest.mark.skipif(not properties.MEASURES_MEMORY, reason="needs /proc/self/clear_refs (Linux)")
def test_memory_over_budget_is_a_finding(monkeypatch):
    real_resize = Image.Image.resize

    def hungry_resize(self, *args, **kwargs):
        block = np.ones(96 << 20, dtype=np.uint8)  # 96 MiB, every page touched
        assert block.sum() == 96 << 20
        return real_resize(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", hungry_resize)
    budget = Budget(cpu_s=properties.IMAGE_BUDGET.cpu_s * 10, memory_mib=64)
    with pytest.raises(Finding, match=r"grew the peak resident set by (9\d|1\d\d) MiB"):
        check_image(_photo(), budget)
    check_image(_photo(), Budget(cpu_s=budget.cpu_s, memory_mib=160))  # the same, within 160


def test_a_removed_scan_limit_is_found_by_the_cpu_budget(monkeypatch):
    """The attack the scan limit stops (LJT-01-003) costs ~100x a normal progressive JPEG."""
    size = (2048, 2048)

    def cpu_of(data: bytes) -> float:
        started = time.process_time()
        check_image(data, Budget(cpu_s=60, memory_mib=properties.IMAGE_BUDGET.memory_mib))
        return time.process_time() - started

    normal = min(cpu_of(hostile.progressive_jpeg(size)) for _ in range(3))
    budget = Budget(cpu_s=10 * normal, memory_mib=properties.IMAGE_BUDGET.memory_mib)
    attack = hostile.jpeg_with_scans(1000, size)
    assert check_image(attack, budget) == "image_too_complex"

    monkeypatch.setattr(preprocess, "MAX_JPEG_SCANS", 10**6)
    with pytest.raises(Finding, match="over budget"):
        check_image(attack, budget)


def test_a_removed_json_bound_is_a_finding(monkeypatch):
    deep = event_input.encode("application/json", event_input.TEXT, b"[" * 100_000)
    assert check_event_input(deep) == "json_too_complex"

    monkeypatch.setattr(api, "MAX_JSON_BRACKETS", 10**9)
    with pytest.raises(Finding, match="RecursionError"):
        check_event_input(deep)


def test_a_binary_body_parsed_into_other_bytes_is_a_finding(monkeypatch):
    monkeypatch.setattr(api, "body_bytes", lambda event: b"\xff\xd8\xff other bytes")
    with pytest.raises(Finding, match="differ from the body"):
        check_event_input(EVENT_SEEDS["raw-jpeg"])
