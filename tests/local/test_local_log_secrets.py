"""No log line - the function's, the stage's access log, local mode's own - carries the API key
value or image bytes, whatever the request.

Local mode writes the function's logs (CloudWatch's stand-in) to a file and the access log in the
stage's own format (the template's AccessLogSetting) to its output, so the logs a deployed stage
would write are the ones grepped here. WAF logs (prod) redact the key by configuration; a CDK
test asserts that.
"""

from __future__ import annotations

import base64
import io
import time
import uuid
from pathlib import Path

import requests
from PIL import Image, PngImagePlugin
from serve_helpers import ServedEndpoint


def _marked_png(marker: str) -> bytes:
    """A real PNG whose bytes hold `marker` as text (a tEXt chunk) and recognizable pixels."""
    image = Image.new("RGB", (64, 48), (17, 99, 201))
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", marker)
    out = io.BytesIO()
    image.save(out, "PNG", pnginfo=info)
    return out.getvalue()


def _windows(data: bytes) -> list[str]:
    """Recognizable renderings of `data` a log might hold: base64 at each alignment, hex."""
    found = []
    for shift in range(3):
        encoded = base64.b64encode(data[shift:]).decode()
        found.append(encoded[8:56])
    found.append(data[:24].hex())
    return found


def _new_text(path: Path, offset: int) -> str:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", errors="replace")


def test_no_log_line_carries_the_api_key_or_image_bytes(served: ServedEndpoint) -> None:
    logs = [served.log, served.log.parent / "function.log"]
    offsets = {path: path.stat().st_size for path in logs}
    key = served.api_key
    marker = f"IMAGE-MARKER-{uuid.uuid4().hex}"
    png = _marked_png(marker)
    not_an_image = f"NOT-AN-IMAGE-{marker}".encode() * 40
    url = served.endpoint
    auth = {"x-api-key": key}
    sent = [
        requests.post(
            url + "predict?top_k=2",
            data=png,
            headers={**auth, "Content-Type": "image/png"},
            timeout=60,
        ),
        requests.post(
            url + "predict",
            json={"image": base64.b64encode(png).decode(), "top_k": 1},
            headers=auth,
            timeout=60,
        ),
        requests.post(
            url + "predict",
            data=not_an_image,
            headers={**auth, "Content-Type": "image/jpeg"},
            timeout=60,
        ),
        requests.post(
            url + "predict",
            json={"image": base64.b64encode(not_an_image).decode()},
            headers=auth,
            timeout=60,
        ),
        # A wrong key that contains the right one, and the key where it does not belong.
        requests.post(
            url + "predict",
            data=png,
            headers={"x-api-key": key + "-wrong", "Content-Type": "image/png"},
            timeout=60,
        ),
        requests.get(url + "health?api_key=" + key, headers=auth, timeout=60),
        requests.get(url + "no-such-route", headers={**auth, "X-Debug": key}, timeout=60),
        requests.post(url + "predict", data=png, headers=auth, timeout=60),  # no Content-Type
    ]
    assert [r.status_code for r in sent] == [200, 200, 400, 400, 403, 200, 403, 400]

    deadline = time.monotonic() + 10
    request_ids = [r.headers["x-amzn-RequestId"] for r in sent]
    while True:
        text = "".join(_new_text(path, offsets[path]) for path in logs)
        if all(rid in text for rid in request_ids) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    # The logs did record these requests (access log and function log), so absence means something.
    assert all(rid in text for rid in request_ids), text[-3000:]
    assert '"Request served"' in text
    assert '"Request refused"' in text

    assert key not in text
    for needle in [marker, *_windows(png), *_windows(not_an_image)]:
        assert needle not in text, needle
