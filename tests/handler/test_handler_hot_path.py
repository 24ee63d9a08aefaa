"""Per-request work that issue #12 took off the hot path stays off it."""

from __future__ import annotations

import base64
import binascii

import pytest
from handler_testkit import predict_event
from hypothesis import given, settings
from hypothesis import strategies as st

import api
from model_export.photos import photographs

JPEG = next(p for p in photographs() if p.name == "rocket.jpg").read_bytes()


def test_disabled_tracing_opens_no_subsegment_per_request(handler_module, invoke, monkeypatch):
    """Tests run with POWERTOOLS_TRACE_DISABLED: Powertools' disabled wrapper would still build
    and discard a subsegment for the handler and one for inference on every request."""
    assert handler_module.tracer.disabled
    assert handler_module.TRACING is False
    opened: list[str] = []
    real = handler_module.tracer.provider.in_subsegment

    def spy(name, *args, **kwargs):
        opened.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(handler_module.tracer.provider, "in_subsegment", spy)
    assert invoke(predict_event(JPEG))["statusCode"] == 200
    assert opened == []


def test_handler_keeps_its_name_for_traces_and_logs(handler_module):
    # Lambda's CMD is handler.handler; X-Ray names the handler subsegment "## handler".
    assert handler_module.handler.__name__ == "handler"


_B64_TEXT = st.text(alphabet="AB+/=a9z \n\t-_é\x00", max_size=24)


@settings(max_examples=3000, deadline=None)
@given(value=_B64_TEXT)
def test_fast_base64_decides_exactly_like_the_standard_library(value):
    """api.b64decode (SIMD pybase64, the standard library for what it refuses): same bytes and
    same acceptance as base64.b64decode(validate=True), the decoder the API always used."""
    try:
        want: bytes | None = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        want = None
    try:
        got: bytes | None = api.b64decode(value)
    except (binascii.Error, ValueError):
        got = None
    assert got == want


@pytest.mark.parametrize("value", ["AAAA====", "QUJD=", "AA==", "QUJDRA=="])
def test_padding_the_standard_library_accepts_is_still_accepted(value):
    # pybase64 alone refuses excess padding after a complete group; clients never saw a 400.
    assert api.b64decode(value) == base64.b64decode(value, validate=True)


def test_big_body_round_trips():
    data = JPEG * 40  # ~2 MB, past the SIMD decoder's block sizes
    assert api.b64decode(base64.b64encode(data).decode("ascii")) == data


def _reference_check_map(mapping, multi: bool) -> bool:
    """The per-item check api._check_map always made (before its C-level fast path)."""

    def is_text(value) -> bool:
        if not isinstance(value, str):
            return False
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True

    if mapping is None:
        return True
    if not isinstance(mapping, dict):
        return False
    for key, value in mapping.items():
        values = value if multi else [value]
        if not (is_text(key) and isinstance(values, list) and all(map(is_text, values))):
            return False
    return True


_TEXT = st.text(alphabet=st.sampled_from("aZ-9 é\ud800\x00"), max_size=4)
_SCALAR = st.one_of(_TEXT, st.integers(), st.none(), st.booleans())
_VALUE = st.one_of(_SCALAR, st.lists(_SCALAR, max_size=3), st.tuples(_TEXT))


@settings(max_examples=2000, deadline=None)
@given(
    mapping=st.one_of(st.none(), st.dictionaries(st.one_of(_TEXT, st.integers()), _VALUE)),
    multi=st.booleans(),
)
def test_header_check_fast_path_decides_like_the_per_item_walk(mapping, multi):
    event = {"multiValueHeaders" if multi else "headers": mapping}
    if _reference_check_map(mapping, multi):
        assert api.check_event(event) is event
    else:
        with pytest.raises(api.ApiError) as refused:
            api.check_event(event)
        assert refused.value.code == "invalid_event"
