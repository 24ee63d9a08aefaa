"""Command line: `python -m classifier_client [classify] IMAGES... | health | batch S3_URI`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from . import batch as batch_runs
from .client import ApiError, ClassifierError, Client, RetryPolicy, iter_images
from .config import ENV_API_KEY, ENV_ENDPOINT, resolve_target

COMMANDS = ("classify", "health", "batch")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("endpoint (arguments win, then --outputs-file, then env)")
    g.add_argument("--endpoint", help=f"base URL ending with the stage, or ${ENV_ENDPOINT}")
    g.add_argument("--api-key", help=f"API key value, or ${ENV_API_KEY}")
    g.add_argument("--outputs-file", type=Path, help="JSON written by `cdk deploy --outputs-file`")
    g.add_argument("--stack", help="stack name in the outputs file (when it holds several)")
    g.add_argument(
        "--fetch-api-key",
        action="store_true",
        help="read the key value with boto3 from the key id in the outputs file",
    )
    n = common.add_argument_group("network")
    n.add_argument("--timeout", type=float, default=30.0, help="seconds per attempt (default 30)")
    n.add_argument(
        "--max-attempts", type=int, default=5, help="attempts on 429/5xx/timeouts (default 5)"
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress or retry notes")

    parser = argparse.ArgumentParser(
        prog="python -m classifier_client",
        description="Classify images with the ResNet18 endpoint (deployed or `make serve`).",
        epilog="`classify` is the default command: `python -m classifier_client cat.jpg photos/`.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("classify", parents=[common], help="classify image files or directories")
    c.add_argument("paths", nargs="+", type=Path, help="image files and/or directories")
    c.add_argument("--top-k", type=int, default=5, help="predictions per image (default 5)")
    c.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="images per request; above 1 sends JSON batches {'images': [...]} (max: the "
        "function's batch limit)",
    )
    sub.add_parser("health", parents=[common], help="show the model the endpoint serves")
    _add_batch_parser(sub)
    return parser


def _add_batch_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser(
        "batch",
        help="classify every image under an S3 prefix or in a manifest (Step Functions)",
        description="Start a batch run over s3://<input bucket>/<prefix>/ or a .jsonl/.csv "
        "manifest under <prefix>manifests/, follow its progress and summarize the results "
        "(docs/batch.md).",
    )
    b.add_argument("uri", nargs="?", help="s3://bucket/prefix/ or s3://bucket/manifests/x.jsonl")
    where = b.add_argument_group("which stack (from `make deploy`'s outputs file)")
    where.add_argument("--stage", help="reads cdk-outputs-<stage>.json in this directory")
    where.add_argument("--outputs-file", type=Path, help="a `cdk deploy --outputs-file` JSON")
    where.add_argument("--stack", help="stack name in the outputs file (when it holds several)")
    run = b.add_argument_group("the run")
    run.add_argument("--run-id", help="execution name (default batch-<UTC time>-<random>)")
    run.add_argument("--follow", metavar="RUN_ID", help="follow a run started earlier")
    run.add_argument(
        "--redrive", metavar="RUN_ID", help="redrive a failed run (unsuccessful batches only)"
    )
    run.add_argument("--no-wait", action="store_true", help="start and print the run id only")
    run.add_argument("--poll", type=float, default=5.0, help="seconds between progress polls")
    run.add_argument("--no-summary", action="store_true", help="skip reading the result files")
    run.add_argument("--top", type=int, default=10, help="labels shown in the summary")
    b.add_argument("--json", action="store_true", help="print the report as JSON")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    aws_clients: Callable[[str], batch_runs.AwsClients] | None = None,
) -> int:
    out = stdout or sys.stdout
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] not in (*COMMANDS, "-h", "--help"):
        args_list.insert(0, "classify")
    args = _parser().parse_args(args_list)
    try:
        if args.command == "batch":
            if args.poll <= 0 or args.top < 0:
                raise ClassifierError("--poll must be > 0 and --top >= 0")
            return batch_runs.run_command(
                args, out, clients=aws_clients or batch_runs.default_clients
            )
        return _run(args, out)
    except ClassifierError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, out: TextIO) -> int:
    if args.max_attempts < 1 or args.timeout <= 0:
        raise ClassifierError("--max-attempts must be >= 1 and --timeout > 0")
    target = resolve_target(
        endpoint=args.endpoint,
        api_key=args.api_key,
        outputs_file=args.outputs_file,
        stack=args.stack,
        fetch_api_key=args.fetch_api_key,
    )

    def note_retry(attempt: int, reason: str, delay: float) -> None:
        if not args.quiet:
            print(f"  retry: attempt {attempt} got {reason}; waiting {delay:.2f}s", file=sys.stderr)

    with Client(
        target.endpoint,
        target.api_key,
        timeout_s=args.timeout,
        retry=RetryPolicy(max_attempts=args.max_attempts),
        on_retry=note_retry,
    ) as client:
        if args.command == "health":
            health = client.health()
            print(json.dumps(health, indent=2) if args.json else _health_text(health), file=out)
            return 0
        return _classify(client, args, out)


def _classify(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    if args.top_k < 1:
        raise ClassifierError("--top-k must be >= 1")
    if args.batch_size < 1:
        raise ClassifierError("--batch-size must be >= 1")
    files = iter_images(args.paths)
    if not files:
        raise ClassifierError(
            "no images found (directories are searched for .jpg .jpeg .png .webp)"
        )
    show_progress = not args.quiet and any(p.is_dir() for p in args.paths)
    results: list[dict[str, Any]] = []
    for start in range(0, len(files), args.batch_size):
        chunk = files[start : start + args.batch_size]
        results.extend(_send(client, chunk, args.top_k))
        if show_progress:
            print(f"  classified {start + len(chunk)}/{len(files)}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2), file=out)
    else:
        print(format_table(results), file=out)
    failed = sum(1 for r in results if "error" in r)
    if failed:
        print(f"error: {failed} of {len(results)} images failed", file=sys.stderr)
    return 1 if failed else 0


def _send(client: Client, chunk: list[Path], top_k: int) -> list[dict[str, Any]]:
    """One request for the chunk; per-image errors are kept, auth and server failures abort."""
    try:
        if len(chunk) == 1:
            body = client.classify(chunk[0], top_k=top_k)
            entries = [body]
        else:
            body = client.classify_batch(chunk, top_k=top_k)
            entries = batch_entries(body, len(chunk))
    except ApiError as exc:
        if exc.status in (401, 403) or exc.status >= 500:
            raise
        return [
            {
                "file": str(p),
                "error": {"status": exc.status, "code": exc.code, "message": exc.message},
            }
            for p in chunk
        ]
    return [{"file": str(p), **entry} for p, entry in zip(chunk, entries, strict=True)]


def batch_entries(body: dict[str, Any], expected: int) -> list[dict[str, Any]]:
    """Per-image entries of a batch response ({"predictions": [[...], ...]}), in request order."""
    predictions = body.get("predictions")
    if not isinstance(predictions, list) or len(predictions) != expected:
        raise ClassifierError(f"batch response does not hold {expected} results")
    shared = {k: v for k, v in body.items() if k != "predictions"}
    return [{**shared, "predictions": p} for p in predictions]


def format_table(results: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for r in results:
        lines.append(r["file"])
        if "error" in r:
            err = r["error"]
            detail = err.get("message", err) if isinstance(err, dict) else err
            lines.append(f"    error: {detail}")
            continue
        for rank, p in enumerate(r.get("predictions", []), start=1):
            lines.append(f"    {rank}. {p['label']:<32.32} {100 * p['probability']:6.2f}%")
    return "\n".join(lines)


def _health_text(health: dict[str, Any]) -> str:
    return "\n".join(f"{k:>14}: {v}" for k, v in health.items())
