"""The whole local endpoint: S3 server + published model + the handler behind the gateway.

    with local_endpoint(Path("build/model")) as ep:
        Client(ep.endpoint, ep.api_key).classify("cat.jpg")

The model reaches the local bucket through model_export.publish, exactly as a deploy publishes
it (content-addressed key, verified after upload). The function gets the stack's environment
from the synthesized template, with only the model location, the S3 endpoint and the cache
directory replaced by local values. It runs in execution environments of its own (processes,
see environments.py) within the stage's concurrency, or with `in_process=True` in this process.
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

from .apispec import ApiSpec, TemplateError, load_spec, template_path
from .environments import (
    Concurrency,
    EnvironmentPool,
    PlatformEvent,
    concurrency_from_template,
    stdout_platform_log,
)
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
    runtime: FunctionRuntime | EnvironmentPool
    running: RunningGateway
    concurrency: Concurrency | None = None  # None when the function runs in this process

    @property
    def pool(self) -> EnvironmentPool:
        """The execution environments (raises in in-process mode, which has none)."""
        if not isinstance(self.runtime, EnvironmentPool):
            raise TypeError("this endpoint runs the function in-process (in_process=True)")
        return self.runtime


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


def stage_concurrency(template: Path | None, spec: ApiSpec) -> Concurrency:
    """The concurrency the stage's template gives the function (see environments.py)."""
    path = template or template_path(spec.stack)
    return concurrency_from_template(json.loads(path.read_text()), spec.function_logical_id)


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
    in_process: bool = False,
    concurrency: Concurrency | None = None,
    on_platform_event: Callable[[PlatformEvent], None] | None = stdout_platform_log,
    fault_injection: bool = False,
    s3: LocalS3 | None = None,
    function_s3_endpoint: str | None = None,
) -> Iterator[LocalEndpoint]:
    """Start everything on 127.0.0.1; stop everything (servers, processes, temp files) on exit.

    `concurrency` defaults to the stage's (stage_concurrency); `s3` reuses a running S3 server,
    and `function_s3_endpoint` points the function (not the publishing) elsewhere, e.g. at a
    fault-injecting proxy in front of it.
    """
    import model_export

    spec = load_spec(template)
    quiet: Log = log or (lambda _msg: None)
    with ExitStack() as stack:
        if s3 is None:
            s3 = stack.enter_context(local_s3())
        # model_export.publish uses boto3's default chain, as in a deploy; point it here.
        previous = apply_env(s3.client_env())
        stack.callback(restore_env, previous)
        bucket, key = model_export.publish(model_dir, f"s3://{s3.bucket}/models", log=quiet)
        sha256 = str(read_manifest(model_dir)["sha256"])
        cache_dir = Path(tempfile.mkdtemp(prefix="local-model-cache-"))
        stack.callback(shutil.rmtree, cache_dir, True)
        environment = function_environment(
            spec, s3, bucket=bucket, key=key, sha256=sha256, cache_dir=cache_dir
        )
        if function_s3_endpoint is not None:
            environment["AWS_ENDPOINT_URL_S3"] = function_s3_endpoint
        function_name = f"{spec.stack}-{spec.function_logical_id}"
        runtime: FunctionRuntime | EnvironmentPool
        if in_process:
            runtime = FunctionRuntime(
                environment=environment,
                function_name=function_name,
                memory_mb=spec.memory_mb,
                timeout_s=spec.timeout_s,
                handler=image_handler(),
            )
            concurrency = None
        else:
            concurrency = concurrency or stage_concurrency(template, spec)
            runtime = EnvironmentPool(
                environment=environment,
                function_name=function_name,
                memory_mb=spec.memory_mb,
                timeout_s=spec.timeout_s,
                concurrency=concurrency,
                tmp_root=cache_dir,
                handler=image_handler(),
                on_platform_event=on_platform_event,
                fault_injection=fault_injection,
            )
            runtime.start()
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
            concurrency=concurrency,
        )
