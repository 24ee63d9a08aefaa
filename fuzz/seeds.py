"""Seed corpora and dictionaries, generated at run time (nothing binary is committed).

Image seeds: the rollout hook's reference photo made small, in every accepted format and the
modes and features the decoders branch on, plus the hostile inputs the handler tests build
(tests/handler/hostile_inputs.py), each cut to fit the fuzzer's input size. Event seeds: the
same photo in raw and JSON bodies, the recorded SAM events as direct invokes, and the JSON that
used to be a 500.
"""

from __future__ import annotations

import base64
import json
import sys
import zlib
from pathlib import Path

from PIL import Image

from fuzz import event_input
from fuzz.event_input import BINARY, CLAIMED_BASE64, DIRECT_INVOKE, TEXT
from fuzz.properties import ROOT

# The handler tests' builders of hostile inputs (a flat module, as pytest imports it); appended,
# so nothing of the tests can shadow a module of the project.
if str(ROOT / "tests" / "handler") not in sys.path:
    sys.path.append(str(ROOT / "tests" / "handler"))
import hostile_inputs as hostile

PHOTO = ROOT / "rollout_hook" / "reference.jpg"
# Small enough that a mutation is cheap, large enough to need the resize and the crop.
SEED_SIZE = (72, 48)

# libFuzzer dictionaries: tokens a byte-level mutator would rarely assemble by chance.
DICTIONARIES: dict[str, tuple[bytes, ...]] = {
    "image": (
        b"\xff\xd8\xff", b"\xff\xc0", b"\xff\xc2", b"\xff\xc4", b"\xff\xda", b"\xff\xdb",
        b"\xff\xdd", b"\xff\xe1", b"\xff\xfe", b"\xff\xd9", b"Exif\x00\x00", b"MM\x00*",
        b"II*\x00", b"\x89PNG\r\n\x1a\n", b"IHDR", b"IDAT", b"IEND", b"PLTE", b"tRNS", b"eXIf",
        b"iCCP", b"acTL", b"fcTL", b"fdAT", b"RIFF", b"WEBP", b"VP8 ", b"VP8L", b"VP8X",
        b"ANIM", b"ANMF", b"ALPH", b"ICCP", b"EXIF",
    ),
    "event": (
        b'"image"', b'"images"', b'"top_k"', b"data:image/jpeg;base64,", b'"body"',
        b'"headers"', b'"multiValueHeaders"', b'"isBase64Encoded"', b'"httpMethod"',
        b'"path"', b'"/predict"', b'"POST"', b'"Content-Type"', b'"queryStringParameters"',
        b"\\ud800", b"1e999", b"null", b"true",
    ),
}  # fmt: skip


def _photo(mode: str = "RGB") -> Image.Image:
    with Image.open(PHOTO) as img:
        return img.convert("RGB").resize(SEED_SIZE, Image.Resampling.LANCZOS).convert(mode)


def _with_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOF0) declaring another size; the data stays as it is."""
    sof = jpeg.index(b"\xff\xc0")
    return jpeg[: sof + 5] + height.to_bytes(2) + width.to_bytes(2) + jpeg[sof + 9 :]


def image_seeds() -> dict[str, bytes]:
    rgb = _photo()
    rgba = rgb.copy()
    rgba.putalpha(_photo("L"))
    flipped = rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 (exif_transpose's path)
    encode = hostile.encode
    return {
        "photo.jpg": encode(rgb, "JPEG", quality=80),
        "photo-exif-rotated.jpg": encode(rgb, "JPEG", quality=80, exif=exif.tobytes()),
        "photo-progressive.jpg": encode(rgb, "JPEG", quality=80, progressive=True),
        "photo-restart-markers.jpg": encode(rgb, "JPEG", restart_marker_rows=1),
        "photo-gray.jpg": encode(rgb.convert("L"), "JPEG"),
        "photo-cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG"),
        "photo.png": encode(rgb, "PNG"),
        "photo-rgba.png": encode(rgba, "PNG"),
        "photo-palette.png": encode(rgb.quantize(16), "PNG"),
        "photo-gray16.png": encode(rgb.convert("L").convert("I;16"), "PNG"),
        "photo-bilevel.png": encode(rgb.convert("1"), "PNG"),
        "photo-animated.png": encode(rgb, "PNG", save_all=True, append_images=[flipped]),
        "photo.webp": encode(rgb, "WEBP", quality=70),
        "photo-lossless-rgba.webp": encode(rgba, "WEBP", lossless=True),
        "photo-animated.webp": encode(rgb, "WEBP", save_all=True, append_images=[flipped]),
        "photo-exif.webp": encode(rgb, "WEBP", exif=exif.tobytes()),
        # At the limits: the costliest image admitted that fits the fuzzer's input size (40 MP,
        # ~0.4 s and ~190 MiB), and headers declaring 36 MP over a few bytes.
        "limit-40mp-gray.png": encode(Image.new("L", (6324, 6324), 90), "PNG", optimize=True),
        "limit-claims-36mp.jpg": _with_jpeg_size(encode(rgb, "JPEG"), 6000, 6000),
        "limit-claims-36mp.png": hostile.png_claiming(6000, 6000, zlib.compress(bytes(1000))),
        # The refused classes: the fuzzer mutates around each bound.
        "sliver.png": hostile.sliver_png(3000),
        "sliver.webp": hostile.sliver_webp(),
        "scans-40.jpg": hostile.jpeg_with_scans(40, size=(32, 32)),
        "comments-1100.jpg": hostile.jpeg_with_comments(1100),
        "claims-100mp.png": hostile.png_claiming(10_000, 10_000, b"x\x9c\x03\x00\x00\x00\x00\x01"),
        "eps.eps": hostile.eps_with_comment_lines(16),
    }


def event_seeds() -> dict[str, bytes]:
    photo = _photo()
    jpeg = hostile.encode(photo.resize((24, 16)), "JPEG", quality=60)
    png = hostile.encode(photo.resize((24, 16)), "PNG")
    b64 = base64.b64encode(jpeg).decode("ascii")
    single = json.dumps({"image": b64}).encode()
    batch = json.dumps({"images": [b64, "data:image/png;base64," + base64.b64encode(png).decode()],
                        "top_k": 2}).encode()  # fmt: skip
    events = ROOT / "tests" / "events"
    encode = event_input.encode
    return {
        "raw-jpeg": encode("image/jpeg", BINARY, jpeg, top_k="3"),
        "raw-png-multivalue": encode("image/png", BINARY, png, multi_only=True, lower=True),
        "raw-with-parameters": encode("Image/PNG ; q=1", BINARY, png),
        "json-single": encode("application/json", TEXT, single, top_k="5"),
        "json-batch": encode("application/json; charset=utf-8", TEXT, batch),
        "json-base64-body": encode("application/json", BINARY, single),
        "json-claimed-base64": encode("application/json", CLAIMED_BASE64, b"eyJpbWFnZSI6ICIifQ=="),
        "json-big-int": encode("application/json", TEXT, b'{"top_k": ' + b"9" * 5000 + b"}"),
        "json-nested": encode("application/json", TEXT, b"[" * 40 + b"]" * 40),
        "json-surrogate": encode("application/json", TEXT, b'{"image": "\xed\xa0\x80"}'),
        "no-content-type": encode(None, TEXT, single),
        "direct-predict": encode(None, DIRECT_INVOKE, (events / "predict_post.json").read_bytes()),
        "direct-health": encode(None, DIRECT_INVOKE, (events / "health_get.json").read_bytes()),
        "direct-odd-types": encode(None, DIRECT_INVOKE, b'{"path": "/predict", "httpMethod": '
                                   b'"POST", "headers": [], "body": 1, "isBase64Encoded": "yes"}'),
    }  # fmt: skip


SEEDS = {"image": image_seeds, "event": event_seeds}


def write(target: str, directory: Path) -> int:
    """Write the target's seeds into directory (replacing earlier ones); returns how many."""
    directory.mkdir(parents=True, exist_ok=True)
    seeds = SEEDS[target]()
    for name, data in seeds.items():
        (directory / name).write_bytes(data)
    return len(seeds)


def write_dictionary(target: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ['"' + "".join(f"\\x{b:02x}" for b in token) + '"' for token in DICTIONARIES[target]]
    path.write_text("\n".join(lines) + "\n")
