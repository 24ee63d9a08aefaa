"""The event target's input layout: fuzzed bytes <-> a POST /predict proxy event.

A plain layout (not atheris' FuzzedDataProvider) so seeds can be written with ``encode`` and a
finding reads as a request. Byte 0 holds the flags, the rest is the body:

- bits 0-2: the Content-Type, one of CONTENT_TYPES (the last: no header);
- bits 3-4: how the rest becomes the event: TEXT body; BINARY body (base64-encoded with
  ``isBase64Encoded``, as API Gateway passes binary media types); CLAIMED_BASE64 (the bytes as
  the body string, flagged base64: a direct invoke can send anything); DIRECT_INVOKE (the rest,
  parsed as JSON, is the whole event);
- bit 5: the body starts with a ``top_k`` query value, up to the first newline;
- bit 6: Content-Type only in ``multiValueHeaders``; bit 7: header name in lower case.

Every other field comes from the recorded SAM event tests/events/predict_post.json.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

from fuzz.properties import ROOT, event_from_json

CONTENT_TYPES: tuple[str | None, ...] = (
    "image/jpeg",
    "image/png",
    "image/webp",
    "application/json",
    "application/json; charset=utf-8",
    "Image/PNG ; q=1",
    "text/plain",
    None,
)
TEXT, BINARY, CLAIMED_BASE64, DIRECT_INVOKE = range(4)
_TOP_K, _MULTI_ONLY, _LOWER = 0x20, 0x40, 0x80
# The media types whose body is the image itself (RFC 9110: case-insensitive, parameters aside).
_RAW_IMAGE_TYPES = {"image/jpeg", "image/png", "image/webp"}

TEMPLATE: dict[str, Any] = json.loads((ROOT / "tests" / "events" / "predict_post.json").read_text())


def decode(data: bytes) -> tuple[Any, list[bytes] | None]:
    """(event or None if Lambda could not even parse it, the images the body must give or None)."""
    flags, rest = (data[0], data[1:]) if data else (0, b"")
    content_type = CONTENT_TYPES[flags & 7]
    mode = (flags >> 3) & 3
    if mode == DIRECT_INVOKE:
        return event_from_json(rest.decode("utf-8", "replace")), None
    top_k = None
    if flags & _TOP_K:
        line, _, rest = rest.partition(b"\n")
        top_k = line.decode("utf-8", "replace")

    event = copy.deepcopy(TEMPLATE)
    for field in ("headers", "multiValueHeaders"):
        event[field] = {k: v for k, v in event[field].items() if k.lower() != "content-type"}
    if content_type is not None:
        name = "content-type" if flags & _LOWER else "Content-Type"
        if not flags & _MULTI_ONLY:
            event["headers"][name] = content_type
        event["multiValueHeaders"][name] = [content_type]
    event["queryStringParameters"] = None if top_k is None else {"top_k": top_k}
    event["multiValueQueryStringParameters"] = None if top_k is None else {"top_k": [top_k]}

    expected = None
    if mode == TEXT:
        # Invalid UTF-8 becomes lone surrogates: what a direct invoke's "\udc80" escapes give.
        event["body"], event["isBase64Encoded"] = rest.decode("utf-8", "surrogateescape"), False
    elif mode == BINARY:
        event["body"], event["isBase64Encoded"] = base64.b64encode(rest).decode("ascii"), True
        media = (content_type or "").split(";", 1)[0].strip().lower()
        if media in _RAW_IMAGE_TYPES and rest:
            expected = [rest]
    else:
        event["body"], event["isBase64Encoded"] = rest.decode("latin-1"), True
    return event, expected


def encode(
    content_type: str | None,
    mode: int,
    body: bytes,
    *,
    top_k: str | None = None,
    multi_only: bool = False,
    lower: bool = False,
) -> bytes:
    """The input ``decode`` turns into that event (for seeds)."""
    flags = CONTENT_TYPES.index(content_type) | mode << 3
    flags |= (_TOP_K if top_k is not None else 0) | (_MULTI_ONLY if multi_only else 0)
    flags |= _LOWER if lower else 0
    prefix = b"" if top_k is None else top_k.encode() + b"\n"
    return bytes([flags]) + prefix + body
