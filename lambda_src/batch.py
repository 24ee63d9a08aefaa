"""Batch entry point: one Step Functions Distributed Map batch of S3 images -> one JSON Lines file.

The same image as the real-time function, with its command overridden to ``batch.handler``. The
event is what the map's ItemBatcher sends each child workflow::

    {"Items": [{"Key": "photos/a.jpg", "Size": 52311, "Etag": "\\"...\\"", ...}, ...],
     "BatchInput": {"bucket": ..., "output_bucket": ..., "output_prefix": "results/",
                    "run_id": <execution name>, "top_k": 5 (optional)}}

INIT loads the model exactly as the real-time handler does (model_store: /tmp cache, sha256 check,
warmed-up ONNX Runtime session). Per batch, a thread pool reads the objects and decodes them
(preprocess.preprocess, the real-time path's code) into sub-batch arrays while the main thread runs
ONNX Runtime on the sub-batch before: S3 latency and JPEG decoding overlap with inference.

Output: ``s3://<output_bucket>/<output_prefix><run_id>/<digest>.jsonl``, one line per item in item
order, ``{"key", "predictions": [...], "model": {...}}`` or ``{"key", "error": {"code",
"message"}}``. The digest hashes the run id, the bucket and the batch's keys, so a retried batch
(Step Functions retry, or an EXPRESS child's at-least-once re-run) overwrites the same object.

What fails the batch (so the map retries it): only what retrying can fix, raised as
BatchRetryableError (S3 5xx/throttling/network still failing after boto3's retries, the model not
loadable yet). A corrupt, empty, oversized, unsupported, missing or forbidden object is an error
line. A malformed event is BatchInputError (not retried: the same event fails the same way).
"""

from __future__ import annotations

import time

_IMPORT_STARTED = time.perf_counter()

import hashlib  # noqa: E402 - the timer above must start before the heavy imports
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import threading  # noqa: E402
import warnings  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from concurrent.futures import Future, ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from aws_lambda_powertools import Logger, Metrics, Tracer  # noqa: E402
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers  # noqa: E402
from aws_lambda_powertools.metrics import MetricUnit, single_metric  # noqa: E402

import api  # noqa: E402
import model_store  # noqa: E402
import preprocess  # noqa: E402
from errors import ApiError  # noqa: E402
from model_store import Config, Model, ModelUnavailable  # noqa: E402

IMPORTS_MS = (time.perf_counter() - _IMPORT_STARTED) * 1000.0

# Objects above this are refused unread (an error line), from the listing's Size when it has one
# and from the GET's ContentLength otherwise. Pixels are bounded separately by
# preprocess.MAX_IMAGE_PIXELS, exactly as for the endpoint.
MAX_OBJECT_BYTES = int(os.environ.get("BATCH_MAX_OBJECT_BYTES") or 32 * 1024 * 1024)
# Images per ONNX Runtime call: the throughput plateau of docs/performance.md (batch 4-8).
SUB_BATCH = int(os.environ.get("BATCH_SUB_BATCH") or 8)
# Concurrent S3 reads + decodes: enough to hide S3's first-byte latency (tens of ms) behind one
# sub-batch's inference without holding more than a few sub-batches of pixels in memory.
FETCH_THREADS = int(os.environ.get("BATCH_FETCH_THREADS") or 8)
# Images decoded at the same time. Reads wait on the network and may all be in flight, but a
# decode is pure CPU: more of them than spare vCPUs only preempts ONNX Runtime's threads, whose
# parallel sections then wait for the slowest one.
DECODE_SLOTS = int(os.environ.get("BATCH_DECODE_SLOTS") or 0)  # 0: vCPUs - 1, at least 1
# Sub-batches being read/decoded ahead of the one in inference.
PREFETCH_SUB_BATCHES = 2
# boto3 "standard" retries (exponential backoff with jitter) for 5xx, throttling and network
# errors before the batch gives up and lets Step Functions retry it.
S3_MAX_ATTEMPTS = int(os.environ.get("BATCH_S3_MAX_ATTEMPTS") or 5)
# Execution names are 1-80 of these characters; the run id becomes part of an S3 key.
RUN_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
OUTPUT_CONTENT_TYPE = "application/x-ndjson"

NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "ResnetServing"
logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME") or "resnet-batch")
metrics = Metrics(namespace=NAMESPACE, service=logger.service)
# No auto-patching: boto3 calls run on worker threads, which have no X-Ray segment to attach to
# (every call would log a "segment not found" error). The handler and inference are traced.
tracer = Tracer(service=logger.service, auto_patch=False)
copy_config_to_registered_loggers(source_logger=logger, include={"model_store"})
warnings.filterwarnings("ignore", message="No application metrics to publish")


class BatchRetryableError(Exception):
    """Retrying the batch can fix this (S3 5xx/throttling/network, model not loadable yet).

    The state machine retries this error name (stacks/batch.py); the message says what failed.
    """


class BatchInputError(Exception):
    """The event is not a Distributed Map batch this worker understands; retrying cannot help."""


# ---------------------------------------------------------------- S3


_RETRYABLE_S3_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
}
# Per-item outcomes of a GET that retrying the batch would not change.
_ITEM_S3_CODES = {
    "NoSuchKey": ("not_found", "No object at this key (deleted after listing?)."),
    "404": ("not_found", "No object at this key (deleted after listing?)."),
    "AccessDenied": ("access_denied", "The batch function may not read this object."),
    "403": ("access_denied", "The batch function may not read this object."),
    "InvalidObjectState": (
        "object_archived",
        "The object is in an archive storage class; restore it first.",
    ),
    "NoSuchBucket": ("not_found", "The input bucket does not exist."),
}


def default_s3_client(max_attempts: int | None = None) -> Any:
    import boto3
    from botocore.config import Config as BotoConfig

    # AWS_ENDPOINT_URL_S3 (local mode, tests) is honoured by boto3 itself.
    return boto3.client(
        "s3",
        config=BotoConfig(
            connect_timeout=5,
            read_timeout=30,
            retries={"max_attempts": max_attempts or S3_MAX_ATTEMPTS, "mode": "standard"},
            # One connection per fetch thread, plus the output write.
            max_pool_connections=FETCH_THREADS + 2,
        ),
    )


def _s3_failure(exc: Exception, what: str) -> tuple[str, str] | BatchRetryableError:
    """An item error (code, message) for a GET failure, or the retryable error for the batch."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _ITEM_S3_CODES:
            return _ITEM_S3_CODES[code]
        if code in _RETRYABLE_S3_CODES or status >= 500 or status == 429:
            return BatchRetryableError(f"S3 {what}: {code or status} after retries: {exc}")
        return ("s3_error", f"S3 refused the read: {code or status}.")
    # BotoCoreError and friends: connection reset, read timeout, truncated body stream.
    return BatchRetryableError(f"S3 {what}: {type(exc).__name__} after retries: {exc}")


# ---------------------------------------------------------------- the event


@dataclass(frozen=True)
class BatchInput:
    bucket: str
    output_bucket: str
    output_prefix: str
    run_id: str
    top_k: int | None = None


def parse_batch_input(event: Any) -> tuple[list[Any], BatchInput]:
    """The batch's items and its BatchInput; BatchInputError if the event is not a map batch."""
    if not isinstance(event, dict):
        raise BatchInputError("the event must be a JSON object with Items and BatchInput")
    items = event.get("Items")
    if not isinstance(items, list):
        raise BatchInputError("the event has no Items list (is the map's ItemBatcher set?)")
    raw = event.get("BatchInput")
    if not isinstance(raw, dict):
        raise BatchInputError("the event has no BatchInput object")
    missing = [
        name
        for name in ("bucket", "output_bucket", "output_prefix", "run_id")
        if not isinstance(raw.get(name), str) or (name != "output_prefix" and not raw[name])
    ]
    if missing:
        raise BatchInputError(f"BatchInput lacks string field(s): {', '.join(missing)}")
    prefix = raw["output_prefix"]
    if prefix and not prefix.endswith("/"):
        raise BatchInputError(f"BatchInput.output_prefix must end with '/': {prefix!r}")
    if not RUN_ID_RE.match(raw["run_id"]):
        raise BatchInputError("BatchInput.run_id must be 1-80 letters, digits, '-' or '_'")
    top_k = raw.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise BatchInputError("BatchInput.top_k must be a positive integer")
    return items, BatchInput(
        bucket=raw["bucket"],
        output_bucket=raw["output_bucket"],
        output_prefix=prefix,
        run_id=raw["run_id"],
        top_k=top_k,
    )


def item_key(item: Any) -> str | None:
    """The object key of one item: S3ObjectsItemReader's "Key", or a manifest line's Key/key."""
    if isinstance(item, str):  # a JSONL manifest line may be just "photos/a.jpg"
        return item or None
    if isinstance(item, dict):
        for name in ("Key", "key"):
            value = item.get(name)
            if isinstance(value, str) and value:
                return value
    return None


def item_size(item: Any) -> int | None:
    """The listing's Size (CSV manifests carry it as a string), if the item has one."""
    value = item.get("Size") if isinstance(item, dict) else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def output_key(batch: BatchInput, keys: Sequence[str | None]) -> str:
    """Deterministic: the same run and the same items always name the same object."""
    digest = hashlib.sha256(
        json.dumps([batch.run_id, batch.bucket, list(keys)], separators=(",", ":")).encode()
    ).hexdigest()
    return f"{batch.output_prefix}{batch.run_id}/{digest[:32]}.jsonl"


# ---------------------------------------------------------------- the work


def _error(key: str | None, code: str, message: str) -> dict[str, Any]:
    return {"key": key, "error": {"code": code, "message": message}}


@dataclass
class _Loaded:
    """One item after read + decode: its pixels went into its row, or it failed."""

    index: int
    key: str
    error: dict[str, Any] | None = None


@dataclass
class BatchResult:
    lines: list[dict[str, Any]]
    seconds: float
    read_decode_seconds: float = 0.0
    inference_seconds: float = 0.0
    error_codes: Counter[str] = field(default_factory=Counter)

    @property
    def images(self) -> int:
        return len(self.lines)

    @property
    def failed(self) -> int:
        return sum(self.error_codes.values())


class Worker:
    """Classifies batches with one model and one S3 client (an execution environment's state)."""

    def __init__(
        self,
        model: Model,
        s3: Any,
        *,
        fetch_threads: int = FETCH_THREADS,
        sub_batch: int = SUB_BATCH,
        max_object_bytes: int = MAX_OBJECT_BYTES,
        decode_slots: int = DECODE_SLOTS,
        trace: Callable[[str], Any] | None = None,
    ) -> None:
        if fetch_threads < 1 or sub_batch < 1 or decode_slots < 0:
            raise ValueError("fetch_threads and sub_batch must be >= 1, decode_slots >= 0")
        self.model = model
        self.s3 = s3
        self.fetch_threads = fetch_threads
        self.sub_batch = sub_batch
        self.max_object_bytes = max_object_bytes
        self.decode_slots = decode_slots or max(1, model_store.lambda_vcpus() - 1)
        self._decoding = threading.BoundedSemaphore(self.decode_slots)
        self.trace = trace

    # -- one item, on a pool thread

    def _read(self, bucket: str, key: str) -> bytes | tuple[str, str]:
        try:
            response = self.s3.get_object(Bucket=bucket, Key=key)
        except Exception as exc:
            outcome = _s3_failure(exc, f"GetObject s3://{bucket}/{key}")
            if isinstance(outcome, BatchRetryableError):
                raise outcome from exc
            return outcome
        body = response["Body"]
        try:
            length = int(response.get("ContentLength") or 0)
            if length > self.max_object_bytes:
                return ("object_too_large", _too_large(length, self.max_object_bytes))
            data: bytes = body.read()
        except Exception as exc:  # the stream broke mid-body: a network fault
            outcome = _s3_failure(exc, f"reading s3://{bucket}/{key}")
            if isinstance(outcome, BatchRetryableError):
                raise outcome from exc
            return outcome
        finally:
            body.close()
        return data

    def _load(self, index: int, bucket: str, key: str, row: np.ndarray) -> _Loaded:
        data = self._read(bucket, key)
        if isinstance(data, tuple):
            return _Loaded(index, key, _error(key, *data))
        if not data:
            return _Loaded(index, key, _error(key, "empty_object", "The object has no bytes."))
        try:
            with self._decoding:
                preprocess.preprocess(data, self.model.preprocessing, out=row)
        except ApiError as exc:  # the endpoint's own verdicts: not_an_image, corrupt_image, ...
            return _Loaded(index, key, _error(key, exc.code, exc.message))
        except Exception as exc:  # a decoder fault on these bytes: retrying would repeat it
            logger.exception("Decoding failed", extra={"key": key})
            return _Loaded(index, key, _error(key, "decode_failed", f"{type(exc).__name__}: {exc}"))
        return _Loaded(index, key)

    # -- the batch

    def classify(self, items: Sequence[Any], batch: BatchInput) -> BatchResult:
        """Every item's line, in item order. Raises BatchRetryableError; never writes."""
        started = time.perf_counter()
        lines: list[dict[str, Any] | None] = [None] * len(items)
        todo: list[tuple[int, str]] = []
        for index, item in enumerate(items):
            key = item_key(item)
            size = item_size(item)
            if key is None:
                detail = f"Item has no object key: {item!r}"[:300]
                lines[index] = _error(None, "invalid_item", detail)
            elif key.endswith("/") and not size:
                lines[index] = _error(key, "empty_object", "A folder marker, not an image.")
            elif size == 0:
                lines[index] = _error(key, "empty_object", "The object has no bytes.")
            elif size is not None and size > self.max_object_bytes:
                lines[index] = _error(
                    key, "object_too_large", _too_large(size, self.max_object_bytes)
                )
            else:
                todo.append((index, key))

        model = self.model
        try:
            top_k = api.resolve_top_k(batch.top_k, model.num_classes)
        except ApiError as exc:
            raise BatchInputError(f"BatchInput.top_k: {exc.message}") from exc
        model_info = {"name": model.name, "sha256": model.sha256}
        spec = model.preprocessing
        chunks = [todo[i : i + self.sub_batch] for i in range(0, len(todo), self.sub_batch)]
        inference_s = 0.0
        with ThreadPoolExecutor(self.fetch_threads, thread_name_prefix="fetch") as pool:
            pending: list[tuple[np.ndarray, list[Future[_Loaded]]]] = []

            def submit(chunk: list[tuple[int, str]]) -> None:
                rows = np.empty((len(chunk), 3, spec.crop, spec.crop), dtype=np.float32)
                futures = [
                    pool.submit(self._load, index, batch.bucket, key, rows[slot])
                    for slot, (index, key) in enumerate(chunk)
                ]
                pending.append((rows, futures))

            upcoming = iter(chunks)
            for chunk in _take(upcoming, PREFETCH_SUB_BATCHES + 1):
                submit(chunk)
            try:
                while pending:
                    rows, futures = pending.pop(0)
                    loaded = [f.result() for f in futures]  # raises BatchRetryableError
                    for chunk in _take(upcoming, 1):
                        submit(chunk)  # keep the readers busy during this inference
                    ok = [slot for slot, item in enumerate(loaded) if item.error is None]
                    for item in loaded:
                        if item.error is not None:
                            lines[item.index] = item.error
                    if not ok:
                        continue
                    # All rows decoded (the usual case): infer in place, no copy.
                    inputs = rows if len(ok) == len(rows) else rows[ok]
                    t0 = time.perf_counter()
                    with self._span("inference"):
                        logits = model.infer(inputs)
                    inference_s += time.perf_counter() - t0
                    for slot, row_logits in zip(ok, logits, strict=True):
                        lines[loaded[slot].index] = {
                            "key": loaded[slot].key,
                            "predictions": api.top_predictions(row_logits, model.labels, top_k),
                            "model": model_info,
                        }
            except BaseException:
                # Stop reading: the batch fails as a whole and will be retried.
                for _rows, futures in pending:
                    for future in futures:
                        future.cancel()
                raise
        done = [line for line in lines if line is not None]
        assert len(done) == len(items), "every item gets exactly one line"
        seconds = time.perf_counter() - started
        codes = Counter(line["error"]["code"] for line in done if "error" in line)
        return BatchResult(
            lines=done,
            seconds=seconds,
            read_decode_seconds=max(0.0, seconds - inference_s),
            inference_seconds=inference_s,
            error_codes=codes,
        )

    def _span(self, name: str) -> Any:
        if self.trace is None:
            from contextlib import nullcontext

            return nullcontext()
        return self.trace(name)

    def write(self, batch: BatchInput, key: str, lines: Sequence[dict[str, Any]]) -> None:
        """One PutObject of the whole batch; S3 makes it visible all at once or not at all."""
        body = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()
        try:
            self.s3.put_object(
                Bucket=batch.output_bucket,
                Key=key,
                Body=body,
                ContentType=OUTPUT_CONTENT_TYPE,
            )
        except Exception as exc:
            outcome = _s3_failure(exc, f"PutObject s3://{batch.output_bucket}/{key}")
            if isinstance(outcome, BatchRetryableError):
                raise outcome from exc
            raise RuntimeError(f"Could not write s3://{batch.output_bucket}/{key}: {exc}") from exc

    def run(self, event: Any) -> dict[str, Any]:
        """Classify one map batch and write its JSON Lines; the summary the map records."""
        items, batch = parse_batch_input(event)
        keys = [item_key(item) for item in items]
        key = output_key(batch, keys)
        result = self.classify(items, batch)
        if items:
            self.write(batch, key, result.lines)
        return {
            "output": {"bucket": batch.output_bucket, "key": key} if items else None,
            "images": result.images,
            "predicted": result.images - result.failed,
            "errors": result.failed,
            "error_codes": dict(sorted(result.error_codes.items())),
            "seconds": round(result.seconds, 3),
        }


def _take(iterator: Iterator[Any], n: int) -> list[Any]:
    out = []
    for _ in range(n):
        try:
            out.append(next(iterator))
        except StopIteration:
            break
    return out


def _too_large(size: int, limit: int) -> str:
    return f"The object is {size} bytes; the batch limit is {limit} bytes."


# ---------------------------------------------------------------- the execution environment


class Runtime:
    """The model (loaded at INIT, retried by later batches if it failed) and the S3 client."""

    def __init__(
        self,
        config: Config,
        *,
        s3_client_factory: Callable[[], Any] = default_s3_client,
        threads: int | None = None,
    ) -> None:
        self.config = config
        self.s3_client_factory = s3_client_factory
        self.threads = threads or int(
            os.environ.get("BATCH_INFERENCE_THREADS") or model_store.lambda_vcpus()
        )
        self.worker: Worker | None = None
        self.load_error: str | None = None

    def try_load(self) -> bool:
        if self.worker is not None:
            return True
        try:
            model, timings = model_store.load_model(
                self.config, self.s3_client_factory, self.threads
            )
        except ModelUnavailable as exc:
            self.load_error = str(exc)
            logger.error("Model unavailable", extra={"reason": self.load_error})
            return False
        except Exception as exc:  # e.g. /tmp full: the batch fails and the map retries it
            self.load_error = f"{type(exc).__name__}: {exc}"
            logger.exception("Model load failed unexpectedly")
            return False
        self.worker = Worker(model, self.s3_client_factory(), trace=_trace)
        self.load_error = None
        metrics.add_metric(name="ModelLoadMs", unit=MetricUnit.Milliseconds, value=timings.total_ms)
        logger.info(
            "Model ready",
            extra={
                "model_name": model.name,
                "model_sha256": model.sha256,
                "imports_ms": round(IMPORTS_MS, 2),
                "model_load_ms": round(timings.total_ms, 2),
                "cache_hit": timings.cache_hit,
                "threads": self.threads,
                "fetch_threads": FETCH_THREADS,
                "sub_batch": SUB_BATCH,
            },
        )
        return True

    def require_worker(self) -> Worker:
        if not self.try_load():
            raise BatchRetryableError(f"model not available: {self.load_error}")
        assert self.worker is not None
        return self.worker


def _trace(name: str) -> Any:
    return tracer.provider.in_subsegment(name)


def _count_errors(codes: dict[str, int]) -> None:
    for code, count in codes.items():
        with single_metric(
            name="ImageErrors", unit=MetricUnit.Count, value=count, namespace=NAMESPACE
        ) as metric:
            metric.add_dimension(name="service", value=logger.service)
            metric.add_dimension(name="code", value=code)


def process(runtime: Runtime, event: Any) -> dict[str, Any]:
    """Run one batch and record its logs and metrics; exceptions fail the batch."""
    worker = runtime.require_worker()
    try:
        summary = worker.run(event)
    except BatchRetryableError as exc:
        logger.warning("Batch failed; the map will retry it", extra={"reason": str(exc)})
        metrics.add_metric(name="BatchesRetried", unit=MetricUnit.Count, value=1)
        raise
    except BatchInputError as exc:
        logger.error("Not a Distributed Map batch", extra={"reason": str(exc)})
        raise
    images, seconds = summary["images"], summary["seconds"]
    metrics.add_metric(name="Images", unit=MetricUnit.Count, value=images)
    metrics.add_metric(name="ImagesPredicted", unit=MetricUnit.Count, value=summary["predicted"])
    if images and seconds > 0:
        metrics.add_metric(
            name="ImagesPerSecond", unit=MetricUnit.CountPerSecond, value=images / seconds
        )
    _count_errors(summary["error_codes"])
    logger.info("Batch done", extra=summary)
    return summary


def _init() -> Runtime:
    runtime = Runtime(Config.from_env())
    runtime.try_load()
    return runtime


RUNTIME = _init()


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return process(RUNTIME, event)
