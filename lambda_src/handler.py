"""Lambda entry point: API Gateway REST proxy -> ResNet classification with ONNX Runtime.

INIT (module import, once per execution environment) reads the configuration, fetches and
verifies the model and opens a warmed-up ONNX Runtime session. Requests then only parse,
preprocess, infer and format. A model that cannot be loaded is recorded, not raised: requests
get 503 and each retries the load, so the environment never crash-loops.
"""

from __future__ import annotations

import time

_IMPORT_STARTED = time.perf_counter()

import os  # noqa: E402 - the timer above must start before the heavy imports
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from contextlib import AbstractContextManager, nullcontext  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from aws_lambda_powertools import Logger, Metrics, Tracer  # noqa: E402
from aws_lambda_powertools.logging import correlation_paths  # noqa: E402
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers  # noqa: E402
from aws_lambda_powertools.metrics import MetricUnit, single_metric  # noqa: E402

import api  # noqa: E402
import model_store  # noqa: E402
import preprocess  # noqa: E402
from errors import ApiError  # noqa: E402
from model_store import Config, LoadTimings, Model, ModelUnavailable  # noqa: E402

IMPORTS_MS = (time.perf_counter() - _IMPORT_STARTED) * 1000.0

_SETUP_STARTED = time.perf_counter()
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "ResnetServing"
logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME") or "resnet-serving")
metrics = Metrics(namespace=NAMESPACE, service=logger.service)
# Creating the Tracer imports the X-Ray SDK and patches botocore: a measurable INIT cost,
# reported separately as powertools_ms.
tracer = Tracer(service=logger.service)
# Decided once, at INIT, as the Tracer decides it: on in Lambda (the stack turns active tracing
# on) unless POWERTOOLS_TRACE_DISABLED, off outside Lambda (local mode, tests, the benchmark).
TRACING = not tracer.disabled
copy_config_to_registered_loggers(source_logger=logger, include={"model_store"})
# /health emits no metric; Powertools would warn about that on every such request.
warnings.filterwarnings("ignore", message="No application metrics to publish")
POWERTOOLS_MS = (time.perf_counter() - _SETUP_STARTED) * 1000.0


def _default_s3_client() -> Any:
    import boto3
    from botocore.config import Config as BotoConfig

    # Created only on a cache miss; AWS_ENDPOINT_URL_S3 (local mode) is honoured by boto3 itself.
    return boto3.client(
        "s3",
        config=BotoConfig(
            connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"}
        ),
    )


class Runtime:
    """The model and its load state for one execution environment."""

    def __init__(
        self,
        config: Config,
        *,
        s3_client_factory: Callable[[], Any] = _default_s3_client,
        threads: int | None = None,
    ) -> None:
        self.config = config
        self.s3_client_factory = s3_client_factory
        self.threads = threads or model_store.lambda_vcpus()
        self.model: Model | None = None
        self.load_error: str | None = None
        self.load_timings: LoadTimings | None = None
        self.load_attempts = 0
        self.invocations = 0
        self._in_invocation = False

    def init_report(self) -> dict[str, Any]:
        """INIT phases in ms (imports, download, verify, session, warm-up), for logs and bench."""
        t = self.load_timings or LoadTimings()
        return {
            "imports_ms": round(IMPORTS_MS, 2),
            "powertools_ms": round(POWERTOOLS_MS, 2),
            "download_ms": round(t.download_ms, 2),
            "verify_ms": round(t.verify_ms, 2),
            "session_ms": round(t.session_ms, 2),
            "warmup_ms": round(t.warmup_ms, 2),
            "model_load_ms": round(t.total_ms, 2),
            "cache_hit": t.cache_hit,
            "downloaded_bytes": t.downloaded_bytes,
            "threads": self.threads,
        }

    def _trace(self, name: str) -> AbstractContextManager[Any]:
        # X-Ray has no segment to attach to during INIT, only inside an invocation. A disabled
        # Tracer would still build (and discard) a subsegment per call: skip it outright.
        if TRACING and self._in_invocation:
            return tracer.provider.in_subsegment(name)
        return nullcontext()

    def try_load(self) -> bool:
        """Load the model if it is not loaded; record (never raise) a failure. True if ready."""
        if self.model is not None:
            return True
        self.load_attempts += 1
        try:
            model, timings = model_store.load_model(
                self.config, self.s3_client_factory, self.threads, self._trace
            )
        except ModelUnavailable as exc:
            self.load_error = str(exc)
            logger.error("Model unavailable", extra={"reason": self.load_error})
            return False
        except Exception as exc:  # e.g. /tmp full: still a 503 with a retry, not a crash loop
            self.load_error = f"{type(exc).__name__}: {exc}"
            logger.exception("Model load failed unexpectedly")
            return False
        self.model, self.load_timings, self.load_error = model, timings, None
        metrics.add_metric(name="ModelLoadMs", unit=MetricUnit.Milliseconds, value=timings.total_ms)
        logger.info(
            "Model ready",
            extra={
                "model_name": model.name,
                "model_sha256": model.sha256,
                "init": self.init_report(),
                "cpu": model_store.cpu_features(),
                "ort_version": model_store.ort.__version__,
            },
        )
        return True

    def require_model(self) -> Model:
        if not self.try_load():
            raise ApiError(
                503,
                "model_unavailable",
                "The model is not available right now; retry shortly. "
                "(The failure is logged for the operator.)",
                headers={"Retry-After": "5"},
            )
        assert self.model is not None
        return self.model


def predict(runtime: Runtime, event: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    request = api.parse_predict(event)
    model = runtime.require_model()
    top_k = api.resolve_top_k(request.top_k, model.num_classes)

    t0 = time.perf_counter()
    spec = model.preprocessing
    # Each image is written straight into its row of the batch: no per-image array, no stack copy.
    batch = np.empty((len(request.images), 3, spec.crop, spec.crop), dtype=np.float32)
    for row, data in zip(batch, request.images, strict=True):
        preprocess.preprocess(data, spec, out=row)
    preprocess_ms = (time.perf_counter() - t0) * 1000.0

    t0 = time.perf_counter()
    with runtime._trace("inference") as subsegment:
        logits = model.infer(batch)
        if subsegment is not None:
            subsegment.put_annotation("batch_size", len(request.images))
    inference_ms = (time.perf_counter() - t0) * 1000.0

    results = [api.top_predictions(row, model.labels, top_k) for row in logits]
    metrics.add_metric(name="PreprocessMs", unit=MetricUnit.Milliseconds, value=preprocess_ms)
    metrics.add_metric(name="InferenceMs", unit=MetricUnit.Milliseconds, value=inference_ms)
    return api.json_response(
        200,
        {
            "predictions": results if request.batch else results[0],
            "model": {"name": model.name, "sha256": model.sha256},
            "timings_ms": {
                "decode_preprocess": round(preprocess_ms, 3),
                "inference": round(inference_ms, 3),
                "total": round((time.perf_counter() - started) * 1000.0, 3),
            },
        },
    )


def health(runtime: Runtime, cold_start: bool) -> dict[str, Any]:
    model = runtime.require_model()
    return api.json_response(
        200,
        {
            "status": "ok",
            "model": {"name": model.name, "sha256": model.sha256},
            "cold_start": cold_start,
        },
    )


def _count_error(code: str) -> None:
    with single_metric(
        name="Errors", unit=MetricUnit.Count, value=1, namespace=NAMESPACE
    ) as metric:
        metric.add_dimension(name="service", value=logger.service)
        metric.add_dimension(name="code", value=code)


def dispatch(runtime: Runtime, event: dict[str, Any], request_id: str) -> dict[str, Any]:
    """Route and run one request; every failure becomes a JSON error response."""
    runtime.invocations += 1
    # Provisioned concurrency runs INIT ahead of traffic, so its first request is not cold.
    cold_start = (
        runtime.invocations == 1
        and os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") != "provisioned-concurrency"
    )
    runtime._in_invocation = True
    started = time.perf_counter()
    try:
        path = api.route(event)
        response = health(runtime, cold_start) if path == "/health" else predict(runtime, event)
        logger.info(
            "Request served",
            extra={
                "route": path,
                "status": response["statusCode"],
                "duration_ms": round((time.perf_counter() - started) * 1000.0, 3),
            },
        )
        return response
    except ApiError as error:
        logger.info(
            "Request refused",
            extra={"status": error.status, "code": error.code, "reason": error.message},
        )
        _count_error(error.code)
        return api.error_response(error)
    except Exception:
        logger.exception("Unhandled error")
        _count_error("internal_error")
        return api.error_response(
            ApiError(500, "internal_error", f"Internal error; request id {request_id}.")
        )
    finally:
        runtime._in_invocation = False


RUNTIME = Runtime(Config.from_env())
RUNTIME.try_load()


def _serve(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return dispatch(RUNTIME, event, getattr(context, "aws_request_id", "unknown"))


_serve.__name__ = _serve.__qualname__ = "handler"  # the X-Ray subsegment stays "## handler"


# Outermost first: the logger's context keys and correlation id, the X-Ray handler subsegment
# (only while tracing: disabled, Powertools' wrapper still costs ~15 us a request for nothing),
# then one EMF blob per request with every metric the request added (plus ColdStart once).
_metered = metrics.log_metrics(capture_cold_start_metric=True)(_serve)
_traced = tracer.capture_lambda_handler(capture_response=False)(_metered) if TRACING else _metered
handler = logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)(
    _traced
)
