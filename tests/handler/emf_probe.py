"""One fresh execution environment of the real handler, for the metrics contract test.

    python tests/handler/emf_probe.py <function name> <photo.jpg>

Imports ``handler`` (INIT: model download, checksum, session) with whatever environment the
caller set, then serves a cold POST /predict, a warm POST /predict and a refused request
(GIF, 415) through the decorated ``handler(event, context)``. Powertools prints its EMF blobs
on stdout, as in Lambda; the statuses go to stderr as one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from handler_testkit import FakeContext, predict_event


def main(function_name: str, photo: Path) -> None:
    import handler

    context = FakeContext(function_name=function_name)
    jpeg = photo.read_bytes()
    events = [
        predict_event(jpeg, "image/jpeg"),
        predict_event(jpeg, "image/jpeg"),
        predict_event(b"GIF89a", "image/gif"),
    ]
    statuses = [handler.handler(event, context)["statusCode"] for event in events]
    print(json.dumps({"statuses": statuses}), file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
