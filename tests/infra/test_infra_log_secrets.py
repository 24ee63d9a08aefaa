"""Logs a deployed stage writes never carry the API key value or request bodies (images).

tests/local/test_local_log_secrets.py drives requests through the same access log format and the
real function and greps what they log; these check what only the template decides.
"""

from __future__ import annotations

import json
import re
from typing import Any

from infra_helpers import only

# $context variables that hold the key value or request data (not the key's id).
SECRET_VARIABLES = {"identity.apiKey", "requestOverride", "input", "body"}


def test_access_log_format_records_the_key_id_never_the_key(raw: dict[str, Any]) -> None:
    _, stage = only(raw, "AWS::ApiGateway::Stage")
    log_format = stage["Properties"]["AccessLogSetting"]["Format"]
    variables = set(re.findall(r"\$context\.([A-Za-z0-9_.]+)", log_format))
    assert "identity.apiKeyId" in variables
    assert not {
        v for v in variables if v.split(".")[0] in SECRET_VARIABLES or v in SECRET_VARIABLES
    }
    assert "$input" not in log_format
    assert json.loads(log_format)  # a JSON line per request, nothing free-form


def test_execution_logs_never_trace_request_or_response_data(raw: dict[str, Any]) -> None:
    _, stage = only(raw, "AWS::ApiGateway::Stage")
    (settings,) = stage["Properties"]["MethodSettings"]
    assert settings["DataTraceEnabled"] is False
    assert settings["LoggingLevel"] in ("ERROR", "OFF")
