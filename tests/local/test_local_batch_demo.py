"""`make batch-demo` end to end, and the Distributed Map stand-in it is built on."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from serve_helpers import REPO_ROOT, port_is_closed

from local_mode.distributed_map import (
    ChildRun,
    batches,
    list_items,
    load_batch_spec,
    resolve_batch_input,
    write_results,
)
from local_mode.s3 import local_s3
from stacks.config import STAGES


@pytest.mark.slow
def test_batch_demo_runs_end_to_end_says_what_it_emulates_and_stops_everything(
    fp32_model_dir: Path, stack_template: Path, tmp_path: Path
) -> None:
    function_log = tmp_path / "batch-function.log"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "local_mode.batch_demo",
            "--model-dir",
            str(fp32_model_dir),
            "--template",
            str(stack_template),
            "--function-log",
            str(function_log),
            "--copies",
            "1",
            "--items-per-batch",
            "4",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "Traceback" not in done.stderr
    assert "AWS Step Functions does not run here" in out
    for heading in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert heading in out
    # 9 photographs (or 8 without matplotlib) + 3 bad objects, 4 per batch.
    items = int(re.search(r"ItemReader s3:listObjectsV2\s+(\d+) items", out)[1])
    assert items in (11, 12)
    assert f"{-(-items // 4)} batches of <= 4 items" in out
    assert "the stack uses 100" in out
    assert re.search(r"images: \d+ in \d+ files, \d+ predicted, 3 errors", out)
    for code in ("corrupt_image", "empty_object", "not_an_image"):
        assert code in out
    assert re.search(r"run batch-\S+: SUCCEEDED", out)
    assert "results/map-runs/" in out
    # The worker's JSON logs and EMF metrics went to the log file, not the terminal.
    log = function_log.read_text()
    assert '"Batch done"' in log
    assert '"ImagesPerSecond"' in log
    assert '"Batch done"' not in out
    urls = set(re.findall(r"(http://127\.0\.0\.1:\d+)", out))
    assert urls
    assert all(port_is_closed(url + "/") for url in urls)


def test_batch_spec_is_read_from_the_committed_stack(stack_template: Path) -> None:
    spec = load_batch_spec(stack_template)
    assert spec.max_items_per_batch == 100
    assert spec.max_input_bytes_per_batch <= 256 * 1024
    assert spec.results_prefix == "results/map-runs"
    assert spec.batch_input == {
        "bucket": "<Ref:BatchInputBucket>",
        "output_bucket": "<Ref:BatchOutputBucket>",
        "output_prefix": "results/",
        "run_id.$": "$$.Execution.Name",
    }
    assert spec.memory_mb == STAGES["dev"].batch_memory_mb
    assert spec.environment["BATCH_SUB_BATCH"] == "8"
    assert "MODEL_BUCKET" not in spec.environment  # set locally


def test_item_batcher_bounds_count_and_bytes_and_keeps_order() -> None:
    items = [{"Key": f"k/{i:03d}", "Size": 100 + i} for i in range(25)]  # equal sizes
    by_count = list(batches(items, max_items=10, max_bytes=256 * 1024))
    assert [len(b) for b in by_count] == [10, 10, 5]
    assert [i for b in by_count for i in b] == items
    one = len(json.dumps(items[0], separators=(",", ":"))) + 1
    by_bytes = list(batches(items, max_items=100, max_bytes=2 + 3 * one))
    assert {len(b) for b in by_bytes[:-1]} == {3}
    assert [i for b in by_bytes for i in b] == items


def test_batch_input_refuses_a_path_it_cannot_resolve() -> None:
    template = {"bucket": "<Ref:In>", "run_id.$": "$$.Execution.Name", "output_prefix": "r/"}
    resolved = resolve_batch_input(template, {"<Ref:In>": "b", "$$.Execution.Name": "run"})
    assert resolved == {"bucket": "b", "run_id": "run", "output_prefix": "r/"}
    with pytest.raises(Exception, match="no local value"):
        resolve_batch_input(template, {"<Ref:In>": "b"})


def test_listing_and_result_writer_layout_on_the_s3_server() -> None:
    with local_s3(bucket="dm-test") as server:
        s3 = server.client()
        for key in ("p/b.jpg", "p/a.jpg", "q/c.jpg"):
            s3.put_object(Bucket="dm-test", Key=key, Body=b"xyz")
        items = list_items(s3, "dm-test", "p/")
        assert [i["Key"] for i in items] == ["p/a.jpg", "p/b.jpg"]
        assert set(items[0]) == {"Etag", "Key", "LastModified", "Size", "StorageClass"}
        assert items[0]["Size"] == 3
        assert isinstance(items[0]["LastModified"], int)

        t = datetime(2026, 1, 1, tzinfo=UTC)
        children = [
            ChildRun("b1", {"Items": items[:1]}, {"images": 1}, None, t, t),
            ChildRun("b2", {"Items": items[1:]}, None, "BatchRetryableError: s3", t, t),
        ]
        map_run = "arn:aws:states:us-east-1:000000000000:mapRun:M/ListedObjects:abc"
        output = write_results(
            s3,
            bucket="dm-test",
            prefix="results/map-runs",
            map_run_arn=map_run,
            state_machine_arn="arn:aws:states:us-east-1:000000000000:stateMachine:M",
            children=children,
        )
        assert output == {
            "MapRunArn": map_run,
            "ResultWriterDetails": {
                "Bucket": "dm-test",
                "Key": "results/map-runs/abc/manifest.json",
            },
        }
        manifest = json.loads(
            s3.get_object(Bucket="dm-test", Key="results/map-runs/abc/manifest.json")["Body"].read()
        )
        files = manifest["ResultFiles"]
        assert [f["Key"] for f in files["SUCCEEDED"]] == ["results/map-runs/abc/SUCCEEDED_0.json"]
        assert [f["Key"] for f in files["FAILED"]] == ["results/map-runs/abc/FAILED_0.json"]
        failed = json.loads(
            s3.get_object(Bucket="dm-test", Key=files["FAILED"][0]["Key"])["Body"].read()
        )
        assert failed[0]["Status"] == "FAILED"
        assert json.loads(failed[0]["Input"]) == {"Items": items[1:]}
