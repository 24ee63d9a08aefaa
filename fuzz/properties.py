"""What every fuzz target checks, free of atheris so the test suite can drive the same checks.

One input either gives what the handler goes on with (a tensor filled in place; a parsed
request) or raises ``ApiError`` with a 4xx status and a code docs/openapi.yaml declares, and it
stays within the per-input budget. Anything else raises ``Finding``: the atheris targets let it
propagate (a crash artifact), the tests assert it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
# The function's modules import each other flat, as in the image (lambda_src/Dockerfile).
if str(ROOT / "lambda_src") not in sys.path:
    sys.path.insert(0, str(ROOT / "lambda_src"))

import api  # noqa: E402
import preprocess  # noqa: E402
from errors import ApiError  # noqa: E402

T = TypeVar("T")


@dataclass(frozen=True)
class Budget:
    """What one input may cost before it is a finding, whatever its answer."""

    cpu_s: float  # CPU seconds (time.process_time), so a busy shared machine does not count
    memory_mib: float  # growth of the peak resident set above where it stood before the input


# docs/inference.md ("Time and memory budget per request", scripts/bench_limits.py): the costliest
# images the limits admit (40 MP PNG or progressive CMYK JPEG) cost ~1 s of CPU and ~310 MiB of
# peak growth, which is what the pixel cap implies: 40 MP decoded at 4 bytes a pixel (153 MiB)
# plus its RGB conversion (153 MiB). Twice the time leaves room for a noisy machine and
# instrumented Pillow; 512 MiB is that memory with 1.6x headroom. Without their limits the
# refused classes overshoot both: a 1x3000 PNG grew 782 MiB, a JPEG with 1,000 scans took 3.2 s.
IMAGE_BUDGET = Budget(cpu_s=2.0, memory_mib=512)
# Parsing is a C scan of at most a 6 MiB body (~20 ms, docs) and a few copies of it (~40 MiB).
EVENT_BUDGET = Budget(cpu_s=0.5, memory_mib=64)
# The preprocessing every model this project exports declares (model_export, manifest.json).
SPEC = preprocess.IMAGENET
NUM_CLASSES = 1000


@dataclass
class Costliest:
    """The most any one input has cost in this process (make fuzz reports it)."""

    cpu_s: float = 0.0
    memory_mib: float = 0.0


COSTLIEST = Costliest()


class Finding(Exception):
    """An input the property fails on: a bug to fix, not a client error."""


@cache
def documented_codes() -> frozenset[str]:
    spec = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
    error = spec["components"]["schemas"]["Error"]["properties"]["error"]
    return frozenset(error["properties"]["code"]["enum"])


# ---------------------------------------------------------------- budget


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def _reset_peak() -> bool:
    """VmHWM := VmRSS (Linux >= 4.0), so the peak seen next belongs to the next input alone."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


MEASURES_MEMORY = Path("/proc/self/clear_refs").exists()


def current_rss_mib() -> float:
    return _status_kib("VmRSS") / 1024 if MEASURES_MEMORY else 0.0


@contextmanager
def within(budget: Budget, what: str) -> Iterator[None]:
    """Run the block; raise Finding if it used more CPU or peak memory than the budget.

    Memory is measured on Linux only (the peak resident set, reset through /proc before the
    block, as scripts/bench_limits.py does); elsewhere only CPU time is.
    """
    memory = MEASURES_MEMORY and _reset_peak()
    before_kib = _status_kib("VmRSS") if memory else 0
    started = time.process_time()
    yield
    cpu = time.process_time() - started
    grown_mib = (_status_kib("VmHWM") - before_kib) / 1024 if memory else 0.0
    COSTLIEST.cpu_s = max(COSTLIEST.cpu_s, cpu)
    COSTLIEST.memory_mib = max(COSTLIEST.memory_mib, grown_mib)
    if cpu > budget.cpu_s:
        raise Finding(f"over budget: {what} took {cpu:.2f} s of CPU (budget {budget.cpu_s} s)")
    if grown_mib > budget.memory_mib:
        raise Finding(
            f"over budget: {what} grew the peak resident set by {grown_mib:.0f} MiB "
            f"(budget {budget.memory_mib:.0f} MiB)"
        )


def _client_error(error: ApiError, what: str) -> str:
    if not 400 <= error.status < 500:
        raise Finding(f"{what} answered {error.status} {error.code}: {error.message}")
    if error.code not in documented_codes():
        raise Finding(f"{what} answered {error.status} with undocumented code {error.code!r}")
    if not error.message:
        raise Finding(f"{what} answered {error.status} {error.code} without a message")
    return error.code


def _attempt(call: Callable[[], T], what: str) -> T | ApiError:
    """call()'s result or the ApiError it raised; any other exception becomes a Finding."""
    try:
        return call()
    except ApiError as error:
        return error
    except Finding:
        raise
    except Exception as exc:  # the point: anything but ApiError is a finding
        raise Finding(f"{what} raised {type(exc).__name__}: {exc}") from exc


# ---------------------------------------------------------------- image bytes


def _tensor_bounds() -> tuple[np.ndarray, np.ndarray]:
    """Per channel, the values ToTensor+Normalize can give: (0 - mean)/std .. (1 - mean)/std."""
    mean = np.asarray(SPEC.mean, dtype=np.float64)[:, None, None]
    std = np.asarray(SPEC.std, dtype=np.float64)[:, None, None]
    return (0.0 - mean) / std - 1e-5, (1.0 - mean) / std + 1e-5


def check_image(data: bytes, budget: Budget = IMAGE_BUDGET) -> str:
    """The handler's image path (handler.predict): ``preprocess.preprocess(data, spec, out=row)``.

    Returns ``"tensor"`` or the refusal's code. The row is poisoned with NaN first because the
    handler uses the row, not the return value: a value left unwritten is a finding.
    """
    row = np.full((3, SPEC.crop, SPEC.crop), np.nan, dtype=np.float32)
    with within(budget, "preprocess"):
        result = _attempt(lambda: preprocess.preprocess(data, SPEC, out=row), "preprocess")
    if isinstance(result, ApiError):
        return _client_error(result, "preprocess")
    low, high = _tensor_bounds()
    if not np.isfinite(row).all():
        raise Finding("preprocess left values of the output row unwritten (NaN) or not finite")
    if not ((row >= low) & (row <= high)).all():
        raise Finding("preprocess wrote values outside what ToTensor+Normalize can give")
    return "tensor"


# ---------------------------------------------------------------- events


def check_event(
    event: Any, expected_images: list[bytes] | None = None, budget: Budget = EVENT_BUDGET
) -> str:
    """The handler's parsing (handler.dispatch, predict): route, parse_predict, resolve_top_k.

    Returns the route, ``"parsed"`` or the refusal's code. ``expected_images``: what the body
    must decode to when the harness built it (a binary body comes back byte for byte).
    """

    def parse() -> tuple[str, Any, int | None]:
        path = api.route(event)
        if path != "/predict":
            return path, None, None
        request = api.parse_predict(event)
        return path, request, api.resolve_top_k(request.top_k, NUM_CLASSES)

    with within(budget, "parsing the event"):
        result = _attempt(parse, "parsing the event")
    if isinstance(result, ApiError):
        return _client_error(result, "parsing the event")
    path, request, top_k = result
    if request is None:
        return path
    images = request.images
    if not isinstance(images, list) or not 1 <= len(images) <= api.MAX_BATCH:
        raise Finding(f"parse_predict returned {type(images).__name__} of images, not 1-8")
    if not all(isinstance(image, bytes) and len(image) <= api.MAX_BODY_BYTES for image in images):
        raise Finding("parse_predict returned an image that is not bytes within MAX_BODY_BYTES")
    if not request.batch and len(images) != 1:
        raise Finding(f"a single-image request parsed into {len(images)} images")
    if not (isinstance(top_k, int) and 1 <= top_k <= NUM_CLASSES):
        raise Finding(f"resolve_top_k gave {top_k!r}")
    if expected_images is not None and images != expected_images:
        raise Finding("the parsed images differ from the body the client sent")
    return "parsed"


def event_from_json(text: str) -> Any:
    """A direct invoke's payload as Lambda hands it over (None if Lambda could not parse it)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None
