"""The whole local endpoint: S3 server + published model + the handler behind the gateway.

    with local_endpoint(Path("build/model")) as ep:
        Client(ep.endpoint, ep.api_key).classify("cat.jpg")

The model reaches the local bucket through model_export.publish, exactly as a deploy publishes
it (content-addressed key, verified after upload). The function gets the stack's environment
from the synthesized template, with only the model location, the S3 endpoint and the cache
directory replaced by local values.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from .apispec import ApiSpec, TemplateError, load_spec
from .gateway import (
    LAMBDA_SRC,
    AccessRecord,
    FunctionRuntime,
    LocalGateway,
    RunningGateway,
    serve_gateway,
)
from .s3 import LocalS3, apply_env, local_s3, restore_env

Log = Callable[[str], None]


@dataclass(frozen=True)
class LocalEndpoint:
    endpoint: str  # like the stack's EndpointUrl output: http://127.0.0.1:<port>/<stage>/
    api_key: str
    spec: ApiSpec
    s3: LocalS3
    model_bucket: str
    model_key: str
    model_sha256: str
    runtime: FunctionRuntime
    running: RunningGateway


def function_environment(
    spec: ApiSpec, s3: LocalS3, *, bucket: str, key: str, sha256: str, cache_dir: Path
) -> dict[str, str]:
    """The stack's variables, the local overrides, and what the Lambda runtime itself sets."""
    function_name = f"{spec.stack}-{spec.function_logical_id}"
    return {
        **spec.environment,
        "MODEL_BUCKET": bucket,
        "MODEL_KEY": key,
        "MODEL_SHA256": sha256,
        "MODEL_CACHE_DIR": str(cache_dir),
        **s3.client_env(),
        # Reserved variables the Lambda runtime sets; the handler sizes its threads from memory.
        "AWS_LAMBDA_FUNCTION_NAME": function_name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function_name}",
        "LAMBDA_TASK_ROOT": str(LAMBDA_SRC),
        # No X-Ray daemon here; Powertools would otherwise try to emit segments.
        "POWERTOOLS_TRACE_DISABLED": "true",
    }


def image_handler(dockerfile: Path = LAMBDA_SRC / "Dockerfile") -> str:
    """The handler the image runs ("module.function"), from the Dockerfile's exec-form CMD."""
    for line in reversed(dockerfile.read_text().splitlines()):
        if line.strip().upper().startswith("CMD"):
            command = json.loads(line.strip()[3:].strip())
            if isinstance(command, list) and len(command) == 1 and "." in command[0]:
                return str(command[0])
    raise TemplateError(f'{dockerfile} has no CMD ["module.function"] to run')


def read_manifest(model_dir: Path) -> dict[str, object]:
    return json.loads((model_dir / "manifest.json").read_text())


@contextmanager
def local_endpoint(
    model_dir: Path,
    *,
    template: Path | None = None,
    api_key: str | None = None,
    port: int = 0,
    throttle: bool = True,
    on_access: Callable[[AccessRecord], None] | None = None,
    on_function_error: Callable[[str, BaseException], None] | None = None,
    log: Log | None = None,
) -> Iterator[LocalEndpoint]:
    """Start everything on 127.0.0.1; stop everything (servers, threads, temp files) on exit."""
    import model_export

    spec = load_spec(template)
    quiet: Log = log or (lambda _msg: None)
    with ExitStack() as stack:
        s3 = stack.enter_context(local_s3())
        # model_export.publish uses boto3's default chain, as in a deploy; point it here.
        previous = apply_env(s3.client_env())
        stack.callback(restore_env, previous)
        bucket, key = model_export.publish(model_dir, f"s3://{s3.bucket}/models", log=quiet)
        sha256 = str(read_manifest(model_dir)["sha256"])
        cache_dir = Path(tempfile.mkdtemp(prefix="local-model-cache-"))
        stack.callback(shutil.rmtree, cache_dir, True)
        runtime = FunctionRuntime(
            environment=function_environment(
                spec, s3, bucket=bucket, key=key, sha256=sha256, cache_dir=cache_dir
            ),
            function_name=f"{spec.stack}-{spec.function_logical_id}",
            memory_mb=spec.memory_mb,
            timeout_s=spec.timeout_s,
            handler=image_handler(),
        )
        stack.callback(runtime.close)
        key_value = api_key or secrets.token_urlsafe(30)
        gateway = LocalGateway(
            spec,
            runtime,
            key_value,
            throttle=throttle,
            on_access=on_access,
            on_function_error=on_function_error,
        )
        running = stack.enter_context(serve_gateway(gateway, port))
        yield LocalEndpoint(
            endpoint=running.endpoint,
            api_key=key_value,
            spec=spec,
            s3=s3,
            model_bucket=bucket,
            model_key=key,
            model_sha256=sha256,
            runtime=runtime,
            running=running,
        )
