"""Image bytes -> normalized NCHW float32, torchvision's ResNet eval transform without torch.

The reference is ``transforms.Compose([Resize(256), CenterCrop(224), ToTensor(), Normalize(mean,
std)])`` applied to ``ImageOps.exif_transpose(Image.open(f)).convert("RGB")``. torchvision's PIL
path is plain Pillow (``Image.resize(size, BILINEAR)``, which always antialiases), so the same
Pillow filter and the same float32 arithmetic give the same values without torch, with two
measured exceptions that buy speed: only the centre crop is resampled (``resized_crop``: a
value may move by one of 255) and big JPEGs are DCT-scaled while decoding (``draft_size``).
docs/inference.md ("Preprocessing") gives the numbers and the tests that bound them.
"""

from __future__ import annotations

import io
import json
import math
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageOps

from errors import ApiError

# Formats the API accepts, as Pillow names them. Which one a body is comes from its magic number
# (image_format), never from asking Pillow's plugins: some of those parse, or decode, the whole
# payload just to say "not mine".
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")

# Every limit below is checked from headers and file structure, before anything is decoded or
# resized; docs/inference.md ("Limits") gives the time and memory budget they add up to.

# 40 MP covers every phone and DSLR photo (12-50 MP sensors are downscaled by clients far more
# often than not) while capping a decode at ~160 MB (Pillow keeps RGB in 4 bytes per pixel).
MAX_IMAGE_PIXELS = 40_000_000
# Resize(256) scales the *shorter* side to 256, so the resized image has 256 x 256*ratio pixels:
# a 1x3000 PNG of 95 bytes would become 256x768000 (800 MB, seconds of CPU) and 1x20M overflows
# inside Pillow. 32:1 is three times the widest web banner (970x90) and phone panoramas, and
# bounds the resized image to 256x8192 (2.1 MP, 8 MB), the size of a decoded 1600x1300 photo.
MAX_ASPECT_RATIO = 32
# libjpeg walks every block of a component once per progressive scan, and a scan of EOB runs is
# a few bytes: 1,000 repeated 16-byte scans of a 4 MP image cost 2.6 s of CPU here
# (libjpeg-turbo's LJT-01-003). libjpeg's own progressions write 6 (gray), 10 (YCbCr),
# 14 (RGB) or 18 (CMYK) scans; 32 keeps ~2x headroom over those and caps a hostile 40 MP file
# at ~4x the cost of a legitimate one.
MAX_JPEG_SCANS = 32
# Pillow parses JPEG marker segments and PNG chunks one Python call at a time (~2 us each), so
# 6 MiB of empty COM segments or unknown chunks costs over a second. Real files have tens
# (JPEG: APPn, DQT, DHT per scan, SOS; even 6 MiB of 64 KiB XMP/ICC segments is under 100) and
# libpng writes 8 KiB IDAT chunks (768 in 6 MiB), so these caps only stop manufactured files.
MAX_JPEG_SEGMENTS = 1024
MAX_PNG_CHUNKS = 16384
# JPEG draft decoding (libjpeg's DCT scaling) keeps the shorter side at least this many times
# the resize target: 1, so a 12 MP photo decodes at 1/8 (375 pixels on its shorter side for 256;
# 2 stopped at 1/4). Each 1/8 output pixel is its 8x8 block's average, itself an anti-aliasing
# filter; the photographs keep their top-1/top-5 (tests/handler/test_handler_preprocess.py).
DRAFT_OVERSAMPLING = 1
# ... but only JPEGs whose shorter side is at least this many times the target are DCT-scaled,
# so the scale is 1/4 or 1/8, never 1/2. Below it (up to about 1 MP) a full decode costs a
# millisecond or two, and a 1/2 scale moved an untrained model's probabilities by ~10 % on a
# 512x600 photograph (grace_hopper.jpg): not worth it there.
DRAFT_MIN_SHORT_SIDE = 4

# Pillow's own bomb check (warning at the limit, error at 2x) stays as a second line of defence.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


@dataclass(frozen=True)
class PreprocessSpec:
    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        raw = json.loads(text)
        if (
            raw.get("interpolation", "bilinear") != "bilinear"
            or raw.get("antialias", True) is not True
        ):
            raise ValueError(f"unsupported preprocessing (only antialiased bilinear): {raw}")
        return cls(
            resize=int(raw["resize"]),
            crop=int(raw["crop"]),
            mean=tuple(float(v) for v in raw["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in raw["std"]),  # type: ignore[arg-type]
        )


IMAGENET = PreprocessSpec(
    resize=256, crop=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Magic numbers of formats a client may plausibly send, only to name them in the 415; none of
# these bytes is ever handed to Pillow.
_OTHER_FORMATS = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"\xff\x0a", "JPEG XL"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"icns", "ICNS"),
    (b"\x76\x2f\x31\x01", "OpenEXR"),
    (b"#?RADIANCE", "Radiance HDR"),
    (b"#?RGBE", "Radiance HDR"),
    (b"SIMPLE  =", "FITS"),
    (b"%PDF-", "PDF"),
    (b"%!PS", "PostScript"),
    (b"\xc5\xd0\xd3\xc6", "PostScript"),  # DOS EPS binary header
    (b"<svg", "SVG"),
)
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1"}
_BMP_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}


def image_format(data: bytes) -> str | None:
    """The format the file's magic number names (Pillow's name for the accepted three), or None.

    Reads at most the first 32 bytes: a verdict that costs the same for any body.
    """
    head = bytes(data[:32])
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(_PNG_SIGNATURE):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in _OTHER_FORMATS:
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in _HEIF_BRANDS:
            return "HEIF"
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    if head[:1] == b"P" and head[1:2] in b"1234567" and head[2:3] in (b" ", b"\t", b"\r", b"\n"):
        return "PNM"
    return None


# A JPEG marker is 0xFF and a code byte. In entropy-coded data a 0xFF data byte is stuffed as
# FF 00, restart markers FF D0-D7 carry no length and stay inside their scan, and any number of
# FF fill bytes may precede a marker. libjpeg skips all of those the same way, as it does the
# length-less SOI and TEM; this class leaves the regex engine to skip them, in C, so the walk
# below runs once per marker segment, never once per byte.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\x01\xd0-\xd8\xff]")
_JPEG_EOI, _JPEG_SOS = 0xD9, 0xDA


def jpeg_scans(data: bytes) -> int:
    """The number of scans (SOS markers) libjpeg would decode; raises ApiError 422 past the caps.

    Walks marker segments by their lengths up to EOI, the way libjpeg's marker reader does, and
    stops as soon as MAX_JPEG_SCANS or MAX_JPEG_SEGMENTS is exceeded: bounded whatever the bytes.
    """
    scans = segments = 0
    pos = 2  # after SOI
    while (marker := _JPEG_MARKER.search(data, pos)) is not None:
        code = data[marker.start() + 1]
        if code == _JPEG_EOI:
            break
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise _too_complex(f"JPEG has more than {MAX_JPEG_SEGMENTS} marker segments")
        if code == _JPEG_SOS:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise _too_complex(
                    f"JPEG has more than {MAX_JPEG_SCANS} scans; re-encode it as baseline or "
                    "with a standard progressive script"
                )
        # The length counts its own two bytes; a bogus one (< 2) makes libjpeg stop with an
        # error, so skipping just the two bytes never under-counts what libjpeg would decode.
        pos = marker.end() + max(int.from_bytes(data[marker.end() : marker.end() + 2]), 2)
    return scans


def png_chunks(data: bytes) -> int:
    """The number of chunks up to IEND; raises ApiError 422 past MAX_PNG_CHUNKS."""
    chunks, pos = 0, len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise _too_complex(f"PNG has more than {MAX_PNG_CHUNKS} chunks")
        if data[pos + 4 : pos + 8] == b"IEND":
            break
        pos += 12 + int.from_bytes(data[pos : pos + 4])  # length, type, data, CRC
    return chunks


def _too_complex(reason: str) -> ApiError:
    return ApiError(422, "image_too_complex", f"{reason}.")


def check_size(size: tuple[int, int], max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Refuse, from the header's dimensions, an image whose decode or resize is out of budget."""
    width, height = size
    if width <= 0 or height <= 0:
        raise ApiError(400, "corrupt_image", "Image has no pixels.")
    if width * height > max_pixels:
        raise ApiError(
            413,
            "image_too_large",
            f"Image is {width}x{height} ({width * height} pixels); "
            f"the limit is {max_pixels} pixels.",
        )
    check_aspect_ratio(size)


def check_aspect_ratio(size: tuple[int, int]) -> None:
    """Refuse an aspect ratio over MAX_ASPECT_RATIO:1 (resizing its short side explodes)."""
    width, height = size
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ApiError(
            422,
            "extreme_aspect_ratio",
            f"Image is {width}x{height}; the longer side may be at most {MAX_ASPECT_RATIO} "
            "times the shorter one. Crop it to the part to classify.",
        )


def open_image(data: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Identify the image from its header and refuse what we will not decode; decodes nothing.

    In order, each before anything costlier: the magic number (415 for another known format,
    400 for no image), the file structure (JPEG scans and segments, PNG chunks: 422), then the
    dimensions Pillow reads from the header (pixels: 413, aspect ratio: 422).
    """
    fmt = image_format(data)
    if fmt not in ACCEPTED_FORMATS:
        if fmt is None:
            raise ApiError(400, "not_an_image", "The data is not a JPEG, PNG or WebP image.")
        raise ApiError(
            415,
            "unsupported_image_format",
            f"Image format {fmt} is not supported; send JPEG, PNG or WebP.",
        )
    if fmt == "JPEG":
        jpeg_scans(data)
    elif fmt == "PNG":
        png_chunks(data)
    try:
        with warnings.catch_warnings():
            # Our own limit below gives the client a 413; Pillow's warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=(fmt,))
    except Image.DecompressionBombError as exc:
        raise ApiError(413, "image_too_large", f"Image exceeds {max_pixels} pixels.") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # UnidentifiedImageError (an OSError) included: the magic number promised this format.
        raise ApiError(400, "corrupt_image", f"Image header could not be read: {exc}") from exc
    check_size(img.size, max_pixels)
    return img


def draft_size(size: tuple[int, int], target: int) -> tuple[int, int] | None:
    """The size to request from JPEG draft mode so the shorter side stays >= oversampled target.

    Returns None for JPEGs not DCT-scaled (shorter side under DRAFT_MIN_SHORT_SIDE x target).
    Pillow's draft picks the largest 1/2^k scale that keeps both sides >= the requested size.
    """
    width, height = size
    short = min(width, height)
    keep = target * DRAFT_OVERSAMPLING
    if short < max(2 * keep, DRAFT_MIN_SHORT_SIDE * target):
        return None
    factor = keep / short
    return (math.ceil(width * factor), math.ceil(height * factor))


def decode_rgb(img: Image.Image, spec: PreprocessSpec = IMAGENET) -> Image.Image:
    """Full decode (reduced for big JPEGs), EXIF orientation applied, converted like torchvision."""
    try:
        if img.format == "JPEG":
            requested = draft_size(img.size, spec.resize)
            if requested is not None:
                img.draft(None, requested)
        # Loads the pixels (so a truncated file fails here, as a 400). In place: for the usual
        # upright photo the out-of-place form would copy the whole decoded image for nothing.
        ImageOps.exif_transpose(img, in_place=True)
        # convert("RGB") is exactly what torchvision users do: alpha is dropped (not composited),
        # palette and grayscale expanded, CMYK converted by Pillow's formula. On an RGB image it
        # would only copy it.
        return img if img.mode == "RGB" else img.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise ApiError(413, "image_too_large", str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ApiError(400, "corrupt_image", f"Image is corrupt or truncated: {exc}") from exc


@lru_cache(maxsize=8)
def normalization_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """float32 [3, 256]: every uint8 value of each channel after ToTensor and Normalize.

    Computed with torchvision's own float32 operations in its order ((v / 255 - mean) / std), so
    a lookup gives bit-identical values, unlike a fused multiply-add (about 1 ulp off).
    """
    values = np.arange(256, dtype=np.float32) / np.float32(255)
    mean_ = np.asarray(mean, dtype=np.float32)[:, None]
    std_ = np.asarray(std, dtype=np.float32)[:, None]
    table = (values[None, :] - mean_) / std_
    table.flags.writeable = False
    return table


def resized_crop(img: Image.Image, spec: PreprocessSpec = IMAGENET) -> Image.Image:
    """Resize(resize) then CenterCrop(crop), resampling only the crop: a crop x crop image.

    torchvision resizes the whole image and then keeps the centre (about half of a 4:3 photo's
    resized pixels are thrown away). Pillow's ``resize(box=...)`` computes the same filter taps
    for just the kept pixels: output pixel i of the resized image samples the source around
    (i + 0.5) * source / resized, so the crop's box in source coordinates is the crop's edges
    times that scale. Two differences from resize-then-crop remain, each worth at most one of
    255 on a value: Pillow passes the box to C as float32, so the taps' positions carry float32
    rounding; and the two passes run horizontal then vertical, the order of Pillow's own resize
    for most sizes (it may pick the other order, which rounds the intermediate differently).
    Measured: 0.04 % of values moved on the shipped photographs, 2.4 % for the worst of 87
    random sizes; tests/handler/test_handler_preprocess.py bounds it and checks top-1/top-5 and
    the logits against torchvision (docs/inference.md).
    """
    width, height = img.size
    # Again here, for callers that did not come through open_image: a resize to
    # resize x (resize * ratio) would otherwise be sized by the ratio, however few pixels.
    check_aspect_ratio(img.size)
    short, long = (width, height) if width <= height else (height, width)
    # torchvision: new_long = int(size * long / short), computed in float then truncated.
    new_short, new_long = spec.resize, int(spec.resize * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    crop = spec.crop
    if crop > new_w or crop > new_h:
        # Unreachable while crop <= resize; torchvision would pad with zeros here.
        raise ValueError(f"crop {crop} larger than resized image {new_w}x{new_h}")
    # torchvision's CenterCrop rounding, in resized coordinates.
    top = round((new_h - crop) / 2.0)
    left = round((new_w - crop) / 2.0)
    if (new_w, new_h) == (width, height):
        return img.crop((left, top, left + crop, top + crop))  # exact: nothing to resample
    scale_x, scale_y = width / new_w, height / new_h
    x0, x1 = left * scale_x, (left + crop) * scale_x
    y0, y1 = top * scale_y, (top + crop) * scale_y
    # Source rows the vertical pass reads: the bilinear filter reaches max(scale, 1) pixels
    # either side of a tap's centre (Pillow's support); one row of margin for its rounding.
    reach = max(scale_y, 1.0)
    first, last = max(0, math.floor(y0 - reach)), min(height, math.ceil(y1 + reach) + 1)
    if (first, last) != (0, height):
        img = img.crop((0, first, width, last))  # a row copy: cheaper than resampling them
    rows = last - first
    # Horizontal pass (box spans every row: Pillow resamples this axis only), then vertical.
    strip = img.resize((crop, rows), Image.Resampling.BILINEAR, box=(x0, 0, x1, rows))
    return strip.resize(
        (crop, crop), Image.Resampling.BILINEAR, box=(0, y0 - first, crop, y1 - first)
    )


def normalize(
    img: Image.Image, spec: PreprocessSpec = IMAGENET, out: np.ndarray | None = None
) -> np.ndarray:
    """ToTensor -> Normalize of an RGB image, as float32 CHW (bit-identical to torchvision).

    ``out`` (float32 [3, H, W], e.g. one row of a batch) receives the result in place.
    """
    pixels = np.asarray(img, dtype=np.uint8)
    if out is None:
        out = np.empty((3, *pixels.shape[:2]), dtype=np.float32)
    table = normalization_table(spec.mean, spec.std)
    # One table lookup per value, written straight into channel-first order: no float
    # intermediates, no transpose copy. mode="clip" skips the bounds check (uint8 always fits).
    for channel in range(3):
        np.take(table[channel], pixels[:, :, channel], out=out[channel], mode="clip")
    return out


def transform(
    img: Image.Image, spec: PreprocessSpec = IMAGENET, out: np.ndarray | None = None
) -> np.ndarray:
    """Resize(resize) -> CenterCrop(crop) -> ToTensor -> Normalize, as float32 CHW.

    ``out`` (float32 [3, crop, crop], e.g. one row of a batch) receives the result in place.
    """
    return normalize(resized_crop(img, spec), spec, out)


def preprocess(
    data: bytes, spec: PreprocessSpec = IMAGENET, out: np.ndarray | None = None
) -> np.ndarray:
    """Image file bytes -> float32 [3, crop, crop]; raises ApiError for anything unusable."""
    return transform(decode_rgb(open_image(data), spec), spec, out)
