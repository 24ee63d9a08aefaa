"""A local S3 API server on loopback (moto's server mode), in this process.

The function talks to it over real HTTP through the standard AWS_ENDPOINT_URL_S3, exactly as it
talks to S3 in AWS; only the endpoint and the dummy credentials differ.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

LOCAL_REGION = "us-east-1"
# moto accepts any credentials; fixed dummy values keep boto3 from searching ~/.aws or IMDS.
DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


@dataclass(frozen=True)
class LocalS3:
    endpoint_url: str
    bucket: str
    region: str = LOCAL_REGION

    def client_env(self) -> dict[str, str]:
        """Environment that points boto3 (and so the function) at this server."""
        return {
            **DUMMY_CREDENTIALS,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=DUMMY_CREDENTIALS["AWS_SESSION_TOKEN"],
        )


@contextmanager
def local_s3(bucket: str = "local-model-bucket") -> Iterator[LocalS3]:
    """Start moto's S3 server on 127.0.0.1 (a free port), create the bucket, stop on exit."""
    from moto.server import ThreadedMotoServer

    # werkzeug logs every request to stderr by default; the function's own logs say enough.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3 = LocalS3(endpoint_url=f"http://{host}:{port}", bucket=bucket)
        s3.client().create_bucket(Bucket=bucket)
        yield s3
    finally:
        server.stop()
        # stop() ends serve_forever but leaves the listening socket open until GC.
        inner = getattr(server, "_server", None)
        if inner is not None:
            inner.server_close()


def apply_env(env: dict[str, str]) -> dict[str, str | None]:
    """Set variables; return the previous values so restore_env can undo it."""
    previous = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    return previous


def restore_env(previous: dict[str, str | None]) -> None:
    for k, v in previous.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
