"""The batch worker (lambda_src/batch.py) against the S3 API server (moto over HTTP).

Real photographs from installed wheels, a real exported model, real ONNX Runtime; events shaped
exactly as the Distributed Map's ItemBatcher sends them (S3ObjectsItemReader items built from a
real ListObjectsV2 of the server). S3 faults are injected into the boto3 client's HTTP layer
(``before-send``): botocore's own retry logic sees them as real 5xx/403 responses.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from handler_testkit import (
    FakeContext,
    body_of,
    ensure_published,
    init_deployed,
    predict_event,
)

from model_export.photos import photographs

INPUT_BUCKET = "batch-test-input"
OUTPUT_BUCKET = "batch-test-output"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def batch_module(moto_endpoint: str, fp32_model_dir: Path, tmp_path_factory):
    """lambda_src/batch.py imported (INIT) with the environment the stack gives the function."""
    module = init_deployed(
        "batch", moto_endpoint, fp32_model_dir, tmp_path_factory.mktemp("batch-import-cache")
    )
    assert module.RUNTIME.worker is not None, module.RUNTIME.load_error
    return module


@pytest.fixture
def s3() -> Any:
    client = boto3.client("s3")
    for bucket in (INPUT_BUCKET, OUTPUT_BUCKET):
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)
    return client


@pytest.fixture
def prefix() -> str:
    """A fresh input prefix and run id per test (the buckets live for the session)."""
    return f"t-{uuid.uuid4().hex[:12]}"


def upload(s3: Any, prefix: str, objects: dict[str, bytes]) -> None:
    for name, data in objects.items():
        s3.put_object(Bucket=INPUT_BUCKET, Key=f"{prefix}/{name}", Body=data)


def listed_items(s3: Any, prefix: str) -> list[dict[str, Any]]:
    """What S3ObjectsItemReader gives each item: Key, Size, Etag, LastModified, StorageClass."""
    items = []
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=INPUT_BUCKET, Prefix=f"{prefix}/"
    ):
        for obj in page.get("Contents", []):
            items.append(
                {
                    "Etag": obj["ETag"],
                    "Key": obj["Key"],
                    "LastModified": int(obj["LastModified"].timestamp()),
                    "Size": obj["Size"],
                    "StorageClass": obj.get("StorageClass", "STANDARD"),
                }
            )
    return items


def batch_event(items: list[Any], run_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "Items": items,
        "BatchInput": {
            "bucket": INPUT_BUCKET,
            "output_bucket": OUTPUT_BUCKET,
            "output_prefix": "results/",
            "run_id": run_id,
            **extra,
        },
    }


def outputs(s3: Any, run_id: str) -> dict[str, list[dict[str, Any]]]:
    """Every JSONL object the run wrote, parsed."""
    found = {}
    listing = s3.list_objects_v2(Bucket=OUTPUT_BUCKET, Prefix=f"results/{run_id}/")
    for obj in listing.get("Contents", []):
        text = s3.get_object(Bucket=OUTPUT_BUCKET, Key=obj["Key"])["Body"].read().decode()
        found[obj["Key"]] = [json.loads(line) for line in text.splitlines()]
    return found


class S3Faults:
    """Answer chosen GetObject requests with an S3 error before they leave the client."""

    def __init__(self) -> None:
        self.rules: dict[str, list[Any]] = {}  # key -> [remaining, status, code]
        self.attempts: Counter[str] = Counter()

    def fail(self, key: str, *, times: int, status: int = 500, code: str = "InternalError"):
        self.rules[key] = [times, status, code]

    def attach(self, client: Any) -> Any:
        client.meta.events.register("before-send.s3.GetObject", self._before_send)
        return client

    def _before_send(self, request: Any, **_kwargs: Any) -> AWSResponse | None:
        key = unquote(urlsplit(request.url).path).split("/", 2)[2]
        self.attempts[key] += 1
        rule = self.rules.get(key)
        if not rule or rule[0] == 0:
            return None
        rule[0] -= 1
        body = f"<Error><Code>{rule[2]}</Code><Message>injected</Message></Error>".encode()
        return AWSResponse(request.url, rule[1], {"Content-Type": "application/xml"}, _Raw(body))


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_kwargs: Any) -> Iterator[bytes]:
        yield self.body


@pytest.fixture
def worker_with(batch_module) -> Callable[..., Any]:
    """A Worker on the loaded model with its own S3 client (3 attempts: quick retries)."""

    def make(faults: S3Faults | None = None, **options: Any) -> Any:
        client = batch_module.default_s3_client(max_attempts=3)
        if faults is not None:
            faults.attach(client)
        return batch_module.Worker(batch_module.RUNTIME.worker.model, client, **options)

    return make


def photo_objects(count: int) -> dict[str, bytes]:
    photos = photographs()
    return {f"{i:03d}-{photos[i % len(photos)].name}": photos[i % len(photos)].read_bytes()
            for i in range(count)}  # fmt: skip


# ---------------------------------------------------------------- the happy path


def test_handler_writes_one_jsonl_line_per_item_in_item_order(
    batch_module, s3: Any, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    upload(s3, prefix, photo_objects(12))
    items = listed_items(s3, prefix)
    summary = batch_module.handler(batch_event(items, prefix), FakeContext())

    assert summary["images"] == 12
    assert summary["predicted"] == 12
    assert summary["errors"] == 0
    written = outputs(s3, prefix)
    assert list(written) == [summary["output"]["key"]]
    lines = written[summary["output"]["key"]]
    assert [line["key"] for line in lines] == [item["Key"] for item in items]
    model = batch_module.RUNTIME.worker.model
    for line in lines:
        assert set(line) == {"key", "predictions", "model"}
        assert line["model"] == {"name": model.name, "sha256": model.sha256}
        probabilities = [p["probability"] for p in line["predictions"]]
        assert len(probabilities) == 5
        assert probabilities == sorted(probabilities, reverse=True)
        assert all(model.labels[p["index"]] == p["label"] for p in line["predictions"])
    # EMF metrics on stdout, as Lambda ships them to CloudWatch.
    metrics = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"_aws"' in x]
    images = [m for m in metrics if "Images" in m]
    assert images
    assert images[0]["Images"] == [12.0]
    assert images[0]["ImagesPredicted"] == [12.0]
    assert images[0]["ImagesPerSecond"][0] > 0


def test_predictions_equal_the_real_time_endpoints_for_the_same_bytes(
    batch_module, handler_module, s3: Any, prefix: str, invoke: Callable[..., Any]
) -> None:
    objects = photo_objects(len(photographs()))
    upload(s3, prefix, objects)
    summary = batch_module.handler(batch_event(listed_items(s3, prefix), prefix), FakeContext())
    lines = {line["key"]: line for line in outputs(s3, prefix)[summary["output"]["key"]]}
    for name, data in objects.items():
        content_type = "image/png" if name.endswith(".png") else "image/jpeg"
        realtime = body_of(invoke(predict_event(data, content_type)))
        batch_line = lines[f"{prefix}/{name}"]
        assert [p["index"] for p in batch_line["predictions"]] == [
            p["index"] for p in realtime["predictions"]
        ]
        assert [p["probability"] for p in batch_line["predictions"]] == pytest.approx(
            [p["probability"] for p in realtime["predictions"]], rel=1e-4, abs=1e-6
        )


def test_a_batch_larger_than_one_sub_batch_runs_several_inferences(
    worker_with: Callable[..., Any], s3: Any, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload(s3, prefix, photo_objects(11))
    worker = worker_with(sub_batch=4, fetch_threads=3)
    calls: list[int] = []
    infer = worker.model.infer

    def counting(batch: Any) -> Any:
        calls.append(len(batch))
        return infer(batch)

    monkeypatch.setattr(worker.model, "infer", counting)
    summary = worker.run(batch_event(listed_items(s3, prefix), prefix))
    assert calls == [4, 4, 3]
    assert summary["predicted"] == 11
    lines = next(iter(outputs(s3, prefix).values()))
    assert len({line["key"] for line in lines}) == 11


# ---------------------------------------------------------------- bad objects: lines, not failures


def test_bad_objects_become_error_lines_and_the_batch_succeeds(
    worker_with: Callable[..., Any], s3: Any, prefix: str, tmp_path: Path
) -> None:
    from PIL import Image

    gif = tmp_path / "anim.gif"
    Image.new("RGB", (32, 32), "red").save(gif, "GIF")
    good = photo_objects(2)
    limit = max(len(data) for data in good.values()) + 1
    upload(
        s3,
        prefix,
        {
            **good,
            "corrupt.jpg": good[next(iter(good))][:600],  # truncated JPEG
            "empty.jpg": b"",
            "notes.txt": b"this is not an image",
            "anim.gif": gif.read_bytes(),
            "huge.jpg": b"\xff\xd8" + b"\0" * limit,
            "folder/": b"",
        },
    )
    items = listed_items(s3, prefix)
    items.append({"Key": f"{prefix}/deleted-after-listing.jpg", "Size": 1234})
    items.append({"NoKey": "a manifest line without a key"})
    worker = worker_with(max_object_bytes=limit)
    summary = worker.run(batch_event(items, prefix))

    lines = next(iter(outputs(s3, prefix).values()))
    assert len(lines) == len(items)
    by_name = {str(line["key"]).removeprefix(f"{prefix}/"): line for line in lines}
    codes = {name: line["error"]["code"] for name, line in by_name.items() if "error" in line}
    assert codes == {
        "corrupt.jpg": "corrupt_image",
        "empty.jpg": "empty_object",
        "notes.txt": "not_an_image",
        "anim.gif": "unsupported_image_format",
        "huge.jpg": "object_too_large",
        "folder/": "empty_object",
        "deleted-after-listing.jpg": "not_found",
        "None": "invalid_item",
    }
    assert all("predictions" in by_name[name] for name in good)
    assert summary["errors"] == 8
    assert summary["error_codes"]["empty_object"] == 2


# ---------------------------------------------------------------- S3 faults


def test_transient_s3_5xx_is_retried_and_nothing_is_lost(
    worker_with: Callable[..., Any], s3: Any, prefix: str
) -> None:
    upload(s3, prefix, photo_objects(6))
    items = listed_items(s3, prefix)
    flaky = items[3]["Key"]
    faults = S3Faults()
    faults.fail(flaky, times=2, status=503, code="SlowDown")
    summary = worker_with(faults).run(batch_event(items, prefix))

    assert faults.attempts[flaky] == 3  # two injected 503s, then the real object
    assert summary["predicted"] == 6
    (lines,) = outputs(s3, prefix).values()
    assert [line["key"] for line in lines] == [item["Key"] for item in items]
    assert all("predictions" in line for line in lines)


def test_persistent_s3_5xx_fails_the_batch_unwritten_and_its_retry_writes_once(
    batch_module, worker_with: Callable[..., Any], s3: Any, prefix: str
) -> None:
    upload(s3, prefix, photo_objects(10))
    items = listed_items(s3, prefix)
    event = batch_event(items, prefix)
    faults = S3Faults()
    faults.fail(items[7]["Key"], times=10**6)  # S3 keeps answering 500 for this key
    with pytest.raises(batch_module.BatchRetryableError, match="InternalError"):
        worker_with(faults).run(event)
    assert outputs(s3, prefix) == {}  # nothing partial was written

    # Step Functions retries the batch (same event); S3 has recovered.
    first = worker_with().run(event)
    # An EXPRESS child may run the same batch again (at-least-once): same key, same content.
    second = worker_with().run(event)
    assert first["output"] == second["output"]
    written = outputs(s3, prefix)
    assert list(written) == [first["output"]["key"]]
    keys = [line["key"] for line in written[first["output"]["key"]]]
    assert Counter(keys) == Counter(item["Key"] for item in items)  # each key exactly once
    assert all("predictions" in line for line in written[first["output"]["key"]])


def test_forbidden_object_is_an_error_line_not_a_retry(
    worker_with: Callable[..., Any], s3: Any, prefix: str
) -> None:
    upload(s3, prefix, photo_objects(3))
    items = listed_items(s3, prefix)
    faults = S3Faults()
    faults.fail(items[0]["Key"], times=10**6, status=403, code="AccessDenied")
    summary = worker_with(faults).run(batch_event(items, prefix))
    assert faults.attempts[items[0]["Key"]] == 1  # a 403 is not retried
    assert summary["error_codes"] == {"access_denied": 1}
    assert summary["predicted"] == 2


def test_output_write_failure_fails_the_batch_as_retryable(
    batch_module, worker_with: Callable[..., Any], s3: Any, prefix: str
) -> None:
    upload(s3, prefix, photo_objects(2))
    worker = worker_with()

    def refuse(**_kwargs: Any) -> AWSResponse:
        body = b"<Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>"
        return AWSResponse("http://s3", 503, {}, _Raw(body))

    worker.s3.meta.events.register("before-send.s3.PutObject", refuse)
    with pytest.raises(batch_module.BatchRetryableError, match="PutObject"):
        worker.run(batch_event(listed_items(s3, prefix), prefix))


# ---------------------------------------------------------------- the event and the key


def test_output_key_depends_only_on_run_bucket_and_keys(batch_module) -> None:
    one = batch_module.BatchInput("in", "out", "results/", "run-1")
    key = batch_module.output_key(one, ["a.jpg", "b.jpg"])
    assert key.startswith("results/run-1/")
    assert key.endswith(".jsonl")
    assert batch_module.output_key(one, ["a.jpg", "b.jpg"]) == key
    assert batch_module.output_key(one, ["b.jpg", "a.jpg"]) != key
    other_run = batch_module.BatchInput("in", "out", "results/", "run-2")
    assert batch_module.output_key(other_run, ["a.jpg", "b.jpg"]).startswith("results/run-2/")


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ([], "JSON object"),
        ({"BatchInput": {}}, "Items"),
        ({"Items": []}, "BatchInput"),
        ({"Items": [], "BatchInput": {"bucket": "b", "output_bucket": "o"}}, "output_prefix"),
        (
            {
                "Items": [],
                "BatchInput": {
                    "bucket": "b",
                    "output_bucket": "o",
                    "output_prefix": "results",
                    "run_id": "r",
                },
            },
            "end with '/'",
        ),
        (
            {
                "Items": [],
                "BatchInput": {
                    "bucket": "b",
                    "output_bucket": "o",
                    "output_prefix": "results/",
                    "run_id": "../escape",
                },
            },
            "run_id",
        ),
    ],
)
def test_an_event_that_is_no_map_batch_is_refused(batch_module, event: Any, reason: str) -> None:
    with pytest.raises(batch_module.BatchInputError, match=reason):
        batch_module.process(batch_module.RUNTIME, event)


def test_top_k_is_honoured_and_an_impossible_one_refused(
    batch_module, worker_with: Callable[..., Any], s3: Any, prefix: str
) -> None:
    upload(s3, prefix, photo_objects(1))
    items = listed_items(s3, prefix)
    worker = worker_with()
    worker.run(batch_event(items, prefix, top_k=3))
    (lines,) = outputs(s3, prefix).values()
    assert len(lines[0]["predictions"]) == 3
    with pytest.raises(batch_module.BatchInputError, match="top_k"):
        worker.run(batch_event(items, f"{prefix}-x", top_k=1001))


def test_unloadable_model_fails_the_batch_as_retryable(
    batch_module, fp32_model_dir: Path, tmp_path: Path
) -> None:
    from model_store import Config

    published = ensure_published(fp32_model_dir)
    runtime = batch_module.Runtime(
        Config(bucket=published.bucket, key=published.key, sha256="0" * 64, cache_dir=tmp_path)
    )
    assert runtime.try_load() is False
    with pytest.raises(batch_module.BatchRetryableError, match="model not available"):
        batch_module.process(runtime, batch_event([], "r"))


def test_decodes_are_bounded_while_reads_run_concurrently(
    batch_module, worker_with: Callable[..., Any], s3: Any, prefix: str, monkeypatch
) -> None:
    import threading
    import time

    upload(s3, prefix, photo_objects(8))
    items = listed_items(s3, prefix)
    real = batch_module.preprocess.preprocess
    lock = threading.Lock()
    state = {"active": 0, "peak": 0}

    def tracked(data: bytes, spec: Any, out: Any) -> Any:
        with lock:
            state["active"] += 1
            state["peak"] = max(state["peak"], state["active"])
        time.sleep(0.02)  # long enough for the other readers to arrive
        try:
            return real(data, spec, out=out)
        finally:
            with lock:
                state["active"] -= 1

    monkeypatch.setattr(batch_module.preprocess, "preprocess", tracked)
    peaks = {}
    for slots in (1, 3):
        state["peak"] = 0
        summary = worker_with(fetch_threads=4, decode_slots=slots).run(
            batch_event(items, f"{prefix}-{slots}")
        )
        assert summary["predicted"] == 8
        peaks[slots] = state["peak"]
    assert peaks[1] == 1
    assert 1 < peaks[3] <= 3
