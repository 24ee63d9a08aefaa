"""A fault-injecting HTTP proxy between the function's boto3 and the local S3 server.

The function keeps talking real S3 over real HTTP (AWS_ENDPOINT_URL_S3 points here); the proxy
forwards each request to moto's server unchanged, except while a fault is set:

- ``slow``: wait ``delay_s`` before forwarding (a slow or distant S3);
- ``error_5xx``: answer 503 SlowDown with S3's XML error body (boto3 retries it, then gives up);
- ``reset``: close the connection with a TCP reset before any response;
- ``truncate``: send the object's headers (full Content-Length) and half its body, then close;
- ``other_object``: answer a GetObject with another object's bytes (``other_body``), as a
  misconfigured key or a tampered bucket would.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

FAULTS = ("none", "slow", "error_5xx", "reset", "truncate", "other_object")

_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "trailer"}


@dataclass
class FaultState:
    mode: str = "none"
    delay_s: float = 0.0
    other_body: bytes = b""
    requests: int = 0  # every request that reached the proxy
    faulted: int = 0  # requests the current or an earlier fault was applied to
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        state = self.server.state
        with state.lock:
            state.requests += 1
            mode, delay, other = state.mode, state.delay_s, state.other_body
            if mode != "none":
                state.faulted += 1
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if mode == "reset":
            # SO_LINGER 0: close() sends RST instead of FIN, as a dropped connection would.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if mode == "error_5xx":
            self._reply(503, {"Content-Type": "application/xml"}, _SLOW_DOWN)
            return
        if mode == "slow":
            time.sleep(delay)
        status, headers, payload = self._forward(body)
        is_get_object = self.command == "GET" and status == 200 and "?" not in self.path
        if mode == "other_object" and is_get_object:
            headers = {k: v for k, v in headers.items() if k.lower() not in ("etag", "content-md5")}
            payload = other
        if mode == "truncate" and is_get_object:
            self.send_response(status)
            for k, v in headers.items():
                if k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self._reply(status, headers, payload)

    def _forward(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        target = urlsplit(self.server.target)
        conn = HTTPConnection(target.hostname or "127.0.0.1", target.port or 80, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            out = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP}
            return response.status, out, payload
        finally:
            conn.close()

    def _reply(self, status: int, headers: dict[str, str], payload: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            if k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _serve


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    state: FaultState
    target: str

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # resets and truncations break connections on purpose


@dataclass
class FaultyS3Proxy:
    endpoint_url: str
    state: FaultState

    def set(self, mode: str, *, delay_s: float = 0.0, other_body: bytes = b"") -> None:
        if mode not in FAULTS:
            raise ValueError(f"unknown fault {mode!r}; one of {', '.join(FAULTS)}")
        with self.state.lock:
            self.state.mode, self.state.delay_s, self.state.other_body = mode, delay_s, other_body

    def clear(self) -> None:
        self.set("none")

    @property
    def requests(self) -> int:
        with self.state.lock:
            return self.state.requests


@contextlib.contextmanager
def faulty_s3_proxy(target: str) -> Iterator[FaultyS3Proxy]:
    """Serve the proxy on 127.0.0.1 (a free port) in front of `target` until exit."""
    server = _ProxyServer(("127.0.0.1", 0), _Handler)
    server.state, server.target = FaultState(), target
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        port = int(server.server_address[1])
        yield FaultyS3Proxy(endpoint_url=f"http://127.0.0.1:{port}", state=server.state)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
