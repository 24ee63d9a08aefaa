"""Where the endpoint URL and API key come from: arguments, a `cdk deploy --outputs-file`, or env.

The outputs file holds the endpoint URL and the API key's *id*, never its value (CloudFormation
outputs are readable by anyone who can describe the stack). The value comes from
`aws apigateway get-api-key --api-key <id> --include-value`, from CLASSIFIER_API_KEY, or from
boto3 when asked explicitly (`fetch_api_key=True`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .client import ClassifierError

ENV_ENDPOINT = "CLASSIFIER_ENDPOINT"
ENV_API_KEY = "CLASSIFIER_API_KEY"

_EXECUTE_API = re.compile(r"^https://[^/]+\.execute-api\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?/")
# `make serve` (local_mode.serve) writes an outputs file too, with a plain-HTTP loopback URL.
_LOOPBACK = re.compile(r"^http://(127\.0\.0\.1|localhost)(:\d+)?/")


@dataclass(frozen=True)
class Target:
    endpoint: str
    api_key: str | None
    api_key_id: str | None = None
    source: str = ""


@dataclass(frozen=True)
class StackOutputs:
    stack: str
    endpoint: str
    api_key_id: str | None
    # Only local mode's outputs file carries a key's value (a throwaway local key); a stack's
    # outputs never do.
    api_key: str | None = None
    outputs: dict[str, str] | None = None


def read_outputs_file(path: str | Path, stack: str | None = None) -> StackOutputs:
    """Find the endpoint URL and API key id in a `cdk deploy --outputs-file` JSON."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ClassifierError(f"outputs file not found: {path}") from exc
    except (OSError, ValueError) as exc:
        raise ClassifierError(f"cannot read outputs file {path}: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ClassifierError(f"{path} is not a `cdk deploy --outputs-file` JSON")

    candidates = {name: outs for name, outs in data.items() if _endpoint_in(outs)}
    if stack is not None:
        if stack not in data:
            raise ClassifierError(f"stack {stack!r} not in {path} (has: {', '.join(data)})")
        chosen = stack
    elif len(candidates) == 1:
        chosen = next(iter(candidates))
    elif not candidates:
        raise ClassifierError(f"no API endpoint output found in {path}")
    else:
        raise ClassifierError(
            f"{path} has several stacks with an endpoint ({', '.join(candidates)}): pass --stack"
        )
    outs = data[chosen]
    endpoint = _endpoint_in(outs)
    if endpoint is None:
        raise ClassifierError(f"stack {chosen!r} in {path} has no API endpoint output")
    key_id = next(
        (str(v) for k, v in sorted(outs.items()) if re.search(r"api_?key_?id$", k, re.I)), None
    )
    key_value = next(
        (str(v) for k, v in sorted(outs.items()) if re.fullmatch(r"api_?key", k, re.I)), None
    )
    return StackOutputs(
        stack=chosen,
        endpoint=endpoint,
        api_key_id=key_id,
        api_key=key_value,
        outputs={k: str(v) for k, v in outs.items()},
    )


def _endpoint_in(outputs: Mapping[str, object]) -> str | None:
    """The stack's endpoint URL: an execute-api URL, else an https output named like an endpoint."""
    items = sorted((k, v) for k, v in outputs.items() if isinstance(v, str))
    for _, value in items:
        if _EXECUTE_API.match(value):
            return value
    for key, value in items:
        if (value.startswith("https://") or _LOOPBACK.match(value)) and re.search(
            r"(endpoint|url)", key, re.I
        ):
            return value
    return None


def fetch_api_key_value(api_key_id: str, endpoint: str) -> str:
    """The key's value through API Gateway's GetApiKey (needs apigateway:GET on the key)."""
    try:
        import boto3  # optional dependency, only needed here
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError as exc:
        raise ClassifierError("--fetch-api-key needs boto3: pip install boto3") from exc
    match = _EXECUTE_API.match(endpoint)
    region = match.group(1) if match else None
    try:
        apigw = boto3.client("apigateway", region_name=region)
        return str(apigw.get_api_key(apiKey=api_key_id, includeValue=True)["value"])
    except (BotoCoreError, ClientError) as exc:
        raise ClassifierError(
            f"could not read API key {api_key_id}: {exc} (check your AWS credentials with "
            "`aws sts get-caller-identity`, or pass the key with --api-key)"
        ) from exc


def resolve_target(
    *,
    endpoint: str | None = None,
    api_key: str | None = None,
    outputs_file: str | Path | None = None,
    stack: str | None = None,
    fetch_api_key: bool = False,
    env: Mapping[str, str] | None = None,
    require_api_key: bool = True,
) -> Target:
    """Arguments win, then the outputs file, then CLASSIFIER_ENDPOINT / CLASSIFIER_API_KEY."""
    env = os.environ if env is None else env
    key_id = None
    source = "arguments"
    if endpoint is None and outputs_file is not None:
        outs = read_outputs_file(outputs_file, stack)
        endpoint, key_id, source = outs.endpoint, outs.api_key_id, f"{outputs_file} ({outs.stack})"
        if api_key is None and outs.api_key:
            api_key = outs.api_key
    if endpoint is None and env.get(ENV_ENDPOINT):
        endpoint, source = env[ENV_ENDPOINT], ENV_ENDPOINT
    if not endpoint:
        raise ClassifierError(
            f"no endpoint: pass --endpoint URL, set {ENV_ENDPOINT}, "
            "or --outputs-file cdk-outputs-dev.json"
        )
    if api_key is None and fetch_api_key:
        if not key_id:
            raise ClassifierError("--fetch-api-key needs an outputs file with the API key id")
        api_key = fetch_api_key_value(key_id, endpoint)
    if api_key is None:
        api_key = env.get(ENV_API_KEY) or None
    if api_key is None and require_api_key:
        hint = (
            f"`aws apigateway get-api-key --api-key {key_id} --include-value "
            "--query value --output text`, or --fetch-api-key"
            if key_id
            else "the key printed by `make serve` for the local endpoint"
        )
        raise ClassifierError(
            f"no API key: pass --api-key or set {ENV_API_KEY} (get it with {hint})"
        )
    return Target(endpoint=endpoint, api_key=api_key, api_key_id=key_id, source=source)
