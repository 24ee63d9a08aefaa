"""`make serve`: the local endpoint, kept up for curl and the client until Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from .apispec import load_spec
from .console import stdout_to_file
from .demo import (
    Console,
    add_endpoint_options,
    describe_endpoint,
    describe_weights,
    ensure_model,
    run_cli,
)
from .endpoint import local_endpoint, stage_concurrency
from .environments import Concurrency, ConcurrencyError
from .gateway import AccessRecord, render_access_log

DEFAULT_PORT = 3000  # what `sam local start-api` uses; pass --port 0 for any free port
REPO_ROOT = Path(__file__).resolve().parents[1]
# Shaped like `cdk deploy --outputs-file`, so `make smoke STAGE=local` and the client's
# --outputs-file work against the local endpoint as against a deployed stage.
DEFAULT_OUTPUTS_FILE = REPO_ROOT / "cdk-outputs-local.json"
LOCAL_STACK = "ResnetServingLocal"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m local_mode.serve", description=__doc__)
    add_endpoint_options(p)
    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"gateway port on 127.0.0.1 (default {DEFAULT_PORT}; 0 = any free port)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("LOCAL_API_KEY"),
        help="API key to require (default: $LOCAL_API_KEY, else a random one)",
    )
    p.add_argument(
        "--function-log",
        type=Path,
        default=None,
        help="write the function's logs to this file instead of stdout",
    )
    p.add_argument(
        "--short-access-log",
        action="store_true",
        help="one short line per request on stderr instead of the stage's JSON access log",
    )
    p.add_argument(
        "--outputs-file",
        type=Path,
        default=DEFAULT_OUTPUTS_FILE,
        help=f"when ready, write {{{LOCAL_STACK}: {{EndpointUrl, ApiKey, ModelKey}}}} here like "
        "`cdk deploy --outputs-file` (default cdk-outputs-local.json in the repository; "
        "removed on exit)",
    )
    p.add_argument(
        "--concurrency",
        type=_positive,
        default=None,
        help="execution environments that may run at once (default: the stage's reserved "
        "concurrency; a stage without one gets 10, a new account's quota)",
    )
    p.add_argument(
        "--provisioned",
        type=_not_negative,
        default=None,
        help="environments initialized at start (default: the stage's provisioned concurrency)",
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run the handler in this process instead (one environment, no concurrency model)",
    )
    p.add_argument(
        "--ready-file",
        type=Path,
        default=None,
        help="when ready, write {endpoint, api_key, s3_endpoint} as JSON here (for scripts)",
    )
    return p


def _positive(text: str) -> int:
    value = _not_negative(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _not_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def concurrency_for(args: argparse.Namespace) -> Concurrency | None:
    """The stage's concurrency with --concurrency / --provisioned applied; None in-process."""
    if args.in_process:
        return None
    stage = stage_concurrency(args.template, load_spec(args.template))
    limit = args.concurrency if args.concurrency is not None else stage.limit
    provisioned = args.provisioned if args.provisioned is not None else stage.provisioned
    if args.concurrency is None and args.provisioned is None:
        return stage
    flags = " ".join(
        f"--{name} {value}"
        for name, value in (("concurrency", args.concurrency), ("provisioned", args.provisioned))
        if value is not None
    )
    return Concurrency(
        limit=limit, provisioned=provisioned, source=f"{flags}; stage: {stage.source}"
    )


@contextlib.contextmanager
def _logs(path: Path | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
    else:
        with stdout_to_file(path) as terminal:
            yield terminal


def _write_atomically(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)  # readers never see a half-written file


def run(args: argparse.Namespace, say: Console) -> int:
    log_format = None if args.short_access_log else load_spec(args.template).access_log_format
    concurrency = concurrency_for(args)
    manifest = ensure_model(args.model_dir, args.weights, False, say)
    describe_weights(manifest, say)

    def access(record: AccessRecord) -> None:
        # The stage's own access log format, filled in, as CloudWatch would receive it.
        if log_format:
            line = render_access_log(log_format, record.context)
        else:
            line = f"{record.method} {record.path} -> {record.status}"
        print(line, file=sys.stderr, flush=True)

    with (
        _logs(args.function_log) as terminal,
        local_endpoint(
            args.model_dir,
            template=args.template,
            api_key=args.api_key,
            port=args.port,
            throttle=not args.no_throttle,
            on_access=access,
            in_process=args.in_process,
            concurrency=concurrency,
        ) as ep,
    ):
        say.stream = terminal
        say()
        describe_endpoint(ep, say, args.function_log or Path("/dev/stdout"))
        say()
        if ep.concurrency is not None:
            say(f"  Execution environments   {ep.concurrency.describe()}")
            say()
        say(f"Endpoint  {ep.endpoint}")
        say(f"API key   {ep.api_key}")
        say()
        say("Try it (from another terminal):")
        say(f"  curl -s -H 'x-api-key: {ep.api_key}' {ep.endpoint}health")
        say(f"  curl -s -H 'x-api-key: {ep.api_key}' -H 'Content-Type: image/jpeg' \\")
        say(f"       --data-binary @photo.jpg '{ep.endpoint}predict?top_k=3'")
        say(f"  CLASSIFIER_ENDPOINT={ep.endpoint} CLASSIFIER_API_KEY={ep.api_key} \\")
        say("       .venv/bin/python -m classifier_client photo.jpg some/directory/")
        say()
        say(
            "A request to an environment not yet initialized is a cold start (model download + "
            "ONNX session). Ctrl-C stops."
        )
        outputs = {
            LOCAL_STACK: {
                "EndpointUrl": ep.endpoint,
                "ApiKey": ep.api_key,  # a throwaway local key; a stack outputs only its id
                "ModelKey": ep.model_key,
            }
        }
        try:
            _write_atomically(args.outputs_file, outputs)
            say(f"Outputs   {args.outputs_file} (for `make smoke STAGE=local`)")
        except OSError as exc:
            say(f"warning: could not write {args.outputs_file}: {exc.strerror}")
        try:
            if args.ready_file is not None:
                ready = {
                    "endpoint": ep.endpoint,
                    "api_key": ep.api_key,
                    "s3_endpoint": ep.s3.endpoint_url,
                }
                _write_atomically(args.ready_file, ready)
            threading.Event().wait()  # until SIGINT/SIGTERM raises KeyboardInterrupt
        finally:
            # A stopped endpoint leaves no outputs file pointing at it.
            args.outputs_file.unlink(missing_ok=True)
    return 0  # pragma: no cover - only reached through the exception below


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    say = Console(sys.stdout)
    try:
        return run_cli(
            lambda: run(args, say),
            say,
            interrupted="Stopped: gateway, S3 server and function shut down.",
            interrupted_code=0,
        )
    except ConcurrencyError as exc:  # conflicting flags: one line, no traceback
        say.stream = sys.stdout
        say(f"error: {exc}")
        return 2
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        say.stream = sys.stdout
        say(f"error: port {args.port} on 127.0.0.1 is in use; pass --port 0 or another port")
        return 1


if __name__ == "__main__":
    sys.exit(main())
