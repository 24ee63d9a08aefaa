"""HTTP client for the image classification endpoint (deployed or local).

Retries follow AWS's guidance for throttled and failing calls: exponential backoff with full
jitter, bounded in attempts and per-attempt delay. Classification has no side effects, so
retrying a POST is safe.
"""

from __future__ import annotations

import base64
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

# API Gateway answers 429 when the usage plan throttles; 5xx covers the function's 503 while the
# model loads, 502 for an invocation failure and 504 for the 29 s integration timeout.
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})

IMAGE_CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
}

USER_AGENT = "classifier-client/0.1"


class ClassifierError(Exception):
    """Any failure the caller should see as one clear line."""


class ApiError(ClassifierError):
    """The endpoint answered with an error status."""

    def __init__(self, status: int, code: str, message: str, body: Any = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.body = body
        super().__init__(
            f"HTTP {status} {code}: {message}" if code else f"HTTP {status}: {message}"
        )


def content_type_for(path: Path, data: bytes) -> str:
    """Content-Type from the file name, falling back to the magic bytes."""
    by_suffix = IMAGE_CONTENT_TYPES.get(path.suffix.lower())
    if by_suffix:
        return by_suffix
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    # The endpoint answers 415 with a clear message; better than guessing here.
    return "application/octet-stream"


def _error_from_response(resp: requests.Response) -> ApiError:
    try:
        body = resp.json()
    except ValueError:
        body = None
    code, message = "", (resp.text or resp.reason or "").strip()[:300]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):  # the API's errors, function or gateway: {"error": {...}}
            code = str(err.get("code", ""))
            message = str(err.get("message", message))
        elif "message" in body:  # API Gateway's defaults (no gateway responses): {"message"}
            message = str(body["message"])
    if resp.status_code == 403 and message == "Forbidden":
        message = "Forbidden (missing or wrong API key)"
    elif resp.status_code == 403 and message == "Missing Authentication Token":
        message = (
            "Missing Authentication Token (API Gateway's answer for an unknown route: "
            "check that the endpoint URL ends with the stage, e.g. .../dev/)"
        )
    return ApiError(resp.status_code, code, message or "no details", body)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter.

    Attempt n (1-based) that fails with a retryable outcome waits
    uniform(0, min(cap_s, base_s * 2 ** (n - 1))) seconds, or the server's Retry-After when that
    is longer (still capped).
    """

    max_attempts: int = 5
    base_s: float = 0.25
    cap_s: float = 8.0

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        ceiling = min(self.cap_s, self.base_s * 2 ** (attempt - 1))
        delay = rng.uniform(0.0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(self.cap_s, retry_after))
        return delay


RetryCallback = Callable[[int, str, float], None]


class Client:
    """Calls POST /predict and GET /health on an endpoint such as https://<id>.execute-api.<region>.amazonaws.com/dev/.

    >>> client = Client("http://127.0.0.1:8080/dev/", "my-api-key")
    >>> client.classify(Path("cat.jpg"))["predictions"][0]["label"]
    """

    def __init__(
        self,
        endpoint: str,
        api_key: str | None,
        *,
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        on_retry: RetryCallback | None = None,
    ) -> None:
        if not endpoint.startswith(("http://", "https://")):
            raise ClassifierError(f"endpoint must be an http(s) URL, got {endpoint!r}")
        self.endpoint = endpoint.rstrip("/") + "/"
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._session = session or requests.Session()
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._on_retry = on_retry

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- API -------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._call("GET", "health")

    def classify(
        self, image: bytes | str | Path, *, top_k: int = 5, content_type: str | None = None
    ) -> dict[str, Any]:
        """Send one image as raw bytes (the binary media type path through API Gateway)."""
        data, path = _read(image)
        ctype = content_type or content_type_for(path or Path(""), data)
        return self._call(
            "POST", "predict", data=data, headers={"Content-Type": ctype}, params={"top_k": top_k}
        )

    def classify_batch(
        self, images: Sequence[bytes | str | Path], *, top_k: int = 5
    ) -> dict[str, Any]:
        """Send several images in one JSON request, run by the function as one batched inference."""
        if not images:
            raise ClassifierError("classify_batch needs at least one image")
        payload = {
            "images": [base64.b64encode(_read(i)[0]).decode("ascii") for i in images],
            "top_k": top_k,
        }
        return self._call("POST", "predict", json=payload)

    # -- transport -------------------------------------------------------------------------

    def _call(self, method: str, route: str, **kwargs: Any) -> dict[str, Any]:
        resp = self.request(method, route, **kwargs)
        if resp.status_code >= 400:
            raise _error_from_response(resp)
        try:
            body = resp.json()
        except ValueError as exc:
            raise ClassifierError(
                f"HTTP {resp.status_code}: expected JSON, got {resp.text[:120]!r}"
            ) from exc
        if not isinstance(body, dict):
            raise ClassifierError(f"HTTP {resp.status_code}: expected a JSON object")
        return body

    def request(self, method: str, route: str, **kwargs: Any) -> requests.Response:
        """One logical call with retries; returns the last response (any status)."""
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        headers.update(kwargs.pop("headers", {}) or {})
        if self.api_key:
            headers["x-api-key"] = self.api_key
        url = self.endpoint + route
        for attempt in range(1, self.retry.max_attempts + 1):
            retry_after: float | None = None
            try:
                resp = self._session.request(
                    method, url, headers=headers, timeout=self.timeout_s, **kwargs
                )
            except (requests.Timeout, requests.ConnectionError) as exc:
                if attempt == self.retry.max_attempts:
                    kind = "timed out" if isinstance(exc, requests.Timeout) else "failed"
                    raise ClassifierError(
                        f"{method} {url} {kind} after {attempt} attempts: {_short(exc)}"
                    ) from exc
                reason = "timeout" if isinstance(exc, requests.Timeout) else "connection error"
            else:
                if resp.status_code not in RETRYABLE_STATUS or attempt == self.retry.max_attempts:
                    return resp
                reason = f"HTTP {resp.status_code}"
                retry_after = _retry_after(resp)
                resp.close()
            delay = self.retry.delay(attempt, self._rng, retry_after)
            if self._on_retry:
                self._on_retry(attempt, reason, delay)
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


def _read(image: bytes | str | Path) -> tuple[bytes, Path | None]:
    if isinstance(image, bytes | bytearray):
        return bytes(image), None
    path = Path(image)
    try:
        return path.read_bytes(), path
    except FileNotFoundError as exc:
        raise ClassifierError(f"no such file: {path}") from exc
    except IsADirectoryError as exc:
        raise ClassifierError(f"is a directory, not an image: {path}") from exc
    except OSError as exc:
        raise ClassifierError(f"cannot read {path}: {exc.strerror}") from exc


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare enough here to fall back to our own backoff


def _short(exc: BaseException) -> str:
    text = str(exc)
    # urllib3 nests the useful part ("[Errno 111] Connection refused") deep in its repr.
    errno = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if errno:
        return errno.group(0)
    return text if len(text) < 160 else text[:157] + "..."


def iter_images(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and directories (recursively, sorted) into the image files to send.

    Files named explicitly are kept whatever their extension; directories contribute only files
    with an image extension.
    """
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found.extend(
                sorted(
                    f
                    for f in p.rglob("*")
                    if f.is_file() and f.suffix.lower() in IMAGE_CONTENT_TYPES
                )
            )
        elif p.is_file():
            found.append(p)
        else:
            raise ClassifierError(f"no such file or directory: {p}")
    return found
