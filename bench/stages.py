"""Where a request's time goes outside the model: every stage of the handler's path, timed alone.

Runs inside a warm handler worker (bench/worker.py, command ``stages``) on that worker's own
``lambda_src`` modules: the current ones, or the reference revision's (``REFERENCE_REV``, the
request path before issue #12, extracted from git by ``reference_src``), so the same run shows
the path before and after. Each iteration walks one request through the same public functions
the handler calls, in order, and times each with ``perf_counter``:

event parse (``api.route`` + ``api.parse_predict`` of the same event with a 3-byte body), base64
(``api.body_bytes``), header decode (``preprocess.open_image``), full decode (``decode_rgb``),
resize, crop+normalize, session input (the batch array), inference (not overhead), top-k, JSON
(``api.json_response``). The Powertools decorators are timed as the extra cost of each wrapper
around a no-op handler (the same Logger/Tracer/Metrics objects, configured as the handler
configures them), the metrics with the two ``add_metric`` calls a request makes, and the
``Request served`` log line on its own.
"""

from __future__ import annotations

import base64
import copy
import io
import statistics
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The request path before issue #12 (main at the start of the work): full 256 resize, 1/4 DCT
# scale for 12 MP, Tracer wrapper always on. Measured beside the current path in every run.
REFERENCE_REV = "3a21276886148c43994867570849823c6f4c8072"

STAGES = (
    "event_parse",
    "base64",
    "header_decode",
    "full_decode",
    "resize",
    "crop_normalize",
    "session_input",
    "top_k",
    "json",
    "pt_logger_inject",
    "pt_tracer_capture",
    "pt_metrics_flush",
    "pt_log_line",
)
LABELS = {
    "event_parse": "event parse (route, headers, query)",
    "base64": "base64 decode of the body",
    "header_decode": "header decode + limits (open_image)",
    "full_decode": "full decode (decode_rgb)",
    "resize": "resize",
    "crop_normalize": "crop + normalize",
    "session_input": "session input (batch array)",
    "top_k": "top-k (softmax, sort)",
    "json": "JSON response",
    "pt_logger_inject": "Powertools logger.inject_lambda_context",
    "pt_tracer_capture": "Powertools tracer.capture_lambda_handler",
    "pt_metrics_flush": "Powertools metrics: 2 add_metric + EMF flush",
    "pt_log_line": "Powertools 'Request served' log line",
}


def reference_src(root: Path, out_dir: Path, rev: str = REFERENCE_REV) -> Path | None:
    """lambda_src as of ``rev`` under out_dir/<rev>/lambda_src, or None without git or the rev."""
    target = out_dir / rev[:12] / "lambda_src"
    if (target / "handler.py").is_file():
        return target
    try:
        archive = subprocess.run(
            ["git", "-C", str(root), "archive", "--format=tar", rev, "lambda_src"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target.parent, filter="data")
    return target if (target / "handler.py").is_file() else None


def _timed(samples: dict[str, list[float]], name: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    value = fn()
    samples[name].append((time.perf_counter() - t0) * 1000.0)
    return value


class StageProfiler:
    """Times the stages of one request path with the worker's own handler modules."""

    def __init__(self, handler: Any, context: Any) -> None:
        import sys

        import numpy as np
        from aws_lambda_powertools.logging import correlation_paths
        from aws_lambda_powertools.metrics import MetricUnit

        self.np = np
        self.handler = handler
        self.api = sys.modules["api"]
        self.preprocess = sys.modules["preprocess"]
        self.model = handler.RUNTIME.model
        self.context = context
        # The current path splits transform() into resized_crop + normalize; the reference has
        # only transform(), whose two halves are replayed below exactly as it runs them.
        self.current = hasattr(self.preprocess, "resized_crop")
        self.tracing = getattr(handler, "TRACING", True)  # the reference always wrapped
        logger, metrics, tracer = handler.logger, handler.metrics, handler.tracer

        def noop(event: Any, context: Any) -> dict[str, Any]:
            return {"statusCode": 200}

        def two_metrics(event: Any, context: Any) -> dict[str, Any]:
            metrics.add_metric(name="PreprocessMs", unit=MetricUnit.Milliseconds, value=1.0)
            metrics.add_metric(name="InferenceMs", unit=MetricUnit.Milliseconds, value=1.0)
            return {"statusCode": 200}

        self.noop = noop
        self.wrapped = {
            "pt_logger_inject": logger.inject_lambda_context(
                correlation_id_path=correlation_paths.API_GATEWAY_REST
            )(noop),
            "pt_tracer_capture": tracer.capture_lambda_handler(capture_response=False)(noop),
            "pt_metrics_flush": metrics.log_metrics(two_metrics),
        }
        self.logger = logger

    def _tiny(self, event: dict[str, Any]) -> dict[str, Any]:
        tiny = copy.copy(event)
        tiny["body"] = base64.b64encode(b"\xff\xd8\xff").decode()
        return tiny

    def run(self, event: dict[str, Any], data: bytes, samples: dict[str, list[float]]) -> None:
        """One request's stages, appended to samples (ms)."""
        np, api, pre, model = self.np, self.api, self.preprocess, self.model
        spec = model.preprocessing
        tiny = self._tiny(event)
        _timed(samples, "event_parse", lambda: (api.route(event), api.parse_predict(tiny)))
        body = _timed(samples, "base64", lambda: api.body_bytes(event))
        img = _timed(samples, "header_decode", lambda: pre.open_image(body))
        rgb = _timed(samples, "full_decode", lambda: pre.decode_rgb(img, spec))
        batch = _timed(
            samples,
            "session_input",
            lambda: np.empty((1, 3, spec.crop, spec.crop), dtype=np.float32),
        )
        if self.current:
            cropped = _timed(samples, "resize", lambda: pre.resized_crop(rgb, spec))
            _timed(samples, "crop_normalize", lambda: pre.normalize(cropped, spec, out=batch[0]))
        else:
            resized, box = _timed(samples, "resize", lambda: _reference_resize(rgb, spec))
            _timed(
                samples,
                "crop_normalize",
                lambda: _reference_crop_normalize(pre, resized, box, spec, batch[0]),
            )
        logits = model.infer(batch)
        top = _timed(samples, "top_k", lambda: api.top_predictions(logits[0], model.labels, 5))
        body_out = {"predictions": top, "model": {"name": model.name, "sha256": model.sha256}}
        _timed(samples, "json", lambda: api.json_response(200, body_out))
        for name, fn in self.wrapped.items():
            if name == "pt_tracer_capture" and not self.tracing:
                samples[name].append(0.0)  # not on the path: the handler skips the wrapper
                continue
            t0 = time.perf_counter()
            fn(event, self.context)
            wrapped = time.perf_counter() - t0
            t0 = time.perf_counter()
            self.noop(event, self.context)
            samples[name].append(max(0.0, wrapped - (time.perf_counter() - t0)) * 1000.0)
        _timed(
            samples,
            "pt_log_line",
            lambda: self.logger.info(
                "Request served", extra={"route": "/predict", "status": 200, "duration_ms": 1.0}
            ),
        )


def _reference_resize(img: Any, spec: Any) -> tuple[Any, tuple[int, int, int, int]]:
    """The reference transform's first half: Resize(256) of the whole image (and its crop box)."""
    from PIL import Image

    width, height = img.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = spec.resize, int(spec.resize * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top = round((new_h - spec.crop) / 2.0)
    left = round((new_w - spec.crop) / 2.0)
    return img, (left, top, left + spec.crop, top + spec.crop)


def _reference_crop_normalize(pre: Any, img: Any, box: Any, spec: Any, out: Any) -> Any:
    """The reference transform's second half: crop, then the normalization table lookup."""
    import numpy as np

    pixels = np.asarray(img.crop(box), dtype=np.uint8)
    table = pre.normalization_table(spec.mean, spec.std)
    for channel in range(3):
        np.take(table[channel], pixels[:, :, channel], out=out[channel], mode="clip")
    return out


def summarize(samples: dict[str, list[float]]) -> dict[str, Any]:
    """Per stage p50 (ms), the non-model sum, and the sample count."""
    p50 = {name: round(statistics.median(values), 4) for name, values in samples.items() if values}
    return {
        "p50_ms": p50,
        "non_model_sum_ms": round(sum(p50.values()), 3),
        "n": min((len(v) for v in samples.values()), default=0),
    }


def new_samples() -> dict[str, list[float]]:
    return {name: [] for name in STAGES}
