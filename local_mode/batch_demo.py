"""`make batch-demo`: a batch prediction run on this machine, with the real batch worker.

Step Functions cannot run here (no local tool runs a batched Distributed Map), so this plays the
map's part as AWS documents it (local_mode/distributed_map.py): list the prefix, cut batches,
invoke lambda_src/batch.py's handler per batch against a local S3 server, write the
ResultWriter's files, then summarize with the same code as `python -m classifier_client batch`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from classifier_client.batch import format_report, new_run_id, summarize

from .apispec import template_path
from .console import stdout_to_file
from .demo import DEFAULT_MODEL_DIR, Console, _rel, describe_weights, ensure_model, run_cli
from .distributed_map import (
    BatchSpec,
    ChildRun,
    batches,
    list_items,
    load_batch_spec,
    local_arns,
    now,
    resolve_batch_input,
    write_results,
)
from .endpoint import read_manifest
from .gateway import FunctionRuntime
from .s3 import apply_env, local_s3, restore_env

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FUNCTION_LOG = REPO_ROOT / "build" / "local" / "batch-function.log"
INPUT_BUCKET = "local-batch-input"
OUTPUT_BUCKET = "local-batch-output"
PREFIX = "photos/"
# What a real bucket of uploads also holds: each becomes an error line, never a failed batch.
BAD_OBJECTS = {
    "zz-truncated.jpg": None,  # filled in with a cut-off photograph
    "zz-empty.jpg": b"",
    "zz-notes.txt": b"not an image at all",
}
# The state machine retries BatchRetryableError this many times (stacks/batch.py).
WORKER_RETRIES = 2


def upload_inputs(s3: Any, copies: int) -> int:
    from model_export.photos import photographs

    photos = photographs()
    count = 0
    for copy in range(copies):
        for photo in photos:
            s3.put_object(
                Bucket=INPUT_BUCKET, Key=f"{PREFIX}{copy:02d}-{photo.name}", Body=photo.read_bytes()
            )
            count += 1
    for name, data in BAD_OBJECTS.items():
        body = data if data is not None else photos[-1].read_bytes()[:2000]
        s3.put_object(Bucket=INPUT_BUCKET, Key=f"{PREFIX}{name}", Body=body)
        count += 1
    return count


def function_runtime(
    spec: BatchSpec, s3_env: dict[str, str], model: dict[str, str], cache_dir: Path
) -> FunctionRuntime:
    name = "ResnetServingDev-BatchFunction"
    return FunctionRuntime(
        environment={
            **spec.environment,
            **model,
            "MODEL_CACHE_DIR": str(cache_dir),
            **s3_env,
            "AWS_LAMBDA_FUNCTION_NAME": name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            # No X-Ray daemon here.
            "POWERTOOLS_TRACE_DISABLED": "true",
        },
        function_name=name,
        memory_mb=spec.memory_mb,
        timeout_s=spec.timeout_s,
        handler="batch.handler",
    )


def run(args: argparse.Namespace, say: Console) -> int:
    import model_export

    say("Batch predictions on this machine: one Distributed Map run, with the real batch worker")
    say()
    say("NOTE: AWS Step Functions does not run here (no local tool runs a batched Distributed")
    say("Map). This script plays the map's part as AWS documents it: it lists the prefix like")
    say("the S3 ItemReader, cuts batches like the ItemBatcher, writes the ResultWriter's files,")
    say("and invokes lambda_src/batch.py once per batch, one after another in this process")
    say("(AWS runs up to MaxConcurrency batches at once, each in its own environment).")

    spec = load_batch_spec(args.template)
    items_per_batch = args.items_per_batch or spec.max_items_per_batch

    say.heading("1/5", "The model artifact")
    manifest = ensure_model(args.model_dir, args.weights, args.fresh, say)
    describe_weights(manifest, say)

    say.heading("2/5", "Local S3 server (moto, 127.0.0.1 only) with the model and the inputs")
    cache_dir = Path(tempfile.mkdtemp(prefix="local-batch-cache-"))
    runtime: FunctionRuntime | None = None
    failed = 0
    try:
        with stdout_to_file(args.function_log) as terminal, local_s3() as s3:
            say.stream = terminal
            client = s3.client()
            previous = apply_env(s3.client_env())  # publish() uses boto3's default chain
            try:
                bucket, key = model_export.publish(
                    args.model_dir, f"s3://{s3.bucket}/models", log=lambda _m: None
                )
            finally:
                restore_env(previous)
            for name in (INPUT_BUCKET, OUTPUT_BUCKET):
                client.create_bucket(Bucket=name)
            uploaded = upload_inputs(client, args.copies)
            say(f"  S3 API (moto server)  {s3.endpoint_url}")
            say(f"  model                 s3://{bucket}/{key}")
            say(f"  inputs                s3://{INPUT_BUCKET}/{PREFIX}: {uploaded} objects")
            say(
                f"                        ({len(BAD_OBJECTS)} of them truncated, empty or no image)"
            )

            say.heading("3/5", "The map: list the prefix, cut batches (settings from the stack)")
            run_id = new_run_id()
            items = list_items(client, INPUT_BUCKET, PREFIX)
            groups = list(
                batches(items, max_items=items_per_batch, max_bytes=spec.max_input_bytes_per_batch)
            )
            batch_input = resolve_batch_input(
                spec.batch_input,
                {
                    "<Ref:BatchInputBucket>": INPUT_BUCKET,
                    "<Ref:BatchOutputBucket>": OUTPUT_BUCKET,
                    "$$.Execution.Name": run_id,
                },
            )
            say(f"  read from {_rel(Path(spec.source))}")
            say(f"  run id (the execution name)  {run_id}")
            say(f"  ItemReader s3:listObjectsV2  {len(items)} items (Key, Size, Etag, ...)")
            note = (
                ""
                if items_per_batch == spec.max_items_per_batch
                else f"; the stack uses {spec.max_items_per_batch}, --items-per-batch changes it"
            )
            say(f"  ItemBatcher  {len(groups)} batches of <= {items_per_batch} items{note}")
            say(f"  BatchInput   {batch_input}")

            say.heading(
                "4/5", f"Each batch through batch.handler ({spec.memory_mb} MB, as deployed)"
            )
            runtime = function_runtime(
                spec,
                s3.client_env(),
                {
                    "MODEL_BUCKET": bucket,
                    "MODEL_KEY": key,
                    "MODEL_SHA256": str(read_manifest(args.model_dir)["sha256"]),
                },
                cache_dir,
            )
            machine, execution, map_run = local_arns(run_id)
            children: list[ChildRun] = []
            started_all = time.perf_counter()
            for number, group in enumerate(groups, start=1):
                child = run_child(runtime, number, {"Items": group, "BatchInput": batch_input})
                children.append(child)
                if number == 1 and runtime.init_ms is not None:
                    say(
                        f"  INIT (first batch only): model download, sha256, ONNX Runtime session "
                        f"{runtime.init_ms:.0f} ms"
                    )
                if child.output is not None:
                    out = child.output
                    codes = ", ".join(f"{c} {n}" for c, n in out["error_codes"].items())
                    say(
                        f"  batch {number}/{len(groups)}: {out['images']} images, "
                        f"{out['predicted']} predicted, {out['errors']} errors"
                        f"{f' ({codes})' if codes else ''}, {out['seconds']:.2f} s"
                    )
                    say(f"      -> s3://{out['output']['bucket']}/{out['output']['key']}")
                else:
                    say(f"  batch {number}/{len(groups)}: FAILED after retries: {child.error}")
            work_s = max(1e-9, sum(c.output["seconds"] for c in children if c.output))
            wall_s = time.perf_counter() - started_all
            say(
                f"  {len(items)} images: {len(items) / work_s:.1f} images/s in the worker, "
                f"{wall_s:.1f} s wall time with INIT (this shared machine; `make bench` measures)"
            )
            map_output = write_results(
                client,
                bucket=OUTPUT_BUCKET,
                prefix=spec.results_prefix,
                map_run_arn=map_run,
                state_machine_arn=machine,
                children=children,
            )
            failed = sum(1 for c in children if c.error is not None)

            say.heading("5/5", "Results, summarized as `python -m classifier_client batch` does")
            summary = summarize(client, OUTPUT_BUCKET, run_id)
            report = {
                "run_id": run_id,
                "status": "SUCCEEDED" if not failed else "FAILED",
                "execution_arn": execution,
                "predictions": f"s3://{OUTPUT_BUCKET}/results/{run_id}/",
                "map_results": {
                    "manifest": f"s3://{OUTPUT_BUCKET}/{map_output['ResultWriterDetails']['Key']}",
                    "failed_files": [],
                    "pending_files": [],
                },
                "batches": {
                    "total": len(children),
                    "succeeded": len(children) - failed,
                    "failed": failed,
                },
                "summary": {
                    "images": summary.images,
                    "predicted": summary.predicted,
                    "errors": dict(summary.errors.most_common()),
                    "labels": dict(summary.labels.most_common()),
                    "result_files": summary.files,
                    "duplicate_keys": summary.duplicate_keys,
                },
                "error": "States.ExceedToleratedFailureThreshold" if failed else None,
                "cause": f"{failed} batches failed" if failed else None,
            }
            for text in format_report(report, top=5).splitlines():
                say(f"  {text}")
    finally:
        if runtime is not None:
            runtime.close()
        shutil.rmtree(cache_dir, ignore_errors=True)

    say.stream = sys.stdout
    say()
    say("Done: the S3 server was stopped; nothing is left running.")
    say(f"The worker's logs and EMF metrics (CloudWatch's stand-in): {_rel(args.function_log)}")
    say("On AWS: `make deploy`, then `make batch URI=s3://<input bucket>/<prefix>/`; see")
    say("docs/batch.md.")
    return 1 if failed else 0


def run_child(runtime: FunctionRuntime, number: int, event: dict[str, Any]) -> ChildRun:
    """One EXPRESS child: invoke, retrying the worker's retryable error like the state machine."""
    started = now()
    error = None
    for attempt in range(1 + WORKER_RETRIES):
        try:
            output = runtime.invoke(event, f"local-batch-{number}-{attempt}")
            return ChildRun(f"batch-{number}", event, output, None, started, now())
        except Exception as exc:  # the function failed: Step Functions records its error type
            error = f"{type(exc).__name__}: {exc}"
            if type(exc).__name__ != "BatchRetryableError":
                break
            time.sleep(1 + attempt)
    return ChildRun(f"batch-{number}", event, None, error, started, now())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m local_mode.batch_demo", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="reuse or export here")
    p.add_argument("--weights", default="auto", help="when exporting: auto, imagenet, random")
    p.add_argument("--fresh", action="store_true", help="export again even if the model is there")
    p.add_argument(
        "--template",
        type=Path,
        default=None,
        help=f"synthesized stack to mirror (default {_rel(template_path())})",
    )
    p.add_argument("--copies", type=int, default=2, help="copies of each photograph (default 2)")
    p.add_argument(
        "--items-per-batch",
        type=int,
        default=8,
        help="ItemBatcher MaxItemsPerBatch (default 8 so the demo shows several batches; "
        "0 = the stack's value)",
    )
    p.add_argument("--function-log", type=Path, default=DEFAULT_FUNCTION_LOG)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.copies < 1 or args.items_per_batch < 0:
        print("error: --copies must be >= 1 and --items-per-batch >= 0", file=sys.stderr)
        return 2
    say = Console(sys.stdout)
    return run_cli(
        lambda: run(args, say),
        say,
        interrupted="Interrupted: the S3 server was stopped.",
        interrupted_code=130,
    )


if __name__ == "__main__":
    sys.exit(main())
