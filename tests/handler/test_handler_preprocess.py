"""Preprocessing parity with torchvision itself, on the shipped real photographs and variants."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, ImageOps
from torchvision import transforms

import preprocess
from errors import ApiError
from model_export.photos import photographs

PHOTOS = {p.name: p for p in photographs()}
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TORCHVISION_EVAL = transforms.Compose(
    [
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ]
)


def reference(data: bytes) -> np.ndarray:
    """What a torchvision user computes for these file bytes."""
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    return TORCHVISION_EVAL(img).numpy()


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **params)
    return out.getvalue()


@pytest.fixture
def no_draft(monkeypatch):
    """Full-resolution decode, to compare pixel-exactly with torchvision's full decode."""
    monkeypatch.setattr(preprocess, "draft_size", lambda size, target: None)


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_matches_torchvision_on_real_photographs(name, no_draft):
    data = PHOTOS[name].read_bytes()
    ours = preprocess.preprocess(data)
    assert ours.shape == (3, 224, 224)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference(data), rtol=0, atol=1e-6)


def _variants() -> dict[str, bytes]:
    chelsea = Image.open(PHOTOS["chelsea.png"]).convert("RGB")  # 451x300, landscape
    astronaut = Image.open(PHOTOS["astronaut.png"]).convert("RGB")
    alpha = Image.linear_gradient("L").resize(chelsea.size)
    rgba = chelsea.copy()
    rgba.putalpha(alpha)
    la = chelsea.convert("L")
    la.putalpha(alpha)
    palette = chelsea.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette_transparent = palette.copy()
    palette_transparent.info["transparency"] = 0
    tall = astronaut.resize((300, 521))
    return {
        "grayscale_png": encode(chelsea.convert("L"), "PNG"),
        "grayscale_jpeg": encode(chelsea.convert("L"), "JPEG", quality=90),
        "bilevel_png": encode(chelsea.convert("1"), "PNG"),
        "sixteen_bit_png": encode(chelsea.convert("L").convert("I;16"), "PNG"),
        "palette_png": encode(palette, "PNG"),
        "palette_transparency_png": encode(palette_transparent, "PNG"),
        "rgba_png": encode(rgba, "PNG"),
        "la_png": encode(la, "PNG"),
        "rgba_webp": encode(rgba, "WEBP", lossless=True),
        "webp_lossy": encode(chelsea, "WEBP", quality=80),
        "cmyk_jpeg": encode(chelsea.convert("CMYK"), "JPEG", quality=92),
        "portrait_odd_size_png": encode(tall, "PNG"),
        "smaller_than_crop_png": encode(chelsea.resize((150, 100)), "PNG"),
    }


VARIANTS = _variants()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_matches_torchvision_on_modes_and_formats(name):
    data = VARIANTS[name]
    np.testing.assert_allclose(preprocess.preprocess(data), reference(data), rtol=0, atol=1e-6)


def _with_orientation(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


@pytest.mark.parametrize(("orientation", "transpose"), [
    (3, Image.Transpose.ROTATE_180),
    (6, Image.Transpose.ROTATE_270),
    (8, Image.Transpose.ROTATE_90),
])  # fmt: skip
def test_exif_orientation_is_applied(orientation, transpose):
    stored = Image.open(PHOTOS["chelsea.png"]).convert("RGB")
    data = _with_orientation(stored, orientation)
    ours = preprocess.preprocess(data)
    np.testing.assert_allclose(ours, reference(data), rtol=0, atol=1e-6)
    # Independently of the reference: equal to the JPEG's pixels physically rotated.
    upright = Image.open(io.BytesIO(data))
    upright.load()
    upright = upright.transpose(transpose)
    np.testing.assert_allclose(
        ours, TORCHVISION_EVAL(upright.convert("RGB")).numpy(), rtol=0, atol=1e-6
    )
    assert not np.allclose(ours, TORCHVISION_EVAL(stored).numpy(), atol=1e-2)


def _twelve_megapixel_jpeg() -> bytes:
    photo = Image.open(PHOTOS["chelsea.png"]).convert("RGB")
    return encode(photo.resize((4256, 2832), Image.Resampling.LANCZOS), "JPEG", quality=92)


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return _twelve_megapixel_jpeg()


def test_twelve_megapixel_jpeg_is_decoded_at_reduced_scale(big_jpeg):
    img = preprocess.open_image(big_jpeg)
    assert img.size == (4256, 2832)
    decoded = preprocess.decode_rgb(img)
    # DCT scaling by 1/4: the shorter side stays >= 2 x 256 (1/8 would give 354).
    assert decoded.size == (1064, 708)


def test_draft_only_reduces_big_jpegs():
    assert preprocess.draft_size((1000, 1000), 256) is None
    assert preprocess.draft_size((1024, 1500), 256) == (512, 750)
    retina = preprocess.open_image(PHOTOS["retina.jpg"].read_bytes())
    assert preprocess.decode_rgb(retina).size == (706, 706)  # 1411 / 2
    png = Image.open(PHOTOS["chelsea.png"]).convert("RGB").resize((2100, 1100))
    assert preprocess.decode_rgb(preprocess.open_image(encode(png, "PNG"))).size == (2100, 1100)


@pytest.fixture(scope="module")
def fp32_session(fp32_model_dir: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(fp32_model_dir / "model.onnx"))


def _logits(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return session.run(None, {"input": x[None]})[0][0]


def test_twelve_megapixel_jpeg_keeps_top1_of_full_decode(big_jpeg, fp32_session):
    drafted = preprocess.preprocess(big_jpeg)
    full = reference(big_jpeg)
    # The reduced decode feeds the model nearly the same pixels ...
    assert float(np.abs(drafted - full).mean()) < 0.01
    got, want = _logits(fp32_session, drafted), _logits(fp32_session, full)
    assert int(got.argmax()) == int(want.argmax())
    assert list(np.argsort(-got)[:5]) == list(np.argsort(-want)[:5])
    # ... and, since the test model is untrained (its top-1 barely depends on the input), the
    # logits must also stay far closer to the full decode than another photo's logits are.
    other = _logits(fp32_session, reference(PHOTOS["coffee.png"].read_bytes()))
    assert np.linalg.norm(got - want) < 0.02 * np.linalg.norm(other - want)


def _png_claiming(width: int, height: int) -> bytes:
    """A real PNG whose header is rewritten to claim huge dimensions (pixel data unchanged)."""
    data = bytearray(PHOTOS["chelsea.png"].read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize(("width", "height"), [(8_000, 6_000), (20_000, 20_000)])
def test_decompression_bomb_is_refused_from_the_header(width, height):
    with pytest.raises(ApiError) as caught:
        preprocess.preprocess(_png_claiming(width, height))
    # 413, not the 400 a decode of pixel data that cannot fill the claimed size would give.
    assert (caught.value.status, caught.value.code) == (413, "image_too_large")
    assert str(preprocess.MAX_IMAGE_PIXELS) in caught.value.message


def test_image_just_under_the_pixel_limit_is_accepted():
    side = int(preprocess.MAX_IMAGE_PIXELS**0.5)
    img = preprocess.open_image(_png_claiming(side, side))
    assert img.size == (side, side)


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"definitely not an image", 400, "not_an_image"),
        (PHOTOS["rocket.jpg"].read_bytes()[:5000], 400, "corrupt_image"),
        (PHOTOS["chelsea.png"].read_bytes()[:3000], 400, "corrupt_image"),
        (encode(Image.new("RGB", (300, 300), "red"), "GIF"), 415, "unsupported_image_format"),
        (encode(Image.new("RGB", (300, 300), "red"), "BMP"), 415, "unsupported_image_format"),
        (encode(Image.new("RGB", (300, 300), "red"), "TIFF"), 415, "unsupported_image_format"),
    ],
    ids=["text", "truncated_jpeg", "truncated_png", "gif", "bmp", "tiff"],
)
def test_unusable_bytes_raise_client_errors(data, status, code):
    with pytest.raises(ApiError) as caught:
        preprocess.preprocess(data)
    assert (caught.value.status, caught.value.code) == (status, code)


@pytest.mark.parametrize("name", sorted(PHOTOS) + sorted(VARIANTS))
def test_bit_identical_to_torchvision(name, no_draft):
    """Not just within tolerance: the normalization reproduces torchvision's float32 rounding."""
    data = PHOTOS[name].read_bytes() if name in PHOTOS else VARIANTS[name]
    np.testing.assert_array_equal(preprocess.preprocess(data), reference(data))


@pytest.mark.parametrize(
    ("mean", "std"),
    [(MEAN, STD), ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]), ([0.1, 0.7, 0.3], [1.3, 0.2, 0.9])],
)
def test_every_pixel_value_normalizes_exactly_like_torchvision(mean, std):
    # One 3x256 image: row r holds every value 0..255 in every channel, shifted by r.
    values = (np.arange(256)[None, :] + 85 * np.arange(3)[:, None]) % 256
    pixels = np.repeat(values[:, :, None], 3, axis=2).astype(np.uint8)
    want = transforms.Normalize(mean, std)(transforms.ToTensor()(Image.fromarray(pixels))).numpy()
    table = preprocess.normalization_table(tuple(mean), tuple(std))
    assert table.dtype == np.float32
    assert table.shape == (3, 256)
    np.testing.assert_array_equal(table[:, values], want)  # [channel, row, column]


def test_custom_spec_matches_torchvision():
    """Another model's manifest (other mean/std/sizes) gets its own table, not ImageNet's."""
    spec = preprocess.PreprocessSpec(
        resize=160, crop=128, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4)
    )
    data = PHOTOS["coffee.png"].read_bytes()
    preprocess.preprocess(data)  # the ImageNet table is built (and cached) first
    tf = transforms.Compose(
        [
            transforms.Resize(160),
            transforms.CenterCrop(128),
            transforms.ToTensor(),
            transforms.Normalize(list(spec.mean), list(spec.std)),
        ]
    )
    want = tf(Image.open(io.BytesIO(data)).convert("RGB")).numpy()
    np.testing.assert_array_equal(preprocess.preprocess(data, spec), want)


def test_output_is_written_into_the_given_batch_row():
    data = PHOTOS["rocket.jpg"].read_bytes()
    batch = np.full((2, 3, 224, 224), 7.0, dtype=np.float32)
    result = preprocess.preprocess(data, out=batch[1])
    assert np.shares_memory(result, batch)
    np.testing.assert_array_equal(batch[1], preprocess.preprocess(data))
    assert (batch[0] == 7.0).all()


def test_decode_leaves_an_upright_rgb_image_usable():
    """In-place EXIF handling: the decoded image is loaded, upright and RGB."""
    stored = Image.open(PHOTOS["chelsea.png"]).convert("RGB")  # 451x300
    img = preprocess.decode_rgb(preprocess.open_image(_with_orientation(stored, 6)))
    assert (img.mode, img.size) == ("RGB", (300, 451))
    assert img.getexif().get(0x0112) is None
