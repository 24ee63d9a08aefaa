"""End to end over real HTTP on loopback: moto S3 server + gateway + the real handler + client.

The endpoint is `python -m local_mode.serve` in a subprocess (see conftest.py), configured by
the committed template and serving the session's exported FP32 model.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from serve_helpers import REPO_ROOT, port_is_closed, start_serve, stop_serve

from classifier_client import ApiError, Client, RetryPolicy
from local_mode.apispec import load_spec
from model_export.photos import photographs

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _photo(name: str) -> Path:
    return next(p for p in photographs() if p.name == name)


def reference_top5(model_dir: Path, photo: Path) -> list[tuple[int, float]]:
    """torchvision's ResNet eval transform + ONNX Runtime on the artifact, without our code."""
    import onnxruntime as ort
    from PIL import ImageOps
    from torchvision import transforms

    transform = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    image = ImageOps.exif_transpose(Image.open(photo)).convert("RGB")
    batch = transform(image).unsqueeze(0).numpy()
    session = ort.InferenceSession(
        str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    logits = session.run(["logits"], {"input": batch})[0][0].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    top = np.argsort(-probs)[:5]
    return [(int(i), float(probs[i])) for i in top]


@pytest.fixture(scope="module")
def client(served):
    with Client(served.endpoint, served.api_key, retry=RetryPolicy(max_attempts=6)) as c:
        yield c


@pytest.mark.parametrize("name", ["chelsea.png", "astronaut.png"])
def test_top5_matches_onnxruntime_run_directly(client, fp32_model_dir, name):
    labels = json.loads((fp32_model_dir / "manifest.json").read_text())["labels"]
    expected = reference_top5(fp32_model_dir, _photo(name))
    result = client.classify(_photo(name))
    got = result["predictions"]
    assert [p["index"] for p in got] == [i for i, _ in expected]
    assert [p["label"] for p in got] == [labels[i] for i, _ in expected]
    assert [p["probability"] for p in got] == pytest.approx([p for _, p in expected], abs=1e-4)


def test_health_names_the_published_model(client, fp32_model_dir):
    manifest = json.loads((fp32_model_dir / "manifest.json").read_text())
    health = client.health()
    assert health["model"] == {"name": manifest["model_name"], "sha256": manifest["sha256"]}


def test_batch_returns_one_entry_per_image_in_request_order(client):
    photos = [_photo(n) for n in ("coffee.png", "chelsea.png", "rocket.jpg")]
    singles = [client.classify(p, top_k=3)["predictions"] for p in photos]
    batch = client.classify_batch(photos, top_k=3)["predictions"]
    assert [[p["index"] for p in entry] for entry in batch] == [
        [p["index"] for p in entry] for entry in singles
    ]


@pytest.mark.parametrize("key", [None, "not-the-key"])
def test_missing_or_wrong_api_key_is_403(served, key):
    with pytest.raises(ApiError) as info:
        Client(served.endpoint, key).classify(_photo("chelsea.png"))
    assert info.value.status == 403
    assert info.value.code == "invalid_api_key"
    assert info.value.body["error"]["code"] == "invalid_api_key"


def test_bytes_that_are_not_an_image_are_400(client):
    with pytest.raises(ApiError) as info:
        client.classify(b"definitely not a jpeg", content_type="image/jpeg")
    assert info.value.status == 400
    assert set(info.value.body["error"]) == {"code", "message"}


def test_truncated_image_is_400(client):
    data = _photo("chelsea.png").read_bytes()
    with pytest.raises(ApiError) as info:
        client.classify(data[: len(data) // 3], content_type="image/png")
    assert info.value.status == 400


def test_image_over_the_pixel_limit_is_413_from_the_function(client):
    buffer = io.BytesIO()
    Image.new("1", (9000, 6000)).save(buffer, format="PNG")  # 54 MP in a few kB
    with pytest.raises(ApiError) as info:
        client.classify(buffer.getvalue(), content_type="image/png")
    assert info.value.status == 413
    assert "error" in info.value.body  # the function's JSON error, not the gateway's


def test_body_over_lambdas_payload_limit_is_413_from_the_gateway(client):
    with pytest.raises(ApiError) as info:
        client.classify(b"\xff\xd8\xff" + b"\0" * (7 * 1024 * 1024), content_type="image/jpeg")
    assert info.value.status == 413
    assert info.value.code == "payload_too_large"  # REQUEST_TOO_LARGE, in the API's error shape


def test_batch_over_the_limit_is_413(client):
    photo = _photo("chelsea.png")
    with pytest.raises(ApiError) as info:
        client.classify_batch([photo] * 9)
    assert info.value.status == 413


def test_throttled_requests_get_429_and_the_client_retries_them(served, stack_template):
    spec = load_spec(stack_template)
    assert spec.throttle_rate_rps
    burst = int(spec.throttle_burst or 1)
    no_retry = Client(served.endpoint, served.api_key, retry=RetryPolicy(max_attempts=1))
    statuses: list[int] = []
    throttled_bodies = []
    # Faster than the plan's rate until it pushes back (bounded, so a slow machine still ends).
    for _ in range(burst + 200):
        try:
            no_retry.health()
            statuses.append(200)
        except ApiError as exc:
            statuses.append(exc.status)
            throttled_bodies.append(exc.body)
        if len(throttled_bodies) >= 3:
            break
    assert 429 in statuses
    assert set(statuses) == {200, 429}
    assert all(body["error"]["code"] == "throttled" for body in throttled_bodies)
    retried: list[str] = []
    patient = Client(
        served.endpoint,
        served.api_key,
        retry=RetryPolicy(max_attempts=8, base_s=0.1, cap_s=2.0),
        on_retry=lambda _n, why, _d: retried.append(why),
    )
    for _ in range(burst + 5):
        assert patient.health()["status"] == "ok"
    assert "HTTP 429" in retried


def test_cli_classifies_a_directory_as_json(served, tmp_path):
    for name in ("chelsea.png", "coffee.png", "rocket.jpg"):
        shutil.copy(_photo(name), tmp_path / name)
    done = subprocess.run(
        [sys.executable, "-m", "classifier_client", str(tmp_path), "--json", "--batch-size", "2"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "CLASSIFIER_ENDPOINT": served.endpoint,
            "CLASSIFIER_API_KEY": served.api_key,
        },
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert [Path(r["file"]).name for r in results] == ["chelsea.png", "coffee.png", "rocket.jpg"]
    assert all(len(r["predictions"]) == 5 for r in results)
    assert "classified 3/3" in done.stderr


def test_serve_stops_cleanly_on_ctrl_c(fp32_model_dir, stack_template, tmp_path):
    process, ready, out = start_serve(fp32_model_dir, stack_template, tmp_path, "--no-throttle")
    info = json.loads(ready.read_text())
    health = requests.get(info["endpoint"] + "health", headers={"x-api-key": info["api_key"]})
    assert health.json()["cold_start"] is True
    outputs_file = tmp_path / "cdk-outputs-local.json"
    assert (
        json.loads(outputs_file.read_text())["ResnetServingLocal"]["EndpointUrl"]
        == (info["endpoint"])
    )
    assert stop_serve(process) == 0
    assert not outputs_file.exists()  # no outputs file left pointing at a stopped endpoint
    assert "Stopped" in out.read_text()
    assert port_is_closed(info["endpoint"])
    assert port_is_closed(info["s3_endpoint"])
