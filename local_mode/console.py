"""Keep the function's logs (JSON lines and EMF metrics on stdout, as in Lambda) apart from
what local mode prints for a person."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


@contextmanager
def stdout_to_file(path: Path) -> Iterator[TextIO]:
    """Send file descriptor 1 (everything the function prints) to `path`, as CloudWatch Logs
    would receive it, and yield a stream that still reaches the terminal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    saved_fd = os.dup(1)
    console = os.fdopen(os.dup(saved_fd), "w", buffering=1, encoding="utf-8", errors="replace")
    with path.open("wb") as log:  # one run per file, like a fresh log stream
        os.dup2(log.fileno(), 1)
        try:
            yield console
        finally:
            sys.stdout.flush()
            os.dup2(saved_fd, 1)
            os.close(saved_fd)
            console.close()
