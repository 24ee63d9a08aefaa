"""Every request costs a bounded amount, decided before the expensive step (issue #11).

Each class of "small request that costs a lot" is built here and must get a 4xx JSON error with a
stable code *without* the expensive step running: an operation counter records what Pillow is
asked to open, decode and resize, json.loads calls are counted, and peak memory is measured in a
fresh interpreter against a normal photo's in the same run (a ratio, never an absolute time).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from handler_testkit import body_of, predict_event
from hostile_inputs import (
    encode,
    eps_with_comment_lines,
    jpeg_with_comments,
    jpeg_with_scans,
    png_chunk,
    png_claiming,
    png_with_chunks,
    progressive_jpeg,
    scans_of,
    sliver_png,
    sliver_webp,
)
from PIL import Image, ImageFile, WebPImagePlugin
from torchvision import transforms

import api
import preprocess
from errors import ApiError
from model_export.photos import photographs

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")

LAMBDA_SRC = Path(preprocess.__file__).resolve().parent
PHOTOS = {p.name: p for p in photographs()}


# ---------------------------------------------------------------- what Pillow is asked to do


@dataclass
class PillowWork:
    opened: int = 0
    decoded: set[int] = field(default_factory=set)  # ids of images whose pixels were loaded
    resized_to: list[tuple[int, int]] = field(default_factory=list)
    active: bool = False

    @contextlib.contextmanager
    def watch(self) -> Iterator[PillowWork]:
        """Count only inside this block (not the test's own image building)."""
        self.active = True
        try:
            yield self
        finally:
            self.active = False


@pytest.fixture
def pillow_work(monkeypatch: pytest.MonkeyPatch) -> PillowWork:
    """Counts Image.open calls, pixel loads and resize targets inside ``work.watch()``."""
    work = PillowWork()
    real_open, real_load = Image.open, ImageFile.ImageFile.load
    real_webp_load, real_resize = WebPImagePlugin.WebPImageFile.load, Image.Image.resize

    def counting_open(*args, **kwargs):
        work.opened += work.active
        return real_open(*args, **kwargs)

    def counting_load(self):
        if work.active:
            work.decoded.add(id(self))
        return real_load(self)

    def counting_webp_load(self):
        if work.active:
            work.decoded.add(id(self))
        return real_webp_load(self)

    def counting_resize(self, size, *args, **kwargs):
        if work.active:
            work.resized_to.append(tuple(size))
        return real_resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    monkeypatch.setattr(WebPImagePlugin.WebPImageFile, "load", counting_webp_load)
    monkeypatch.setattr(Image.Image, "resize", counting_resize)
    return work


def refused(data: bytes, work: PillowWork | None = None) -> ApiError:
    with pytest.raises(ApiError) as caught, work.watch() if work else contextlib.nullcontext():
        preprocess.preprocess(data)
    return caught.value


# Runs one preprocess in a fresh interpreter and reports how far its resident set rose above
# where it stood just before: Pillow's pixel buffers are plain malloc, invisible to tracemalloc.
# The peak is /proc's VmHWM, reset through clear_refs: getrusage's ru_maxrss would start at
# pytest's own size, which a child inherits across fork and exec. The same-format warm-up first
# loads the plugin and the normalization table, so only the request itself is measured.
_MEMORY_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import preprocess
from errors import ApiError
def status_kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))
warmup, data = open(sys.argv[2], "rb").read(), open(sys.argv[3], "rb").read()
preprocess.preprocess(warmup)
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # VmHWM := VmRSS
before = status_kib("VmRSS")
try:
    preprocess.preprocess(data)
    outcome = "ok"
except ApiError as error:
    outcome = f"{error.status} {error.code}"
print(json.dumps({"outcome": outcome, "peak_growth_kib": status_kib("VmHWM") - before}))
"""


def peak_memory_growth(tmp_path: Path, data: bytes, warmup: bytes) -> dict:
    files = []
    for name, content in (("warmup", warmup), ("data", data)):
        files.append(tmp_path / name)
        files[-1].write_bytes(content)
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(LAMBDA_SRC), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def typical_photo() -> bytes:
    """The reference request: a real photograph at phone-upload size, 1280x960 JPEG."""
    photo = Image.open(PHOTOS["grace_hopper.jpg"]).convert("RGB").resize((1280, 960))
    return encode(photo, "JPEG", quality=85)


# ---------------------------------------------------------------- extreme aspect ratio


@pytest.mark.parametrize(
    "data",
    [sliver_png(3000), sliver_png(300), sliver_webp(2000), sliver_webp(16383)],
    ids=["png_1x3000", "png_1x300", "webp_2000x1", "webp_16383x1"],
)
def test_sliver_images_are_refused_from_the_header(data, pillow_work):
    assert len(data) < 1000  # a few hundred bytes ...
    error = refused(data, pillow_work)  # ... Resize(256) made 256 x 76,800 .. 4,194,048
    assert (error.status, error.code) == (422, "extreme_aspect_ratio")
    assert "32" in error.message
    assert pillow_work.opened == 1  # the header, for the size
    assert pillow_work.decoded == set()
    assert pillow_work.resized_to == []


def test_sliver_that_overflowed_inside_pillow_is_a_422():
    # 1 x 20,000,000 (within the pixel limit): the resize to 256 x 5,120,000,000 raised
    # OverflowError inside Pillow, a 500.
    data = png_claiming(1, 20_000_000, zlib.compress(b"\x00\x80" * 20_000_000, 9))
    assert len(data) < 100_000
    assert refused(data).code == "extreme_aspect_ratio"


def test_sliver_costs_less_memory_than_a_normal_photo(tmp_path, typical_photo):
    warmup = encode(Image.new("RGB", (8, 8)), "PNG")
    sliver = peak_memory_growth(tmp_path, sliver_png(3000), warmup)
    normal = peak_memory_growth(tmp_path, typical_photo, encode(Image.new("RGB", (8, 8)), "JPEG"))
    assert normal["outcome"] == "ok"
    assert sliver["outcome"] == "422 extreme_aspect_ratio"
    # Before the limit the 95-byte sliver grew the peak by ~800 MB, ~100x the photo.
    assert normal["peak_growth_kib"] > 1024  # the probe does see a decode
    assert sliver["peak_growth_kib"] < normal["peak_growth_kib"] / 4


def test_aspect_ratio_limit_boundary_is_exact_and_stays_torchvision_identical(pillow_work):
    ratio = preprocess.MAX_ASPECT_RATIO
    gradient = Image.linear_gradient("L").resize((8, 8 * ratio)).convert("RGB")
    data = encode(gradient, "PNG")
    ours = preprocess.preprocess(data)
    tv = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    np.testing.assert_array_equal(ours, tv(Image.open(io.BytesIO(data)).convert("RGB")).numpy())
    with pillow_work.watch():
        preprocess.preprocess(data)
    # torchvision's Resize would make 256 x (256 * ratio) pixels; only the 224 x 224 crop is
    # resampled (preprocess.resized_crop): a 224-column strip of the rows it needs, then 224 rows.
    (strip_w, strip_h), final = pillow_work.resized_to
    assert (strip_w, final) == (224, (224, 224))
    assert strip_h <= 8 * ratio  # at most the source's rows
    one_more = encode(gradient.resize((8, 8 * ratio + 1)), "PNG")
    assert refused(one_more, pillow_work).code == "extreme_aspect_ratio"
    assert len(pillow_work.resized_to) == 2  # nothing more was resized for the refused one


def test_transform_refuses_extreme_ratio_even_without_open_image(pillow_work):
    """batch.py and bench code call transform() on images they opened themselves."""
    sliver = Image.new("RGB", (1, 5000))
    with pytest.raises(ApiError) as caught, pillow_work.watch():
        preprocess.transform(sliver)
    assert caught.value.code == "extreme_aspect_ratio"
    assert pillow_work.resized_to == []


# ---------------------------------------------------------------- progressive JPEG scans


def test_repeated_scans_are_refused_before_pillow_sees_the_file(pillow_work):
    data = jpeg_with_scans(1000)  # ~30 kB; decoding it took ~2.6 s of CPU here
    error = refused(data, pillow_work)
    assert (error.status, error.code) == (422, "image_too_complex")
    assert "32 scans" in error.message
    assert pillow_work.opened == 0


def test_scan_limit_boundary_decodes_the_last_accepted_count(pillow_work):
    limit = preprocess.MAX_JPEG_SCANS
    at_limit, over = jpeg_with_scans(limit, (256, 256)), jpeg_with_scans(limit + 1, (256, 256))
    with pillow_work.watch():
        assert preprocess.preprocess(at_limit).shape == (3, 224, 224)
    assert len(pillow_work.decoded) == 1
    assert refused(over, pillow_work).code == "image_too_complex"
    assert len(pillow_work.decoded) == 1


@pytest.mark.parametrize(("mode", "scans"), [("L", 6), ("RGB", 10), ("CMYK", 18)])
def test_scan_count_is_libjpegs_own_progression(mode, scans):
    data = progressive_jpeg((300, 200), mode)
    assert data.count(b"\xff\xda") == scans  # libjpeg's simple progression for the mode
    assert preprocess.jpeg_scans(data) == scans
    assert preprocess.preprocess(data).shape == (3, 224, 224)


def test_scan_walk_skips_stuffed_bytes_restart_markers_and_segment_payloads():
    noise = Image.effect_noise((640, 480), 120).convert("RGB")
    data = encode(noise, "JPEG", progressive=True, quality=95, restart_marker_rows=1)
    head, scans = scans_of(data)
    assert b"\xff\x00" in b"".join(scans)  # stuffed data bytes
    assert b"\xff\xd0" in b"".join(scans)  # restart markers
    assert preprocess.jpeg_scans(data) == len(scans) == 10
    # 100 fake SOS markers inside a comment segment's payload are data, as libjpeg reads them;
    # fill bytes before a marker are not.
    comment = b"\xff\xda" * 100
    crafted = (
        data[:2]
        + b"\xff\xfe"
        + (len(comment) + 2).to_bytes(2, "big")
        + comment
        + head[2:]
        + b"".join(b"\xff\xff" + s for s in scans)
        + b"\xff\xd9"
    )
    assert preprocess.jpeg_scans(crafted) == 10
    assert preprocess.preprocess(crafted).shape == (3, 224, 224)


def test_many_marker_segments_or_png_chunks_are_refused_unparsed(pillow_work):
    # ~1.2 s of Pillow's Python-level header parsing each, before these caps.
    for data in (jpeg_with_comments(500_000), png_with_chunks(400_000)):
        error = refused(data, pillow_work)
        assert (error.status, error.code) == (422, "image_too_complex")
    assert pillow_work.opened == 0
    assert preprocess.preprocess(jpeg_with_comments(100)).shape == (3, 224, 224)
    assert preprocess.preprocess(png_with_chunks(1000)).shape == (3, 224, 224)


# ---------------------------------------------------------------- lying or truncated headers


def test_png_declaring_few_pixels_over_a_huge_stream_decodes_only_its_pixels(
    tmp_path, typical_photo
):
    # 10x10 pixels, then 256 MB of zeros deflated to ~250 kB: Pillow stops at the last row.
    bomb = png_claiming(10, 10, zlib.compress(bytes(256 << 20), 9))
    warmup = encode(Image.new("L", (8, 8)), "PNG")
    growth = peak_memory_growth(tmp_path, bomb, warmup)
    normal = peak_memory_growth(tmp_path, typical_photo, encode(Image.new("RGB", (8, 8)), "JPEG"))
    assert growth["outcome"] == "ok"
    assert normal["peak_growth_kib"] > 1024
    assert growth["peak_growth_kib"] < normal["peak_growth_kib"]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (png_claiming(6000, 6000, zlib.compress(bytes(1000))), "corrupt_image"),
        (png_claiming(20_000, 20_000, b""), "image_too_large"),
        (progressive_jpeg((400, 300))[:-200], "corrupt_image"),
        (b"\xff\xd8\xff" + bytes(5000), "corrupt_image"),
        (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", b"short"), "corrupt_image"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(100), "corrupt_image"),
    ],
    ids=["png_claims_36mp", "png_claims_400mp", "truncated_jpeg", "jpeg_magic", "png_ihdr",
         "webp_riff"],
)  # fmt: skip
def test_lying_or_truncated_headers_are_client_errors(data, code):
    error = refused(data)
    assert error.code == code
    assert 400 <= error.status < 500


# ---------------------------------------------------------------- formats named from magic only


def _other_formats() -> dict[str, tuple[bytes, str]]:
    rgb = Image.new("RGB", (64, 64), (200, 10, 10))
    return {
        "gif": (encode(rgb, "GIF"), "GIF"),
        "bmp": (encode(rgb, "BMP"), "BMP"),
        "tiff": (encode(rgb, "TIFF"), "TIFF"),
        "ico": (encode(rgb, "ICO"), "ICO"),
        "ppm": (encode(rgb, "PPM"), "PNM"),
        "jpeg2000": (encode(rgb, "JPEG2000"), "JPEG 2000"),
        "avif": (encode(rgb, "AVIF"), "AVIF"),
        "heic": (b"\x00\x00\x00\x18ftypheic" + bytes(100), "HEIF"),
        "pdf": (encode(rgb, "PDF"), "PDF"),
        # Pillow's EPS plugin reads these 1M comment lines one by one: ~3 s just to say "EPS".
        "eps_comment_bomb": (eps_with_comment_lines(1_000_000), "PostScript"),
    }


OTHER_FORMATS = _other_formats()


@pytest.mark.parametrize("name", sorted(OTHER_FORMATS))
def test_other_formats_get_415_naming_them_without_any_plugin_opening_them(name, pillow_work):
    data, named = OTHER_FORMATS[name]
    error = refused(data, pillow_work)
    assert (error.status, error.code) == (415, "unsupported_image_format")
    assert f"Image format {named} is not supported" in error.message
    assert pillow_work.opened == 0


@pytest.mark.parametrize(
    "data",
    [b"hello, world", b"", b"\xff\xd8", b"RIFF\x00\x00\x00\x00WAVEfmt ", bytes(4096)],
    ids=["text", "empty", "soi_only", "riff_wave", "zeros"],
)
def test_unknown_bytes_are_not_an_image_without_any_plugin_opening_them(data, pillow_work):
    assert refused(data, pillow_work).code == "not_an_image"
    assert pillow_work.opened == 0


# ---------------------------------------------------------------- JSON bombs


def _json_event(body: str) -> dict:
    return predict_event(body, "application/json")


JSON_BOMBS = {
    "nested_arrays": ("[" * 100_000 + "]" * 100_000, "json_too_complex"),
    "nested_objects": ('{"a":' * 50_000 + "1" + "}" * 50_000, "json_too_complex"),
    "two_million_objects": ("[" + "{}," * 2_000_000 + "{}]", "json_too_complex"),
    "one_million_numbers": ('{"images": [' + "1," * 1_000_000 + "1]}", "json_too_complex"),
    "integer_past_digit_limit": ('{"image": "aGk=", "top_k": ' + "7" * 10_000 + "}",
                                 "malformed_json"),
    "float_overflow": ('{"image": "aGk=", "top_k": 1e999}', "invalid_top_k"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(JSON_BOMBS))
def test_json_bombs_are_400_and_structure_bombs_are_never_parsed(name, invoke, monkeypatch):
    body, code = JSON_BOMBS[name]
    parsed = []
    real_loads = json.loads

    def counting_loads(text, *args, **kwargs):
        parsed.append(text)
        return real_loads(text, *args, **kwargs)

    monkeypatch.setattr(json, "loads", counting_loads)
    response = invoke(_json_event(body))
    was_parsed = body.encode() in parsed
    assert response["statusCode"] == 400
    assert body_of(response)["error"]["code"] == code
    assert was_parsed is (code != "json_too_complex")


def test_largest_valid_json_request_is_within_the_json_limits(invoke):
    photo = encode(Image.new("RGB", (32, 32), (1, 2, 3)), "PNG")
    item = "data:image/png;base64," + base64.b64encode(photo).decode()
    body = json.dumps({"images": [item] * api.MAX_BATCH, "top_k": 3}, indent=2)
    response = invoke(_json_event(body))
    assert response["statusCode"] == 200
    assert len(body_of(response)["predictions"]) == api.MAX_BATCH


# ---------------------------------------------------------------- events API Gateway never sends


def _odd_events() -> dict[str, object]:
    def jpeg_event(**changes):
        return {**predict_event(PHOTOS["rocket.jpg"].read_bytes()), **changes}

    def text_event(content_type: str, body: str):
        return predict_event(body, content_type)

    return {
        "list": [],
        "string": "POST /predict",
        "number": 7,
        "null": None,
        "headers_list": jpeg_event(headers=[["Content-Type", "image/jpeg"]]),
        "header_value_number": jpeg_event(headers={"Content-Type": 7}),
        "header_value_null": jpeg_event(headers={"Content-Type": None}),
        "multi_headers_string": jpeg_event(multiValueHeaders={"Content-Type": "image/jpeg"}),
        "multi_headers_numbers": jpeg_event(multiValueHeaders={"Content-Type": [1]}),
        "query_list": jpeg_event(queryStringParameters=[["top_k", "3"]]),
        "query_value_number": jpeg_event(queryStringParameters={"top_k": 3}),
        "multi_query_string": jpeg_event(multiValueQueryStringParameters={"top_k": "3"}),
        "body_number": jpeg_event(body=10**9),
        "body_list": jpeg_event(body=[255, 216, 255]),
        "body_object": jpeg_event(body={"image": "aGk="}),
        "base64_flag_string": jpeg_event(isBase64Encoded="true"),
        "base64_flag_number": jpeg_event(isBase64Encoded=1),
        "path_number": jpeg_event(path=1),
        "method_list": jpeg_event(httpMethod=["POST"]),
        "lone_surrogate_json_body": text_event("application/json", '{"image": "\ud800"}'),
        "lone_surrogate_image_body": text_event("image/png", "\udcff\udcd8"),
        "lone_surrogate_header": jpeg_event(headers={"Content-Type": "image/jpeg\ud800"}),
        "lone_surrogate_path": jpeg_event(path="/predict\udfff"),
    }


ODD_EVENTS = _odd_events()


@pytest.mark.parametrize("name", sorted(ODD_EVENTS))
def test_events_api_gateway_never_sends_get_400_invalid_event(name, invoke):
    response = invoke(ODD_EVENTS[name])
    assert response["statusCode"] == 400, response["body"]
    error = body_of(response)["error"]
    assert error["code"] == "invalid_event"
    assert error["message"].startswith("Not an API Gateway proxy event")


def test_absent_optional_event_fields_still_work(invoke):
    event = predict_event(PHOTOS["rocket.jpg"].read_bytes())
    for name in ("queryStringParameters", "multiValueQueryStringParameters", "multiValueHeaders"):
        event.pop(name)
    assert invoke(event)["statusCode"] == 200
