"""The HTTP contract: parse an API Gateway REST proxy event, format JSON responses.

Pure functions over the event dict and numpy arrays; no AWS calls, no model. docs/openapi.yaml
describes exactly this.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import pybase64

from errors import ApiError

RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")
JSON_TYPE = "application/json"
# Lambda refuses synchronous invocations above 6 MB, and API Gateway's REST proxy event carries
# a binary body base64-encoded (x4/3), so ~4.5 MB of image bytes is the practical ceiling; this
# bound also protects the function when another front door (local mode) sends more.
MAX_BODY_BYTES = 6 * 1024 * 1024
# One batched inference must finish well inside API Gateway's 29 s integration timeout on the
# smallest supported memory size; 8 images of the payload ceiling fit both limits.
MAX_BATCH = 8
DEFAULT_TOP_K = 5
# A valid JSON body is one object holding at most a list of base64 strings: 2 brackets, and a
# comma per image plus one per data URL. Counting brackets and commas before json.loads (a C
# scan of the bytes, brackets inside strings included) bounds its depth and element count, so
# 6 MiB of "[[[[" (RecursionError) or "{},{}" (~150 MB of dicts) is refused without parsing.
MAX_JSON_BRACKETS = 16
MAX_JSON_COMMAS = 64
ROUTES: dict[str, tuple[str, ...]] = {"/predict": ("POST",), "/health": ("GET",)}
_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,", re.IGNORECASE)
_JSON_FIELDS = {"image", "images", "top_k"}


@dataclass(frozen=True)
class PredictRequest:
    images: list[bytes]
    batch: bool  # True when the client sent {"images": [...]}; shapes the response
    top_k: int | None  # None -> DEFAULT_TOP_K, clamped to the model's classes by the caller


def _invalid_event(reason: str) -> ApiError:
    return ApiError(400, "invalid_event", f"Not an API Gateway proxy event: {reason}.")


def _is_text(value: object) -> bool:
    """A str that is valid Unicode (no lone surrogates, which JSON's \\ud800 escapes can carry)."""
    if not isinstance(value, str):
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _ascii_texts(values: Iterable[Any]) -> bool:
    """True if every item is a str and all of them ASCII: one C-level join, no Python loop."""
    try:
        return "".join(values).isascii()
    except TypeError:  # an item that is not a str
        return False


def _check_map(event: dict[str, Any], name: str, *, multi: bool) -> None:
    mapping = event.get(name)
    if mapping is None:
        return
    wanted = "lists of strings" if multi else "strings"
    if not isinstance(mapping, dict):
        raise _invalid_event(f"{name} must be an object mapping names to {wanted}")
    # What API Gateway sends (ASCII names and values) passes in C; anything else takes the
    # per-item walk below, which decides. A recorded event has ~40 headers: ~0.1 ms saved.
    values = mapping.values()
    if _ascii_texts(mapping.keys()) and (
        _ascii_texts(chain.from_iterable(values))
        if multi and all(isinstance(v, list) for v in values)
        else not multi and _ascii_texts(values)
    ):
        return
    for key, value in mapping.items():
        values = value if multi else [value]
        if not (_is_text(key) and isinstance(values, list) and all(map(_is_text, values))):
            raise _invalid_event(f"{name} must map names to {wanted}")


def check_event(event: Any) -> dict[str, Any]:
    """The event, if it has the types API Gateway's REST proxy integration gives every field used.

    A direct invoke (console, SDK, another service) can send any JSON at all; anything API
    Gateway would never send is a 400 ``invalid_event`` rather than a TypeError deeper down.
    """
    if not isinstance(event, dict):
        raise _invalid_event("the event must be a JSON object")
    for name in ("path", "httpMethod"):
        if event.get(name) is not None and not _is_text(event[name]):
            raise _invalid_event(f"{name} must be a string")
    # The body's Unicode is checked where it is encoded (body_bytes), not copied here.
    if event.get("body") is not None and not isinstance(event["body"], str):
        raise _invalid_event("body must be a string or null")
    if event.get("isBase64Encoded") is not None and not isinstance(event["isBase64Encoded"], bool):
        raise _invalid_event("isBase64Encoded must be true or false")
    _check_map(event, "headers", multi=False)
    _check_map(event, "queryStringParameters", multi=False)
    _check_map(event, "multiValueHeaders", multi=True)
    _check_map(event, "multiValueQueryStringParameters", multi=True)
    return event


def header(event: dict[str, Any], name: str) -> str | None:
    """Case-insensitive header lookup (HTTP header names are case-insensitive; clients vary)."""
    wanted = name.lower()
    for key, value in (event.get("headers") or {}).items():
        if key.lower() == wanted:
            return value
    for key, values in (event.get("multiValueHeaders") or {}).items():
        if key.lower() == wanted and values:
            return values[0]
    return None


def query_param(event: dict[str, Any], name: str) -> str | None:
    value = (event.get("queryStringParameters") or {}).get(name)
    if value is None:
        values = (event.get("multiValueQueryStringParameters") or {}).get(name) or []
        value = values[0] if values else None
    return value


def route(event: dict[str, Any]) -> str:
    """The route name for the event, or an ApiError 400 (not an API Gateway event)/404/405."""
    check_event(event)
    path = (event.get("path") or "/").rstrip("/") or "/"
    method = (event.get("httpMethod") or "").upper()
    allowed = ROUTES.get(path)
    if allowed is None:
        raise ApiError(404, "not_found", f"No route {path}. Routes: POST /predict, GET /health.")
    if method not in allowed:
        raise ApiError(
            405,
            "method_not_allowed",
            f"{method or 'This method'} is not allowed on {path}; use {', '.join(allowed)}.",
            headers={"Allow": ", ".join(allowed)},
        )
    return path


def media_type(event: dict[str, Any]) -> str:
    value = header(event, "content-type") or ""
    return value.split(";", 1)[0].strip().lower()


def body_bytes(event: dict[str, Any]) -> bytes:
    body = event.get("body")
    if body is None or body == "":
        return b""
    if not isinstance(body, str):
        raise _invalid_event("body must be a string or null")
    if len(body) > MAX_BODY_BYTES * 4 // 3 + 4:
        raise _payload_too_large()
    if event.get("isBase64Encoded"):
        try:
            data = b64decode(body)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(400, "invalid_base64", "The request body is not valid base64.") from exc
    else:
        try:
            data = body.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _invalid_event("the body is not valid Unicode text") from exc
    if len(data) > MAX_BODY_BYTES:
        raise _payload_too_large()
    return data


def b64decode(value: str) -> bytes:
    """Strict base64 (the alphabet, correct padding) -> bytes; binascii.Error/ValueError if not.

    pybase64's SIMD decoder is ~10x the standard library's (a 6 MB body: ~0.5 vs ~5 ms here).
    It refuses a little more than the standard library's strict mode (excess padding after a
    complete group, e.g. "AAAA===="), so whatever it refuses is handed to the standard library,
    which decides as it always did: the same bytes and the same errors as base64.b64decode(...,
    validate=True) for every input (tests/handler/test_handler_hot_path.py).
    """
    try:
        return pybase64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return base64.b64decode(value, validate=True)


def _payload_too_large() -> ApiError:
    return ApiError(413, "payload_too_large", f"The request body exceeds {MAX_BODY_BYTES} bytes.")


def parse_top_k(value: Any, source: str) -> int:
    # ASCII only: Unicode \s takes "\x1c".."\x1f", which int() refuses (a ValueError, a 500 for
    # ?top_k=%1C2); Unicode \d would take digits from other scripts.
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,9}\s*", value, re.ASCII):
        value = int(value)
    # JSON Schema's integer is a number without a fractional part, so 3.0 is one (openapi.yaml).
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, "invalid_top_k", f"top_k ({source}) must be an integer.")
    if value < 1:
        raise ApiError(400, "invalid_top_k", f"top_k ({source}) must be at least 1.")
    return value


def _b64_image(value: Any, where: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise ApiError(400, "invalid_request", f"{where} must be a non-empty base64 string.")
    value = _DATA_URL.sub("", value, count=1)
    if len(value) > MAX_BODY_BYTES * 4 // 3 + 4:
        raise _payload_too_large()
    try:
        return b64decode(value)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "invalid_base64", f"{where} is not valid base64.") from exc


def parse_predict(event: dict[str, Any]) -> PredictRequest:
    """POST /predict event -> images and options; raises ApiError 400/413/415."""
    check_event(event)
    query_top_k = query_param(event, "top_k")
    top_k = parse_top_k(query_top_k, "query parameter") if query_top_k is not None else None
    kind = media_type(event)

    if kind in RAW_IMAGE_TYPES:
        data = body_bytes(event)
        if not data:
            raise ApiError(400, "invalid_request", "The request body is empty.")
        return PredictRequest(images=[data], batch=False, top_k=top_k)

    if kind != JSON_TYPE:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type {kind or '(none)'} is not supported; send "
            f"{', '.join(RAW_IMAGE_TYPES)} or {JSON_TYPE}.",
        )

    payload = parse_json(body_bytes(event))
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_request", "The JSON body must be an object.")
    unknown = sorted(set(payload) - _JSON_FIELDS)
    if unknown:
        raise ApiError(
            400,
            "invalid_request",
            f"Unknown field(s): {', '.join(unknown)}; allowed: image, images, top_k.",
        )
    if "top_k" in payload:
        # Both are validated; the JSON field, the more specific, wins (docs/openapi.yaml).
        top_k = parse_top_k(payload["top_k"], "JSON field")

    if ("image" in payload) == ("images" in payload):
        raise ApiError(
            400, "invalid_request", 'Send exactly one of "image" (base64) or "images" (list).'
        )
    if "image" in payload:
        return PredictRequest(
            images=[_b64_image(payload["image"], "image")], batch=False, top_k=top_k
        )
    items = payload["images"]
    if not isinstance(items, list) or not items:
        raise ApiError(400, "invalid_request", '"images" must be a non-empty list.')
    if len(items) > MAX_BATCH:
        raise ApiError(
            413,
            "too_many_images",
            f"{len(items)} images sent; the maximum per request is {MAX_BATCH}.",
        )
    images = [_b64_image(item, f"images[{i}]") for i, item in enumerate(items)]
    return PredictRequest(images=images, batch=True, top_k=top_k)


def parse_json(raw: bytes) -> Any:
    """JSON bytes -> value, its size and shape bounded before parsing; ApiError 400 otherwise."""
    brackets = raw.count(b"[") + raw.count(b"{")
    commas = raw.count(b",")
    if brackets > MAX_JSON_BRACKETS or commas > MAX_JSON_COMMAS:
        raise ApiError(
            400,
            "json_too_complex",
            f"The JSON body has {brackets} brackets and {commas} commas; a request needs at "
            f"most {MAX_JSON_BRACKETS} and {MAX_JSON_COMMAS} "
            '({"image": ...} or {"images": [...], "top_k": ...}).',
        )
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        # ValueError beyond JSONDecodeError: an integer past Python's 4300-digit str limit.
        raise ApiError(400, "malformed_json", f"The body is not valid JSON: {exc}") from exc


def resolve_top_k(top_k: int | None, num_classes: int) -> int:
    if top_k is None:
        return min(DEFAULT_TOP_K, num_classes)
    if top_k > num_classes:
        raise ApiError(
            400,
            "invalid_top_k",
            f"top_k must be between 1 and {num_classes} (the model's classes).",
        )
    return top_k


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_predictions(logits: np.ndarray, labels: list[str], top_k: int) -> list[dict[str, Any]]:
    """One image's logits -> top_k {label, index, probability}, most probable first."""
    probs = softmax(logits)
    # Stable sort on the negated probabilities: ties keep the lower class index first.
    order = np.argsort(-probs, kind="stable")[:top_k]
    return [{"label": labels[i], "index": int(i), "probability": float(probs[i])} for i in order]


def json_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"Content-Type": JSON_TYPE, "Cache-Control": "no-store", **(headers or {})},
        "body": json.dumps(body, separators=(",", ":")),
        "isBase64Encoded": False,
    }


def error_response(error: ApiError) -> dict[str, Any]:
    return json_response(
        error.status, {"error": {"code": error.code, "message": error.message}}, error.headers
    )
