"""docs/openapi.yaml is a valid OpenAPI document and real handler responses conform to it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from handler_testkit import FakeContext, predict_event, route_event
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from test_handler_routes import ERROR_CASES, JPEG, PNG, b64

import api
from stacks.gateway_responses import gateway_errors

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
SPEC = yaml.safe_load(SPEC_PATH.read_text())

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


def _deref(obj: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in obj:
        node: Any = SPEC
        for part in obj["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        obj = node
    return obj


# Headers API Gateway adds to every answer; the function's own response does not carry them.
GATEWAY_HEADERS = {"#/components/headers/RequestId", "#/components/headers/OptionalRequestId"}


def _validator(schema: dict[str, Any]) -> OAS31Validator:
    # Make the components reachable from the (inline) schema so its #/components refs resolve.
    return OAS31Validator({**schema, "components": SPEC["components"]})


def assert_conforms(method: str, path: str, response: dict[str, Any]) -> None:
    status = str(response["statusCode"])
    if path in SPEC["paths"] and method.lower() not in SPEC["paths"][path]:
        assert status == "405"
        spec_response = _deref({"$ref": "#/components/responses/MethodNotAllowed"})
    elif path in SPEC["paths"]:
        documented = SPEC["paths"][path][method.lower()]["responses"]
        assert status in documented, f"{method} {path} -> {status} is not documented"
        spec_response = _deref(documented[status])
    else:
        assert status == "404"
        spec_response = _deref({"$ref": "#/components/responses/NotFound"})
    content_type = response["headers"]["Content-Type"]
    schema = spec_response["content"][content_type]["schema"]
    _validator(schema).validate(json.loads(response["body"]))
    for header, definition in spec_response.get("headers", {}).items():
        if definition.get("$ref") in GATEWAY_HEADERS:
            continue
        assert header in response["headers"], f"documented header {header} missing"


def test_spec_is_valid_openapi():
    validate(SPEC)
    assert SPEC["openapi"].startswith("3.")
    assert not [k for k in json.dumps(SPEC).split('"') if k.startswith("x-amazon-apigateway")]


def test_success_responses_conform(invoke):
    cases = [
        ("POST", "/predict", predict_event(JPEG)),
        ("POST", "/predict", predict_event({"image": b64(PNG), "top_k": 2}, "application/json")),
        ("POST", "/predict", predict_event({"images": [b64(PNG), b64(JPEG)]}, "application/json")),
        ("GET", "/health", route_event("GET", "/health")),
    ]
    for method, path, event in cases:
        response = invoke(event)
        assert response["statusCode"] == 200
        assert_conforms(method, path, response)


def test_batch_response_does_not_pass_as_single_and_vice_versa(invoke):
    schemas = SPEC["components"]["schemas"]
    single = json.loads(invoke(predict_event(JPEG))["body"])
    batch = json.loads(invoke(predict_event({"images": [b64(PNG)]}, "application/json"))["body"])
    assert _validator(schemas["PredictResponse"]).is_valid(single)
    assert not _validator(schemas["BatchPredictResponse"]).is_valid(single)
    assert _validator(schemas["BatchPredictResponse"]).is_valid(batch)
    assert not _validator(schemas["PredictResponse"]).is_valid(batch)


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_error_responses_conform(invoke, case):
    make_event, status, _code = ERROR_CASES[case]
    event = make_event()
    response = invoke(event)
    assert response["statusCode"] == status
    assert_conforms(event["httpMethod"], event["path"], response)


def test_unavailable_and_internal_errors_conform(
    invoke, make_runtime, fp32_published, shared_runtime, monkeypatch
):
    broken = make_runtime(fp32_published, sha256="0" * 64)
    for event in (predict_event(JPEG), route_event("GET", "/health")):
        response = invoke(event, broken)
        assert response["statusCode"] == 503
        assert_conforms(event["httpMethod"], event["path"], response)

    def explode(_batch):
        raise RuntimeError("boom")

    monkeypatch.setattr(shared_runtime.model, "infer", explode)
    response = invoke(predict_event(JPEG), context=FakeContext(aws_request_id="r-1"))
    assert response["statusCode"] == 500
    assert_conforms("POST", "/predict", response)


DOCUMENTED_CODES = set(
    SPEC["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
)


def test_every_documented_error_code_is_produced_by_a_test():
    exercised = {code for _make, _status, code in ERROR_CASES.values()}
    exercised |= {"model_unavailable", "internal_error"}  # the test just above
    # API Gateway's codes: its gateway responses (tests/infra, tests/local exercise them).
    gateway = {e.code for e in gateway_errors(routes="POST /predict", iam_auth=False)}
    assert exercised | gateway == DOCUMENTED_CODES


def test_image_content_codes_are_documented_error_codes():
    image_codes = set(SPEC["components"]["schemas"]["ImageErrorCode"]["enum"])
    assert image_codes <= DOCUMENTED_CODES
    exercised = {code for _make, _status, code in ERROR_CASES.values()}
    assert image_codes <= exercised


def test_top_k_maximum_is_the_served_models_number_of_classes(shared_runtime):
    classes = len(shared_runtime.model.labels)
    query = SPEC["paths"]["/predict"]["post"]["parameters"][0]
    assert query["name"] == "top_k"
    assert query["schema"]["maximum"] == classes
    assert SPEC["components"]["schemas"]["TopK"]["maximum"] == classes


def test_base64_image_pattern_accepts_what_the_handler_decodes():
    validator = _validator(SPEC["components"]["schemas"]["Base64Image"])
    for data in (PNG, JPEG, b"x", b"xy", b"xyz"):
        assert validator.is_valid(b64(data))
        assert validator.is_valid("data:image/png;base64," + b64(data))
    for bad in ("", "a", "abc", "ab=c", "YQ==YQ==", "aGk= ", "aGk*", "data:;base64,aGk="):
        assert not validator.is_valid(bad), bad


def test_request_schemas_match_what_the_handler_accepts():
    request = SPEC["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    validator = _validator(request["schema"])
    assert validator.is_valid({"image": "aGk=", "top_k": 3})
    assert validator.is_valid({"images": ["aGk="] * 8})
    assert not validator.is_valid({"images": ["aGk="] * 9})
    assert not validator.is_valid({"img": "aGk="})
    assert not validator.is_valid({"image": "aGk=", "images": ["aGk="]})
    assert not validator.is_valid({"image": "aGk=", "top_k": 0})
    batch = SPEC["components"]["schemas"]["BatchRequest"]["properties"]["images"]
    assert batch["maxItems"] == api.MAX_BATCH
