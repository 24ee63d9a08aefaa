"""Image bytes -> normalized NCHW float32, identical to torchvision's ResNet eval transform.

The reference is ``transforms.Compose([Resize(256), CenterCrop(224), ToTensor(), Normalize(mean,
std)])`` applied to ``ImageOps.exif_transpose(Image.open(f)).convert("RGB")``. torchvision's PIL
path is plain Pillow (``Image.resize(size, BILINEAR)``, which always antialiases), so re-doing
the same Pillow calls with the same integer arithmetic gives the same pixels without torch.
"""

from __future__ import annotations

import io
import json
import math
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from errors import ApiError

# Formats the API accepts; anything else Pillow can identify is a 415, not a 400.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
# 40 MP covers every phone and DSLR photo (12-50 MP sensors are downscaled by clients far more
# often than not) while capping a decode at ~120 MB of RGB, safe at the function's memory size.
MAX_IMAGE_PIXELS = 40_000_000
# JPEG draft decoding (DCT scaling by 1/2, 1/4, 1/8) keeps the shorter side at least this many
# times the resize target, so the final antialiased resize still has 2x oversampling to work with.
DRAFT_OVERSAMPLING = 2

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


def open_image(data: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Identify the image from its header only and refuse what we will not decode."""
    try:
        with warnings.catch_warnings():
            # Our own limit below gives the client a 413; Pillow's warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ApiError(413, "image_too_large", f"Image exceeds {max_pixels} pixels.") from exc
    except UnidentifiedImageError:
        raise _unaccepted(data) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ApiError(400, "corrupt_image", f"Image header could not be read: {exc}") from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ApiError(400, "corrupt_image", "Image has no pixels.")
    if width * height > max_pixels:
        raise ApiError(
            413,
            "image_too_large",
            f"Image is {width}x{height} ({width * height} pixels); "
            f"the limit is {max_pixels} pixels.",
        )
    return img


def _unaccepted(data: bytes) -> ApiError:
    """A 415 if Pillow knows the format (GIF, BMP, TIFF...), else a 400: the bytes are no image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fmt = Image.open(io.BytesIO(data)).format
    except Exception:  # any failure to identify means "not an image"
        fmt = None
    if fmt:
        return ApiError(
            415,
            "unsupported_image_format",
            f"Image format {fmt} is not supported; send JPEG, PNG or WebP.",
        )
    return ApiError(400, "not_an_image", "The data is not a JPEG, PNG or WebP image.")


def draft_size(size: tuple[int, int], target: int) -> tuple[int, int] | None:
    """The size to request from JPEG draft mode so the shorter side stays >= oversampled target.

    Returns None when no reduction is possible (Pillow's draft picks the largest 1/2^k scale
    that keeps both sides >= the requested size).
    """
    width, height = size
    short = min(width, height)
    keep = target * DRAFT_OVERSAMPLING
    if short < 2 * keep:
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


def transform(
    img: Image.Image, spec: PreprocessSpec = IMAGENET, out: np.ndarray | None = None
) -> np.ndarray:
    """Resize(resize) -> CenterCrop(crop) -> ToTensor -> Normalize, as float32 CHW.

    ``out`` (float32 [3, crop, crop], e.g. one row of a batch) receives the result in place.
    """
    width, height = img.size
    short, long = (width, height) if width <= height else (height, width)
    # torchvision: new_long = int(size * long / short), computed in float then truncated.
    new_short, new_long = spec.resize, int(spec.resize * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    crop = spec.crop
    if crop > new_w or crop > new_h:
        # Unreachable while crop <= resize; torchvision would pad with zeros here.
        raise ValueError(f"crop {crop} larger than resized image {new_w}x{new_h}")
    top = round((new_h - crop) / 2.0)
    left = round((new_w - crop) / 2.0)
    pixels = np.asarray(img.crop((left, top, left + crop, top + crop)), dtype=np.uint8)
    if out is None:
        out = np.empty((3, crop, crop), dtype=np.float32)
    table = normalization_table(spec.mean, spec.std)
    # One table lookup per value, written straight into channel-first order: no float
    # intermediates, no transpose copy. mode="clip" skips the bounds check (uint8 always fits).
    for channel in range(3):
        np.take(table[channel], pixels[:, :, channel], out=out[channel], mode="clip")
    return out


def preprocess(
    data: bytes, spec: PreprocessSpec = IMAGENET, out: np.ndarray | None = None
) -> np.ndarray:
    """Image file bytes -> float32 [3, crop, crop]; raises ApiError for anything unusable."""
    return transform(decode_rgb(open_image(data), spec), spec, out)
