"""Helpers for the hook tests: constants, a Lambda context, streaming payloads, stubbed clients."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.response import StreamingBody
from botocore.stub import Stubber

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "rollout_hook" / "reference.jpg"
VERSION_ARN = "arn:aws:lambda:eu-west-1:123456789012:function:ResnetServingProd-PredictFunction:7"
MODEL_SHA256 = "ab" * 32
EVENT = {
    "DeploymentId": "d-EXAMPLE123",
    "LifecycleEventHookExecutionId": "hook-execution-id-1",
    "LifecycleEvent": "BeforeAllowTraffic",
}


@dataclass
class HookContext:
    """The part of Lambda's context object the hook reads."""

    remaining_ms: int = 120_000
    aws_request_id: str = "hook-request-1"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def streaming(payload: Any) -> StreamingBody:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return StreamingBody(io.BytesIO(data), len(data))


@dataclass
class Stubbed:
    lambda_client: Any
    codedeploy_client: Any
    lambda_stub: Stubber
    codedeploy_stub: Stubber
    sent_payloads: list[dict[str, Any]]

    def expect_report(self, status: str) -> None:
        """Queue exactly one PutLifecycleEventHookExecutionStatus with these parameters."""
        self.codedeploy_stub.add_response(
            "put_lifecycle_event_hook_execution_status",
            {"lifecycleEventHookExecutionId": EVENT["LifecycleEventHookExecutionId"]},
            {
                "deploymentId": EVENT["DeploymentId"],
                "lifecycleEventHookExecutionId": EVENT["LifecycleEventHookExecutionId"],
                "status": status,
            },
        )
