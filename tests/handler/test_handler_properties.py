"""Property tests (hypothesis): whatever the event or the bytes, a 2xx or a 4xx JSON, never a 500.

Bounded so the suite stays fast; a longer search is an environment variable away:
``HANDLER_PROPERTY_EXAMPLES=20000 .venv/bin/pytest tests/handler/test_handler_properties.py``.
"""

from __future__ import annotations

import base64
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from handler_testkit import FakeContext, load_event
from hostile_inputs import encode, jpeg_with_scans, progressive_jpeg, sliver_png
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

import preprocess
from errors import ApiError

pytestmark = [
    pytest.mark.filterwarnings("ignore:No application metrics to publish"),
    # Pillow warns about the corrupt EXIF blocks that mutated JPEGs carry; it still decodes.
    pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin"),
]

EXAMPLES = int(os.environ.get("HANDLER_PROPERTY_EXAMPLES", "150"))
PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,  # a shared, noisy machine: no per-example time limit
    database=None,  # no .hypothesis/ directory in the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml").read_text())
DOCUMENTED_CODES = set(
    SPEC["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
)


def _seed_images() -> list[bytes]:
    """Small valid files of every accepted format and the modes and features decoders branch on."""
    gradient = Image.linear_gradient("L").resize((48, 32))
    rgb = Image.merge("RGB", (gradient, gradient.rotate(90, expand=False), gradient))
    rgba = rgb.copy()
    rgba.putalpha(gradient)
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return [
        encode(rgb, "JPEG", quality=80),
        encode(rgb, "JPEG", quality=80, exif=exif.tobytes()),
        encode(rgb.convert("CMYK"), "JPEG"),
        encode(gradient, "JPEG"),
        progressive_jpeg((40, 30)),
        encode(rgb, "JPEG", restart_marker_rows=1),
        encode(rgb, "PNG"),
        encode(rgba, "PNG"),
        encode(gradient.convert("1"), "PNG"),
        encode(gradient.convert("I;16"), "PNG"),
        encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG"),
        encode(frames[0], "PNG", save_all=True, append_images=frames[1:]),  # APNG
        encode(rgb, "WEBP", quality=70),
        encode(rgba, "WEBP", lossless=True),
        encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]),  # animated
        sliver_png(200),
        jpeg_with_scans(40, size=(32, 32)),
    ]


SEEDS = _seed_images()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A seed file with some bytes overwritten, inserted or cut: mostly still "an image"."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    # Header fields (sizes, lengths, counts) live near the start: mutate there more often.
    positions = st.one_of(st.integers(0, 64), st.integers(0, len(data) - 1))
    for at, value in draw(st.lists(st.tuples(positions, st.integers(0, 255)), max_size=8)):
        data[at % len(data)] = value
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(max_size=16))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def outcome(data: bytes) -> np.ndarray | ApiError:
    """The tensor, or the ApiError raised instead (any other exception propagates)."""
    try:
        return preprocess.preprocess(data)
    except ApiError as error:
        return error


any_bytes = st.one_of(
    st.binary(max_size=512),
    st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBP"]).flatmap(
        lambda magic: st.binary(max_size=512).map(lambda rest: magic + rest)
    ),
    mutated_images(),
)


@PROPERTY_SETTINGS
@given(data=any_bytes)
def test_preprocessing_any_bytes_gives_a_tensor_or_a_client_error(data):
    result = outcome(data)
    event(result.code if isinstance(result, ApiError) else "decoded")  # for statistics
    if isinstance(result, ApiError):
        assert 400 <= result.status < 500
        assert result.code in DOCUMENTED_CODES
        assert result.message
    else:
        assert result.shape == (3, 224, 224)
        assert result.dtype == np.float32
        assert np.isfinite(result).all()


# ---------------------------------------------------------------- events

_any_text = st.text(st.characters(exclude_categories=()), max_size=24)  # surrogates included
_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _any_text
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_any_text, inner, max_size=3),
    max_leaves=6,
)
_content_types = st.sampled_from(
    ["image/jpeg", "image/png", "image/webp", "application/json", "IMAGE/PNG; q=1",
     "text/plain", "", "application/json; charset=utf-8"]
) | _any_text  # fmt: skip
_header_names = st.sampled_from(["Content-Type", "content-type", "CONTENT-TYPE"]) | _any_text


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_image_b64 = st.one_of(st.sampled_from(SEEDS), any_bytes).map(_b64)
_json_bodies = st.fixed_dictionaries(
    {},
    optional={
        "image": _image_b64 | _json,
        "images": st.lists(_image_b64, max_size=10) | _json,
        "top_k": st.integers(-3, 1200) | _json,
    },
).map(json.dumps)
_bodies = st.one_of(
    st.none(),
    _json_bodies,
    _image_b64,
    _any_text,
    _json,
)
_maps = st.none() | st.dictionaries(_header_names, _content_types, max_size=3) | _json
_multi_maps = st.none() | st.dictionaries(_header_names, st.lists(_content_types, max_size=2))
_query = st.none() | st.dictionaries(
    st.sampled_from(["top_k"]) | _any_text, st.integers(-2, 2000).map(str) | _any_text, max_size=2
)


_FIELDS = {
    "path": st.sampled_from(["/predict", "/health", "/predict/", "/", "/nope"]) | _json,
    "httpMethod": st.sampled_from(["POST", "GET", "post", "PUT"]) | _json,
    "headers": _maps,
    "multiValueHeaders": _multi_maps | _json,
    "queryStringParameters": _query | _json,
    "multiValueQueryStringParameters": st.none() | _json,
    "body": _bodies,
    "isBase64Encoded": st.booleans() | _json,
}


@st.composite
def events(draw: st.DrawFn) -> object:
    """Mostly plausible POST /predict events (raw image or JSON), then some fields made odd."""
    kind = draw(st.sampled_from(["image", "image", "json", "json", "anything"]))
    if kind == "anything":
        return draw(_json)  # a direct invoke may send any JSON at all
    request = load_event("predict_post.json")
    if kind == "image":
        content_type = draw(st.sampled_from(["image/jpeg", "image/png", "image/webp"]))
        body, encoded = draw(_image_b64), draw(st.sampled_from([True, True, True, False]))
    else:
        content_type, body = "application/json", draw(_json_bodies)
        encoded = draw(st.booleans())
        body = _b64(body.encode("utf-8", "surrogatepass")) if encoded else body
    request["headers"] = {"Content-Type": content_type}
    request["multiValueHeaders"] = {"Content-Type": [content_type]}
    request["body"], request["isBase64Encoded"] = body, encoded
    top_k = draw(st.none() | st.integers(-2, 1100).map(str) | _any_text)
    request["queryStringParameters"] = None if top_k is None else {"top_k": top_k}
    request["multiValueQueryStringParameters"] = None if top_k is None else {"top_k": [top_k]}
    for name in draw(st.lists(st.sampled_from(sorted(_FIELDS)), max_size=3, unique=True)):
        if draw(st.booleans()):
            request.pop(name, None)
        else:
            request[name] = draw(_FIELDS[name])
    return request


@PROPERTY_SETTINGS
@given(api_event=events())
def test_any_event_gets_a_2xx_or_4xx_json_answer(api_event, handler_module, shared_runtime):
    response = handler_module.handler(api_event, FakeContext())
    status = response["statusCode"]
    assert 200 <= status < 300 or 400 <= status < 500, response["body"]
    assert response["headers"]["Content-Type"] == "application/json"
    body = json.loads(response["body"])
    event(body["error"]["code"] if status >= 400 else str(status))
    if status >= 400:
        assert set(body) == {"error"}
        assert body["error"]["code"] in DOCUMENTED_CODES
    else:
        assert "predictions" in body or body.get("status") == "ok"


def test_seed_images_are_all_accepted_so_mutations_start_from_real_files():
    accepted = [
        result.code if isinstance(result, ApiError) else result.shape
        for result in map(outcome, SEEDS)
    ]
    # Two seeds are deliberately hostile; every other one is a real, accepted image.
    assert accepted.count((3, 224, 224)) == len(SEEDS) - 2
    assert sorted(c for c in accepted if isinstance(c, str)) == [
        "extreme_aspect_ratio",
        "image_too_complex",
    ]


def test_a_random_sample_of_mutations_reaches_decoding():
    """The mutation strategy must exercise the decoders, not just the magic-number check."""
    rng = random.Random(11)
    decoded = 0
    for _ in range(200):
        data = bytearray(rng.choice(SEEDS))
        data[rng.randrange(64, len(data))] ^= 1 << rng.randrange(8)
        result = outcome(bytes(data))
        decoded += not isinstance(result, ApiError) or result.code == "corrupt_image"
    assert decoded > 100
