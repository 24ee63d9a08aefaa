"""Publish an exported artifact to S3 under a content-addressed key, then prove it arrived intact.

boto3 reads AWS_ENDPOINT_URL_S3 (and AWS_ENDPOINT_URL) itself, so the same code talks to AWS
or to a local S3 API server.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .checksum import sha256_file
from .errors import ExportError

DEFAULT_PREFIX = "models"
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
# S3 bucket naming rules (general purpose buckets): 3-63 chars, lowercase, digits, '.', '-'.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket[/prefix]`` -> (bucket, prefix); the prefix defaults to ``models``."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ExportError(f"malformed S3 URL {url!r}: expected s3://bucket/prefix")
    if parts.query or parts.fragment:
        raise ExportError(f"malformed S3 URL {url!r}: no '?' or '#' allowed")
    bucket = parts.netloc
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ExportError(
            f"malformed S3 URL {url!r}: {bucket!r} is not a valid bucket name "
            "(3-63 lowercase letters, digits, '.' or '-')"
        )
    prefix = "/".join(segment for segment in parts.path.split("/") if segment)
    return bucket, prefix or DEFAULT_PREFIX


class _Progress:
    """boto3 transfer callback: prints every 10% (called from transfer threads)."""

    def __init__(self, label: str, total: int, log: Log) -> None:
        self._label, self._total, self._log = label, max(total, 1), log
        self._seen = 0
        self._next = 10
        self._lock = threading.Lock()

    def __call__(self, transferred: int) -> None:
        with self._lock:
            self._seen += transferred
            percent = self._seen * 100 // self._total
            if percent >= self._next:
                self._log(f"      {self._label}: {min(percent, 100)}%")
                self._next = (percent // 10 + 1) * 10


def _client() -> Any:
    import boto3
    from botocore.config import Config

    # Short connect timeout and few retries: an unreachable endpoint fails in seconds.
    config = Config(
        connect_timeout=5,
        read_timeout=120,
        retries={"max_attempts": 3, "mode": "standard"},
    )
    return boto3.client("s3", config=config)


def _describe_error(exc: Exception, bucket: str) -> str:
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        NoCredentialsError,
        NoRegionError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, BotoConnectionError | ConnectTimeoutError):
        return f"cannot reach the S3 endpoint ({exc}); check AWS_ENDPOINT_URL_S3 and the network"
    if isinstance(exc, NoCredentialsError):
        return "no AWS credentials found (set AWS_PROFILE or AWS_ACCESS_KEY_ID/SECRET)"
    if isinstance(exc, NoRegionError):
        return "no AWS region configured (set AWS_REGION or AWS_DEFAULT_REGION)"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "Unknown")
        if code in ("NoSuchBucket", "404"):
            return f"bucket {bucket!r} does not exist ({code})"
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return f"access to bucket {bucket!r} denied ({code}); check credentials and policy"
        return f"S3 error {code}: {error.get('Message', exc)}"
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first_line}"


def publish(model_dir: str | Path, url: str, *, log: Log | None = None) -> tuple[str, str]:
    """Upload ``model.onnx`` and ``manifest.json`` to ``<prefix>/<sha256>/`` and verify both.

    Returns (bucket, key of model.onnx). Refuses a directory whose manifest does not match
    its model, so only verified pairs are ever published.
    """
    log = log or _stderr
    bucket, prefix = parse_s3_url(url)
    model_dir = Path(model_dir)
    model_path, manifest_path = model_dir / MODEL_FILE, model_dir / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {manifest_path}: {exc}") from exc
    if not model_path.is_file():
        raise ExportError(f"{model_path} does not exist; export a model first")
    sha256 = sha256_file(model_path)
    if manifest.get("sha256") != sha256:
        raise ExportError(
            f"{manifest_path} does not describe {model_path} (sha256 differs); re-export"
        )

    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    model_key = f"{prefix}/{sha256}/{MODEL_FILE}"
    manifest_key = f"{prefix}/{sha256}/{MANIFEST_FILE}"
    transfer = TransferConfig(multipart_threshold=64 * 1024 * 1024)
    client = _client()
    try:
        for path, key, content_type in (
            # The manifest goes last: its presence means the model under the same key is complete.
            (model_path, model_key, "application/octet-stream"),
            (manifest_path, manifest_key, "application/json"),
        ):
            size = path.stat().st_size
            log(f"      uploading {path.name} ({size} bytes) to s3://{bucket}/{key}")
            client.upload_file(
                str(path),
                bucket,
                key,
                ExtraArgs={"ContentType": content_type, "Metadata": {"sha256": sha256_file(path)}},
                Callback=_Progress(path.name, size, log),
                Config=transfer,
            )
            _verify_object(client, bucket, key, path)
    except (BotoCoreError, ClientError) as exc:
        raise ExportError(
            f"upload to s3://{bucket}/{prefix} failed: {_describe_error(exc, bucket)}"
        ) from exc
    log(f"      verified s3://{bucket}/{model_key} (size and sha256 of a fresh download)")
    return bucket, model_key


def _verify_object(client: Any, bucket: str, key: str, path: Path) -> None:
    expected_size = path.stat().st_size
    head = client.head_object(Bucket=bucket, Key=key)
    if int(head["ContentLength"]) != expected_size:
        raise ExportError(
            f"s3://{bucket}/{key} has {head['ContentLength']} bytes, expected {expected_size}"
        )
    digest = hashlib.sha256()
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    for chunk in iter(lambda: body.read(1 << 20), b""):
        digest.update(chunk)
    if digest.hexdigest() != sha256_file(path):
        raise ExportError(f"s3://{bucket}/{key} does not match {path} after upload (sha256)")
