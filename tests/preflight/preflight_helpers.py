"""Seeding the moto account and the fake docker that preflight tests run against."""

from __future__ import annotations

import hashlib
import io
import json
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.awsrequest import AWSResponse

from preflight.aws_checks import BOOTSTRAP_VERSION_PARAMETER

APIGATEWAY_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "apigateway.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}
LAMBDA_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}
# What `aws lambda get-account-settings` shows in an established account.
STANDARD_ACCOUNT = {"ConcurrentExecutions": 1000, "UnreservedConcurrentExecutions": 1000}


def answer(status: int, parsed: dict[str, Any]) -> Any:
    """A ``before-call`` handler that answers an operation without sending it."""

    def handler(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        return AWSResponse("https://stub.invalid/", status, {}, None), parsed

    return handler


@dataclass
class FakeAccount:
    endpoint: str
    region: str

    def client(self, service: str) -> Any:
        return boto3.client(service, region_name=self.region, endpoint_url=self.endpoint)

    def session_factory(
        self,
        *,
        account_limit: dict[str, int] | None = None,
        identity_error: dict[str, str] | None = None,
    ) -> Any:
        """What preflight calls instead of boto3.Session(): credentials from the environment."""

        def factory() -> boto3.Session:
            session = boto3.Session(region_name=self.region)
            limit = STANDARD_ACCOUNT if account_limit is None else account_limit
            session.events.register(
                "before-call.lambda.GetAccountSettings",
                answer(200, {"AccountLimit": limit, "AccountUsage": {"FunctionCount": 0}}),
            )
            if identity_error is not None:
                session.events.register(
                    "before-call.sts.GetCallerIdentity",
                    answer(403, {"Error": identity_error}),
                )
            return session

        return factory

    def bootstrap(self, version: str = "30") -> None:
        self.client("ssm").put_parameter(
            Name=BOOTSTRAP_VERSION_PARAMETER, Value=version, Type="String"
        )

    def role(self, name: str, trust: dict[str, Any]) -> str:
        created = self.client("iam").create_role(
            RoleName=name, AssumeRolePolicyDocument=json.dumps(trust)
        )
        return str(created["Role"]["Arn"])

    def api_logging_role(self, role_arn: str) -> None:
        self.client("apigateway").update_account(
            patchOperations=[{"op": "replace", "path": "/cloudwatchRoleArn", "value": role_arn}]
        )

    def ready(self) -> None:
        """What `make bootstrap` leaves behind: CDKToolkit and the API Gateway logging role."""
        self.bootstrap()
        arn = self.role("ResnetServingAccount-ApiGatewayCloudWatchRole-ABC123", APIGATEWAY_TRUST)
        self.api_logging_role(arn)

    def function(self, name: str, *, memory_mb: int, reserved: int | None = None) -> None:
        role = self.role(f"{name}-role", LAMBDA_TRUST)
        code = io.BytesIO()
        with zipfile.ZipFile(code, "w") as archive:
            archive.writestr("index.py", "def handler(event, context):\n    return 1\n")
        lambda_ = self.client("lambda")
        lambda_.create_function(
            FunctionName=name,
            Runtime="python3.12",
            Role=role,
            Handler="index.handler",
            Code={"ZipFile": code.getvalue()},
            MemorySize=memory_mb,
        )
        if reserved is not None:
            lambda_.put_function_concurrency(
                FunctionName=name, ReservedConcurrentExecutions=reserved
            )

    def deployed_stack(self, name: str, outputs: dict[str, str]) -> None:
        """A stack with the given outputs, as a previous deploy would have left it."""
        template = {
            "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
            "Outputs": {key: {"Value": value} for key, value in outputs.items()},
        }
        self.client("cloudformation").create_stack(
            StackName=name, TemplateBody=json.dumps(template)
        )


FAKE_DOCKER = """#!/bin/sh
here=$(dirname "$0")
case "$1" in
  info)
    if [ -f "$here/down" ]; then
      echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock." \\
           "Is the docker daemon running?" >&2
      exit 1
    fi
    cat "$here/info.json" ;;
  buildx)
    if [ "$2" = inspect ] && [ -f "$here/buildx.txt" ]; then cat "$here/buildx.txt"; exit 0; fi
    echo "docker: unknown command: docker buildx" >&2
    exit 1 ;;
  *)
    echo "fake docker: unexpected command: $*" >&2
    exit 1 ;;
esac
"""


@dataclass
class FakeDocker:
    bin_dir: Path

    def engine(
        self, *, containerd_store: bool = True, architecture: str = "x86_64", server: str = "29.0.1"
    ) -> None:
        """What `docker info --format '{{json .}}'` prints for a running engine."""
        info: dict[str, Any] = {
            "ServerVersion": server,
            "Architecture": architecture,
            "Driver": "overlayfs" if containerd_store else "overlay2",
            "DriverStatus": (
                [["driver-type", "io.containerd.snapshotter.v1"]]
                if containerd_store
                else [["Backing Filesystem", "extfs"], ["Supports d_type", "true"]]
            ),
        }
        (self.bin_dir / "info.json").write_text(json.dumps(info), encoding="utf-8")
        (self.bin_dir / "down").unlink(missing_ok=True)

    def builder(self, *, driver: str = "docker", platforms: str = "linux/amd64, linux/386") -> None:
        """What `docker buildx inspect` prints for the selected builder."""
        (self.bin_dir / "buildx.txt").write_text(
            f"Name:          default\nDriver:        {driver}\n\nNodes:\nName:      default\n"
            f"Endpoint:  default\nStatus:    running\nPlatforms: {platforms}\n",
            encoding="utf-8",
        )

    def no_buildx(self) -> None:
        (self.bin_dir / "buildx.txt").unlink(missing_ok=True)

    def daemon_down(self) -> None:
        (self.bin_dir / "down").write_text("", encoding="utf-8")


def write_fake_docker(bin_dir: Path) -> FakeDocker:
    bin_dir.mkdir(parents=True)
    script = bin_dir / "docker"
    script.write_text(FAKE_DOCKER, encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    fake = FakeDocker(bin_dir=bin_dir)
    fake.engine()
    fake.builder()
    return fake


def write_model(directory: Path, *, trained: bool = True) -> Path:
    """An exporter-style artifact: a few bytes as model.onnx, a manifest with their digest."""
    directory.mkdir(parents=True)
    payload = b"not an onnx graph, only bytes with a known digest\n" * 32
    (directory / "model.onnx").write_bytes(payload)
    manifest = {
        "format_version": 1,
        "file": "model.onnx",
        "sha256": hashlib.sha256(payload).hexdigest(),
        "size_bytes": len(payload),
        "verification": {"passed": True, "weights_trained": trained},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return directory
