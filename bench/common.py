"""Paths, benchmark images, API Gateway events and small statistics shared by the bench modules."""

from __future__ import annotations

import base64
import copy
import json
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LAMBDA_SRC = ROOT / "lambda_src"
EVENTS = ROOT / "tests" / "events"
BUILD = ROOT / "build" / "bench"
RESULTS = Path(__file__).resolve().parent / "results"
PLOT = ROOT / "docs" / "img" / "bench.png"

# The three request images: a typical phone-upload-sized JPEG, a 12-megapixel camera JPEG and a
# lossless PNG of the typical photo. Built from real photographs shipped in installed wheels.
CASES = {
    "jpeg_640x480": ("image/jpeg", "typical JPEG 640x480"),
    "jpeg_12mp": ("image/jpeg", "12 MP JPEG 4000x3000"),
    "png_640x480": ("image/png", "PNG 640x480"),
}


def photo(name: str) -> Path:
    from model_export.photos import photographs

    for path in photographs():
        if path.name == name:
            return path
    raise FileNotFoundError(f"photograph {name} is not installed (see model_export/photos.py)")


def make_images(out_dir: Path) -> dict[str, Path]:
    """Write the benchmark images (deterministic bytes) and return case -> path."""
    from PIL import Image, ImageOps

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "jpeg_640x480": out_dir / "grace_hopper_640x480.jpg",
        "jpeg_12mp": out_dir / "astronaut_4000x3000.jpg",
        "png_640x480": out_dir / "grace_hopper_640x480.png",
    }
    if all(p.is_file() for p in paths.values()):
        return paths
    with Image.open(photo("grace_hopper.jpg")) as src:
        typical = ImageOps.fit(src.convert("RGB"), (640, 480), Image.Resampling.LANCZOS)
    # quality 90 with 4:2:0 subsampling is what phone cameras and browsers typically produce.
    typical.save(paths["jpeg_640x480"], "JPEG", quality=90)
    typical.save(paths["png_640x480"], "PNG")
    with Image.open(photo("astronaut.png")) as src:
        big = ImageOps.fit(src.convert("RGB"), (4000, 3000), Image.Resampling.LANCZOS)
    big.save(paths["jpeg_12mp"], "JPEG", quality=90)
    return paths


def predict_event(body: bytes, content_type: str) -> dict[str, Any]:
    """The recorded API Gateway REST proxy event (tests/events) with the body and type swapped.

    Binary bodies arrive base64-encoded with isBase64Encoded, exactly as API Gateway sends
    binary media types; the recorded query string (top_k=3) is dropped so top_k is the default.
    """
    event = copy.deepcopy(json.loads((EVENTS / "predict_post.json").read_text()))
    for key in ("headers", "multiValueHeaders"):
        event[key] = {
            k: v for k, v in (event.get(key) or {}).items() if k.lower() != "content-type"
        }
    event["headers"]["Content-Type"] = content_type
    event["multiValueHeaders"]["Content-Type"] = [content_type]
    if content_type == "application/json":
        event["body"] = body.decode("utf-8")
        event["isBase64Encoded"] = False
    else:
        event["body"] = base64.b64encode(body).decode("ascii")
        event["isBase64Encoded"] = True
    event["queryStringParameters"] = None
    event["multiValueQueryStringParameters"] = None
    return event


def batch_event(image: bytes, size: int) -> dict[str, Any]:
    b64 = base64.b64encode(image).decode("ascii")
    return predict_event(json.dumps({"images": [b64] * size}).encode(), "application/json")


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), q in [0, 100]."""
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 3),
        "p90": round(percentile(values, 90), 3),
        "p99": round(percentile(values, 99), 3),
        "mean": round(statistics.fmean(values), 3),
        "min": round(min(values), 3),
    }
