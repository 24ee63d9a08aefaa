"""The HTTP contract through the real, decorated handler(event, context) and recorded events."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import onnxruntime as ort
import pytest
from handler_testkit import FakeContext, body_of, predict_event, route_event
from hostile_inputs import jpeg_with_scans, sliver_png
from PIL import Image, ImageOps
from torchvision import transforms

import api
from model_export.photos import photographs

# /health flushes no application metric; Powertools warns about that on every call.
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")

PHOTOS = {p.name: p for p in photographs()}
JPEG = PHOTOS["rocket.jpg"].read_bytes()
PNG = PHOTOS["chelsea.png"].read_bytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def reference_probabilities(fp32_model_dir):
    """Softmax over ONNX Runtime logits of torchvision-preprocessed photos, computed here."""
    session = ort.InferenceSession(str(fp32_model_dir / "model.onnx"))
    tf = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )

    def probs(data: bytes) -> np.ndarray:
        img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        logits = session.run(None, {"input": tf(img).numpy()[None]})[0][0].astype(np.float64)
        e = np.exp(logits - logits.max())
        return e / e.sum()

    return probs


def assert_predictions_match(predictions, expected: np.ndarray, labels, top_k: int):
    assert len(predictions) == top_k
    order = np.argsort(-expected, kind="stable")[:top_k]
    assert [p["index"] for p in predictions] == [int(i) for i in order]
    assert [p["label"] for p in predictions] == [labels[i] for i in order]
    np.testing.assert_allclose(
        [p["probability"] for p in predictions], expected[order], rtol=1e-4, atol=1e-6
    )
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)


def test_raw_jpeg_gets_top5_softmax_with_model_and_timings(
    invoke, shared_runtime, fp32_published, reference_probabilities
):
    response = invoke(predict_event(JPEG, "image/jpeg"))
    assert response["statusCode"] == 200
    body = body_of(response)
    assert set(body) == {"predictions", "model", "timings_ms"}
    assert_predictions_match(
        body["predictions"], reference_probabilities(JPEG), fp32_published.manifest["labels"], 5
    )
    assert body["model"] == {
        "name": fp32_published.manifest["model_name"],
        "sha256": fp32_published.sha256,
    }
    timings = body["timings_ms"]
    assert set(timings) == {"decode_preprocess", "inference", "total"}
    assert 0 < timings["decode_preprocess"] < timings["total"]
    assert 0 < timings["inference"] < timings["total"]


@pytest.mark.parametrize(
    ("data", "content_type"),
    [(PNG, "image/png"), (JPEG, "IMAGE/JPEG; charset=binary"), (PNG, "image/webp")],
)
def test_raw_image_content_types(
    invoke, data, content_type, fp32_published, reference_probabilities
):
    response = invoke(predict_event(data, content_type))
    assert response["statusCode"] == 200
    assert_predictions_match(
        body_of(response)["predictions"],
        reference_probabilities(data),
        fp32_published.manifest["labels"],
        5,
    )


def test_header_names_are_case_insensitive(invoke):
    event = predict_event(JPEG, "image/jpeg", header_name="CONTENT-TYPE")
    assert "Content-Type" not in event["headers"]
    assert invoke(event)["statusCode"] == 200


def test_json_single_image_and_data_url(invoke, fp32_published, reference_probabilities):
    for value in (b64(PNG), "data:image/png;base64," + b64(PNG)):
        response = invoke(predict_event({"image": value}, "application/json"))
        assert response["statusCode"] == 200
        assert_predictions_match(
            body_of(response)["predictions"],
            reference_probabilities(PNG),
            fp32_published.manifest["labels"],
            5,
        )


def test_json_body_base64_encoded_by_api_gateway(invoke):
    event = predict_event(json.dumps({"image": b64(PNG)}).encode(), "application/json")
    assert event["isBase64Encoded"] is True
    assert invoke(event)["statusCode"] == 200


def test_top_k_from_query_and_json(invoke, fp32_published):
    body = body_of(invoke(predict_event(JPEG, query={"top_k": "3"})))
    assert len(body["predictions"]) == 3
    body = body_of(invoke(predict_event({"image": b64(JPEG), "top_k": 1}, "application/json")))
    assert len(body["predictions"]) == 1
    everything = body_of(invoke(predict_event(JPEG, query={"top_k": "1000"})))["predictions"]
    assert len(everything) == 1000
    assert sorted(p["index"] for p in everything) == list(range(1000))
    assert sum(p["probability"] for p in everything) == pytest.approx(1.0, abs=1e-6)


def test_json_top_k_takes_precedence_over_the_query_parameter(invoke, fp32_published):
    # Both schema-valid, so both accepted (docs/openapi.yaml): the JSON field wins.
    event = predict_event(
        {"image": b64(JPEG), "top_k": 2}, "application/json", query={"top_k": "7"}
    )
    response = invoke(event)
    assert response["statusCode"] == 200
    assert len(body_of(response)["predictions"]) == 2


def test_an_integral_json_number_is_an_integer_top_k(invoke, fp32_published):
    # JSON Schema (and so docs/openapi.yaml) counts 3.0 as an integer; 2.5 stays a 400.
    event = predict_event({"image": b64(JPEG), "top_k": 3.0}, "application/json")
    response = invoke(event)
    assert response["statusCode"] == 200
    assert len(body_of(response)["predictions"]) == 3


def test_batch_returns_one_entry_per_image_in_order(
    invoke, fp32_published, reference_probabilities
):
    names = ["rocket.jpg", "chelsea.png", "coffee.png", "grace_hopper.jpg"]
    images = [PHOTOS[n].read_bytes() for n in names]
    response = invoke(
        predict_event({"images": [b64(i) for i in images], "top_k": 3}, "application/json")
    )
    assert response["statusCode"] == 200
    batch = body_of(response)["predictions"]
    assert len(batch) == len(images)
    for data, predictions in zip(images, batch, strict=True):
        assert_predictions_match(
            predictions, reference_probabilities(data), fp32_published.manifest["labels"], 3
        )
    # The same answers, in the same order, as one request per image.
    singles = [
        body_of(invoke(predict_event(data, query={"top_k": "3"})))["predictions"] for data in images
    ]
    for single, batched in zip(singles, batch, strict=True):
        assert [p["index"] for p in single] == [p["index"] for p in batched]
        np.testing.assert_allclose(
            [p["probability"] for p in single], [p["probability"] for p in batched], rtol=1e-4
        )


def test_health_reports_model_and_cold_flag(make_runtime, fp32_published, invoke):
    runtime = make_runtime(fp32_published)
    first = invoke(route_event("GET", "/health"), runtime)
    second = invoke(route_event("GET", "/health"), runtime)
    assert first["statusCode"] == second["statusCode"] == 200
    assert body_of(first) == {
        "status": "ok",
        "model": {"name": fp32_published.manifest["model_name"], "sha256": fp32_published.sha256},
        "cold_start": True,
    }
    assert body_of(second)["cold_start"] is False


def test_provisioned_concurrency_first_request_is_not_cold(
    make_runtime, fp32_published, invoke, monkeypatch
):
    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", "provisioned-concurrency")
    runtime = make_runtime(fp32_published)
    assert body_of(invoke(route_event("GET", "/health"), runtime))["cold_start"] is False


def _too_many_pixels_png() -> bytes:
    import struct
    import zlib

    data = bytearray(PNG)
    data[16:24] = struct.pack(">II", 9000, 9000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _gif() -> bytes:
    out = io.BytesIO()
    Image.open(PHOTOS["chelsea.png"]).convert("RGB").save(out, "GIF")
    return out.getvalue()


ERROR_CASES = {
    "malformed_json": (
        lambda: predict_event('{"image": ', "application/json"), 400, "malformed_json"),
    "json_not_object": (
        lambda: predict_event("[1, 2]", "application/json"), 400, "invalid_request"),
    "json_unknown_field": (
        lambda: predict_event({"img": b64(PNG)}, "application/json"), 400, "invalid_request"),
    "json_image_and_images": (
        lambda: predict_event({"image": b64(PNG), "images": [b64(PNG)]}, "application/json"),
        400, "invalid_request"),
    "json_empty_images": (
        lambda: predict_event({"images": []}, "application/json"), 400, "invalid_request"),
    "invalid_base64_json": (
        lambda: predict_event({"image": "not*base64!"}, "application/json"), 400,
        "invalid_base64"),
    "invalid_base64_body": (
        lambda: predict_event("@@@not base64@@@", "image/jpeg", base64_encoded=True), 400,
        "invalid_base64"),
    "empty_body": (lambda: predict_event(b"", "image/jpeg"), 400, "invalid_request"),
    "not_an_image": (lambda: predict_event(b"hello, world", "image/png"), 400, "not_an_image"),
    "truncated_jpeg": (lambda: predict_event(JPEG[: len(JPEG) // 3]), 400, "corrupt_image"),
    "corrupt_image_in_batch": (
        lambda: predict_event({"images": [b64(PNG), b64(JPEG[:2000])]}, "application/json"),
        400, "corrupt_image"),
    "top_k_zero": (lambda: predict_event(JPEG, query={"top_k": "0"}), 400, "invalid_top_k"),
    "top_k_text": (lambda: predict_event(JPEG, query={"top_k": "five"}), 400, "invalid_top_k"),
    "top_k_too_big": (lambda: predict_event(JPEG, query={"top_k": "1001"}), 400, "invalid_top_k"),
    # Found by `make fuzz`: Unicode whitespace int() refuses was a ValueError (500).
    "top_k_control_char": (lambda: predict_event(JPEG, query={"top_k": "\x1c2"}), 400,
                           "invalid_top_k"),
    "top_k_non_ascii_digit": (lambda: predict_event(JPEG, query={"top_k": "\u0663"}), 400,
                              "invalid_top_k"),
    "top_k_bool": (
        lambda: predict_event({"image": b64(PNG), "top_k": True}, "application/json"), 400,
        "invalid_top_k"),
    "top_k_float": (
        lambda: predict_event({"image": b64(PNG), "top_k": 2.5}, "application/json"), 400,
        "invalid_top_k"),
    "top_k_query_invalid_beside_json": (
        lambda: predict_event({"image": b64(PNG), "top_k": 2}, "application/json",
                              query={"top_k": "0"}), 400, "invalid_top_k"),
    "payload_too_large": (
        lambda: predict_event(b"\xff" * (api.MAX_BODY_BYTES + 1)), 413, "payload_too_large"),
    "too_many_images": (
        lambda: predict_event({"images": [b64(PNG)] * (api.MAX_BATCH + 1)}, "application/json"),
        413, "too_many_images"),
    "image_dimensions_too_large": (
        lambda: predict_event(_too_many_pixels_png(), "image/png"), 413, "image_too_large"),
    "unsupported_content_type": (
        lambda: predict_event(b"GIF89a", "image/gif"), 415, "unsupported_media_type"),
    "text_plain": (lambda: predict_event("hello", "text/plain"), 415, "unsupported_media_type"),
    "missing_content_type": (lambda: predict_event(JPEG, None), 415, "unsupported_media_type"),
    "gif_bytes_as_jpeg": (lambda: predict_event(_gif(), "image/jpeg"), 415,
                          "unsupported_image_format"),
    "json_too_deep": (
        lambda: predict_event("[" * 50_000, "application/json"), 400, "json_too_complex"),
    "json_integer_past_digit_limit": (
        lambda: predict_event('{"image": "aGk=", "top_k": ' + "9" * 5000 + "}",
                              "application/json"), 400, "malformed_json"),
    "event_headers_as_list": (
        lambda: {**predict_event(JPEG), "headers": [["Content-Type", "image/jpeg"]]}, 400,
        "invalid_event"),
    "extreme_aspect_ratio": (
        lambda: predict_event(sliver_png(), "image/png"), 422, "extreme_aspect_ratio"),
    "jpeg_too_many_scans": (lambda: predict_event(jpeg_with_scans(200)), 422, "image_too_complex"),
    "unknown_route": (lambda: route_event("GET", "/nope"), 404, "not_found"),
    "get_predict": (lambda: route_event("GET", "/predict"), 405, "method_not_allowed"),
    "post_health": (lambda: route_event("POST", "/health"), 405, "method_not_allowed"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_error_classes(invoke, case, capsys):
    make_event, status, code = ERROR_CASES[case]
    response = invoke(make_event())
    assert response["statusCode"] == status
    body = body_of(response)
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"].strip()
    assert "Traceback" not in response["body"]
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    errors = [m for m in emf if "Errors" in m]
    assert [(m["code"], m["Errors"]) for m in errors] == [(code, [1.0])]


def test_method_not_allowed_names_the_allowed_method(invoke):
    response = invoke(route_event("DELETE", "/predict"))
    assert response["statusCode"] == 405
    assert response["headers"]["Allow"] == "POST"


def test_unexpected_error_is_generic_500_logged_with_request_id(
    invoke, shared_runtime, monkeypatch, log_records
):
    def explode(_batch):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(shared_runtime.model, "infer", explode)
    context = FakeContext(aws_request_id="req-500-abc")
    response = invoke(predict_event(JPEG), context=context)
    assert response["statusCode"] == 500
    error = body_of(response)["error"]
    assert error["code"] == "internal_error"
    assert "req-500-abc" in error["message"]
    assert "secret" not in response["body"]
    failure = next(entry for entry in log_records() if entry.get("message") == "Unhandled error")
    assert failure["level"] == "ERROR"
    assert failure["function_request_id"] == "req-500-abc"
    assert "secret internal detail" in failure["exception"]


def test_logs_and_metrics_carry_request_context(invoke, capsys, log_records):
    event = predict_event(JPEG)
    context = FakeContext(aws_request_id="req-obs-1")
    assert invoke(event, context=context)["statusCode"] == 200
    served = next(entry for entry in log_records() if entry.get("message") == "Request served")
    assert served["function_request_id"] == "req-obs-1"
    assert served["correlation_id"] == event["requestContext"]["requestId"]
    assert served["cold_start"] in (True, False)
    assert served["service"] == "resnet-handler-test"
    assert served["status"] == 200
    emf = next(
        json.loads(line)
        for line in capsys.readouterr().out.splitlines()
        if '"_aws"' in line and "InferenceMs" in line
    )
    directive = emf["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "ResnetServingTest"
    assert directive["Dimensions"] == [["service"]]
    names = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert names["InferenceMs"] == names["PreprocessMs"] == "Milliseconds"


def test_model_load_and_cold_start_metrics(
    make_runtime, fp32_published, invoke, capsys, monkeypatch, handler_module
):
    # A fresh environment: reset Powertools' cold-start marker the way a new process would.
    monkeypatch.setattr("aws_lambda_powertools.metrics.provider.cold_start.is_cold_start", True)
    runtime = make_runtime(fp32_published)
    capsys.readouterr()
    assert invoke(route_event("GET", "/health"), runtime)["statusCode"] == 200
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    by_name = {
        m["Name"]: (entry, d)
        for entry in lines
        for d in entry["_aws"]["CloudWatchMetrics"]
        for m in d["Metrics"]
    }
    cold, cold_directive = by_name["ColdStart"]
    assert cold["ColdStart"] == [1.0]
    assert cold_directive["Namespace"] == handler_module.NAMESPACE == "ResnetServingTest"
    load, _ = by_name["ModelLoadMs"]
    # Runtimes built without an invocation in earlier tests flush their values here too.
    assert pytest.approx(runtime.load_timings.total_ms) in load["ModelLoadMs"]
