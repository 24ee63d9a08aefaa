"""classifier_client against a scripted HTTP server on loopback: retries, backoff, errors, CLI."""

from __future__ import annotations

import base64
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from classifier_client import (
    ApiError,
    ClassifierError,
    Client,
    RetryPolicy,
    iter_images,
    read_outputs_file,
    resolve_target,
)
from classifier_client.cli import main as cli_main

REPO_ROOT = Path(__file__).resolve().parents[2]
OK_BODY = {
    "predictions": [{"label": "tabby", "index": 281, "probability": 0.75}],
    "model": {"name": "resnet18", "sha256": "0" * 64},
    "timings_ms": {"total": 1.0},
}


class Script:
    """Responses to play in order (then 200 OK), and what each request looked like."""

    def __init__(self, steps: list[tuple[int, dict[str, str], float]]) -> None:
        self.steps = steps
        self.requests: list[dict[str, object]] = []
        self.lock = threading.Lock()


@pytest.fixture
def scripted() -> Iterator[tuple[str, Script]]:
    script = Script([])

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with script.lock:
                script.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers.items()),
                        "body": body,
                        "at": time.monotonic(),
                    }
                )
                step = script.steps.pop(0) if script.steps else (200, {}, 0.0)
            status, headers, delay = step
            if delay:
                time.sleep(delay)
            payload = json.dumps(
                OK_BODY if status == 200 else {"message": f"scripted {status}"}
            ).encode()
            try:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up on a deliberately slow answer

        do_GET = do_POST = _serve

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/", script
    server.shutdown()
    server.server_close()
    thread.join()


class UpperBound(random.Random):
    """Jitter that always picks the top of the window: makes the backoff ceiling observable."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_retries_503_then_succeeds_with_exponential_backoff(scripted, tmp_path):
    url, script = scripted
    script.steps = [(503, {}, 0.0), (503, {}, 0.0)]
    sleeps: list[float] = []
    retried: list[tuple[int, str]] = []
    client = Client(
        url,
        "key",
        retry=RetryPolicy(max_attempts=4, base_s=0.05, cap_s=1.0),
        sleep=lambda s: (sleeps.append(s), time.sleep(s)),
        rng=UpperBound(),
        on_retry=lambda n, why, _d: retried.append((n, why)),
    )
    result = client.classify(b"\xff\xd8\xff fake jpeg")
    assert result["predictions"][0]["label"] == "tabby"
    assert len(script.requests) == 3
    assert sleeps == pytest.approx([0.05, 0.10])
    assert retried == [(1, "HTTP 503"), (2, "HTTP 503")]
    gaps = [b["at"] - a["at"] for a, b in zip(script.requests, script.requests[1:], strict=False)]
    assert all(gap >= wait for gap, wait in zip(gaps, sleeps, strict=True))


def test_backoff_is_jittered_below_an_exponential_ceiling():
    policy = RetryPolicy(max_attempts=8, base_s=0.25, cap_s=2.0)
    rng = random.Random(7)
    delays = [[policy.delay(n, rng) for n in range(1, 7)] for _ in range(200)]
    ceilings = [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    for row in delays:
        assert all(0 <= d <= c for d, c in zip(row, ceilings, strict=True))
    # Full jitter: the delays spread over the window instead of sitting on the ceiling.
    third = [row[2] for row in delays]
    assert min(third) < 0.2
    assert max(third) > 0.8


def test_429_honours_retry_after_and_sends_the_api_key_each_time(scripted):
    url, script = scripted
    script.steps = [(429, {"Retry-After": "0.3"}, 0.0)]
    sleeps: list[float] = []
    client = Client(url, "secret", sleep=lambda s: sleeps.append(s), rng=random.Random(0))
    client.health()
    assert len(script.requests) == 2
    assert sleeps == [pytest.approx(0.3)]
    assert all(r["headers"].get("x-api-key") == "secret" for r in script.requests)


def test_retries_are_bounded_and_the_last_error_is_raised(scripted):
    url, script = scripted
    script.steps = [(502, {}, 0.0)] * 5
    client = Client(url, "k", retry=RetryPolicy(max_attempts=3), sleep=lambda _s: None)
    with pytest.raises(ApiError) as info:
        client.health()
    assert info.value.status == 502
    assert len(script.requests) == 3


def test_timeout_is_retried(scripted):
    url, script = scripted
    script.steps = [(200, {}, 1.5)]  # the first answer comes after the client's timeout
    client = Client(url, "k", timeout_s=0.4, sleep=lambda _s: None)
    assert client.health()["model"]["name"] == "resnet18"
    assert len(script.requests) == 2


def test_client_errors_are_not_retried(scripted):
    url, script = scripted
    script.steps = [(400, {}, 0.0)]
    client = Client(url, "k", sleep=lambda _s: pytest.fail("must not back off on a 400"))
    with pytest.raises(ApiError) as info:
        client.classify(b"x", content_type="image/jpeg")
    assert info.value.status == 400
    assert len(script.requests) == 1


def test_raw_upload_uses_the_image_content_type_and_query_top_k(scripted):
    url, script = scripted
    client = Client(url, "k")
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
    client.classify(png, top_k=3)
    client.classify(png, top_k=3, content_type="image/webp")
    first, second = script.requests
    assert first["headers"]["Content-Type"] == "image/png"  # sniffed from the bytes
    assert second["headers"]["Content-Type"] == "image/webp"
    assert first["path"] == "/v1/predict?top_k=3"
    assert first["body"] == png


def test_batch_sends_base64_json(scripted, tmp_path):
    url, script = scripted
    a, b = tmp_path / "a.jpg", tmp_path / "b.png"
    a.write_bytes(b"\xff\xd8\xffAAA")
    b.write_bytes(b"\x89PNG\r\n\x1a\nBBB")
    Client(url, "k").classify_batch([a, b], top_k=2)
    sent = json.loads(script.requests[0]["body"])
    assert script.requests[0]["headers"]["Content-Type"] == "application/json"
    assert [base64.b64decode(s) for s in sent["images"]] == [a.read_bytes(), b.read_bytes()]
    assert sent["top_k"] == 2


def test_iter_images_walks_directories_sorted_and_filters_by_extension(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.JPG", "a.png", "sub/c.webp", "notes.txt", "sub/d.jpeg"):
        (tmp_path / name).write_bytes(b"x")
    explicit = tmp_path / "notes.txt"
    found = iter_images([tmp_path, explicit])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.png",
        "b.JPG",
        "sub/c.webp",
        "sub/d.jpeg",
        "notes.txt",
    ]
    with pytest.raises(ClassifierError, match="no such file"):
        iter_images([tmp_path / "missing.jpg"])


OUTPUTS = {
    "ResnetServingDev": {
        "EndpointUrl": "https://abc123.execute-api.eu-west-1.amazonaws.com/v1/",
        "ApiKeyId": "k3y1d",
        "ModelKey": "models/x/model.onnx",
    }
}


def test_outputs_file_gives_endpoint_and_key_id(tmp_path):
    path = tmp_path / "cdk-outputs-dev.json"
    path.write_text(json.dumps(OUTPUTS))
    outs = read_outputs_file(path)
    assert outs.endpoint == OUTPUTS["ResnetServingDev"]["EndpointUrl"]
    assert outs.api_key_id == "k3y1d"
    with pytest.raises(ClassifierError, match="get-api-key --api-key k3y1d"):
        resolve_target(outputs_file=path, env={})
    target = resolve_target(outputs_file=path, env={"CLASSIFIER_API_KEY": "v"})
    assert (target.endpoint, target.api_key) == (outs.endpoint, "v")


def test_outputs_file_with_two_stacks_needs_stack(tmp_path):
    both = {
        **OUTPUTS,
        "ResnetServingProd": {"EndpointUrl": "https://p.execute-api.eu-west-1.amazonaws.com/v1/"},
    }
    path = tmp_path / "out.json"
    path.write_text(json.dumps(both))
    with pytest.raises(ClassifierError, match="pass --stack"):
        read_outputs_file(path)
    assert read_outputs_file(path, "ResnetServingProd").endpoint.startswith("https://p.")


def test_fetch_api_key_reads_the_value_through_apigateway(tmp_path, monkeypatch):
    from moto import mock_aws

    for k, v in {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t"}.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        import boto3

        apigw = boto3.client("apigateway", region_name="eu-west-1")
        key = apigw.create_api_key(name="k", enabled=True, value="a-long-enough-key-value-123")
        outputs = {"ResnetServingDev": {**OUTPUTS["ResnetServingDev"], "ApiKeyId": key["id"]}}
        path = tmp_path / "out.json"
        path.write_text(json.dumps(outputs))
        target = resolve_target(outputs_file=path, fetch_api_key=True, env={})
    assert target.api_key == "a-long-enough-key-value-123"


def test_arguments_win_over_environment():
    env = {"CLASSIFIER_ENDPOINT": "http://127.0.0.1:1/v1/", "CLASSIFIER_API_KEY": "envkey"}
    assert resolve_target(env=env).api_key == "envkey"
    t = resolve_target(endpoint="http://127.0.0.1:2/v1/", api_key="argkey", env=env)
    assert (t.endpoint, t.api_key) == ("http://127.0.0.1:2/v1/", "argkey")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "classifier_client", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_cli_without_endpoint_fails_with_one_line():
    done = _cli("photo.jpg")
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: no endpoint")
    assert len(done.stderr.strip().splitlines()) == 1


def test_cli_missing_file_fails_with_one_line(scripted):
    url, _ = scripted
    done = _cli("nope.jpg", env={"CLASSIFIER_ENDPOINT": url, "CLASSIFIER_API_KEY": "k"})
    assert done.returncode == 1
    assert done.stderr.strip() == "error: no such file or directory: nope.jpg"


def test_cli_forbidden_is_one_line(scripted, tmp_path):
    url, script = scripted
    script.steps = [(403, {}, 0.0)]
    img = tmp_path / "a.jpg"
    img.write_bytes(b"\xff\xd8\xff")
    done = _cli(str(img), "--endpoint", url, "--api-key", "wrong")
    assert done.returncode == 1
    assert done.stderr.strip() == "error: HTTP 403: scripted 403"
    assert "Traceback" not in done.stderr


def test_cli_json_output_per_file(scripted, tmp_path, capsys):
    url, _ = scripted
    img = tmp_path / "a.jpg"
    img.write_bytes(b"\xff\xd8\xff")
    code = cli_main([str(img), "--endpoint", url, "--api-key", "k", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out == [{"file": str(img), **OK_BODY}]
