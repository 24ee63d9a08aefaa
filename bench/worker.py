"""A warm benchmark worker: one serving variant per process, driven by the benchmark driver.

``python -m bench.worker '<spec json>'`` loads one variant (the real handler, a naive handler or
PyTorch eager), then answers JSON commands read from stdin, one per line, on its original stdout.
Everything else the variant prints (Powertools logs and EMF metrics) goes to /dev/null, as
Lambda ships stdout off-box. One process per variant keeps thread pools and allocators from
interfering, lets the driver interleave variants in short blocks (so machine noise hits all of
them alike) and gives each variant its own peak RSS.
"""

from __future__ import annotations

import base64
import io
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.common import LAMBDA_SRC, batch_event, predict_event

MB_PER_VCPU = 1769


class FakeContext:
    aws_request_id = "00000000-0000-4000-8000-000000000000"
    function_name = "bench"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"
    log_group_name = "/aws/lambda/bench"
    log_stream_name = "bench"

    def __init__(self, memory_mb: int) -> None:
        self.memory_limit_in_mb = memory_mb

    def get_remaining_time_in_millis(self) -> int:
        return 20_000


def _top5_json(probs: Any, labels: list[str]) -> str:
    order = probs.argsort()[::-1][:5]
    return json.dumps(
        {
            "predictions": [
                {"label": labels[i], "index": int(i), "probability": float(probs[i])} for i in order
            ]
        }
    )


class Variant:
    """Common interface: handle(event) -> response dict, bare(batch) -> logits, logits(paths)."""

    threads: int
    init: dict[str, Any] = {}

    def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def bare(self, batch: Any) -> Any:
        raise NotImplementedError

    def preprocess_file(self, path: Path) -> Any:
        raise NotImplementedError


class HandlerVariant(Variant):
    """The real lambda_src handler, INIT from a pre-seeded /tmp cache (a warm environment)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import shutil
        import tempfile

        model_dir = Path(spec["model_dir"])
        manifest = json.loads((model_dir / "manifest.json").read_text())
        cache = Path(tempfile.mkdtemp(prefix="bench-cache-"))
        shutil.copyfile(model_dir / "model.onnx", cache / f"{manifest['sha256']}.onnx")
        self.memory_mb = spec["threads"] * MB_PER_VCPU
        os.environ.update(
            {
                "MODEL_BUCKET": "bench-models",
                "MODEL_KEY": f"models/{manifest['sha256']}/model.onnx",
                "MODEL_SHA256": manifest["sha256"],
                "MODEL_CACHE_DIR": str(cache),
                # Lambda's vCPU share follows memory; this is how the handler picks its threads.
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
                "POWERTOOLS_SERVICE_NAME": "bench",
                "POWERTOOLS_TRACE_DISABLED": "true",  # no X-Ray daemon here
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        )
        # The current lambda_src, or a reference revision's (bench/stages.py) to measure before.
        sys.path.insert(0, spec.get("lambda_src") or str(LAMBDA_SRC))
        import handler  # INIT: verifies the cached model, opens and warms the session

        self.module = handler
        if handler.RUNTIME.model is None:
            raise RuntimeError(f"handler INIT failed: {handler.RUNTIME.load_error}")
        self.threads = handler.RUNTIME.threads
        self.init = handler.RUNTIME.init_report()
        self.context = FakeContext(self.memory_mb)
        self.model = handler.RUNTIME.model
        shutil.rmtree(cache, ignore_errors=True)

    def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        return self.module.handler(event, self.context)

    def bare(self, batch: Any) -> Any:
        return self.model.infer(batch)

    def preprocess_file(self, path: Path) -> Any:
        import preprocess

        return preprocess.preprocess(path.read_bytes(), self.model.preprocessing)

    def stages(self, event: dict[str, Any], data: bytes, samples: dict[str, list[float]]) -> None:
        from bench.stages import StageProfiler

        if not hasattr(self, "profiler"):
            self.profiler = StageProfiler(self.module, self.context)
        self.profiler.run(event, data, samples)


class BatchVariant(Variant):
    """lambda_src/batch.py (the Distributed Map worker), INIT from a pre-seeded /tmp cache.

    Objects come from an S3 API server over HTTP (``s3_endpoint``: the driver's moto server, on
    the same CPUs) or, for the "memory" source, from bytes held in this process: the worker's
    compute alone, as when S3's side of a GET costs the function nothing.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        import shutil
        import tempfile

        model_dir = Path(spec["model_dir"])
        manifest = json.loads((model_dir / "manifest.json").read_text())
        cache = Path(tempfile.mkdtemp(prefix="bench-batch-cache-"))
        shutil.copyfile(model_dir / "model.onnx", cache / f"{manifest['sha256']}.onnx")
        self.memory_mb = spec["threads"] * MB_PER_VCPU
        os.environ.update(
            {
                "MODEL_BUCKET": "bench-models",
                "MODEL_KEY": f"models/{manifest['sha256']}/model.onnx",
                "MODEL_SHA256": manifest["sha256"],
                "MODEL_CACHE_DIR": str(cache),
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
                "POWERTOOLS_SERVICE_NAME": "bench-batch",
                "POWERTOOLS_TRACE_DISABLED": "true",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench",
                "AWS_ENDPOINT_URL_S3": spec["s3_endpoint"],
                **{k: str(v) for k, v in spec.get("env", {}).items()},
            }
        )
        sys.path.insert(0, str(LAMBDA_SRC))
        import batch  # INIT: verifies the cached model, opens and warms the session

        self.module = batch
        if batch.RUNTIME.worker is None:
            raise RuntimeError(f"batch INIT failed: {batch.RUNTIME.load_error}")
        self.threads = batch.RUNTIME.threads
        self.init = {"threads": self.threads, "fetch_threads": batch.FETCH_THREADS}
        self.context = FakeContext(self.memory_mb)
        self.s3 = batch.RUNTIME.worker.s3
        shutil.rmtree(cache, ignore_errors=True)

    def run_batch(self, cmd: dict[str, Any], run: int) -> dict[str, Any]:
        worker = self.module.RUNTIME.worker
        worker.s3 = self.s3 if cmd["source"] == "s3" else _MemoryS3(Path(cmd["image"]))
        event = {
            "Items": [{"Key": key, "Size": cmd["size"]} for key in cmd["keys"]],
            "BatchInput": {
                "bucket": cmd["bucket"],
                "output_bucket": cmd["output_bucket"],
                "output_prefix": "results/",
                "run_id": f"bench-{run}",
            },
        }
        t0 = time.perf_counter()
        summary = self.module.handler(event, self.context)
        ms = (time.perf_counter() - t0) * 1000.0
        if summary["predicted"] != len(cmd["keys"]):
            raise RuntimeError(f"batch predicted {summary['predicted']} of {len(cmd['keys'])}")
        return {"ms": ms, "images": summary["images"], "worker_s": summary["seconds"]}


class _MemoryS3:
    """GetObject from bytes in memory; PutObject discarded (the source="memory" runs)."""

    def __init__(self, image: Path) -> None:
        self.data = image.read_bytes()

    def get_object(self, **_kwargs: Any) -> dict[str, Any]:
        return {"Body": io.BytesIO(self.data), "ContentLength": len(self.data)}

    def put_object(self, **_kwargs: Any) -> dict[str, Any]:
        return {}


class NaiveVariant(Variant):
    """What a first version usually looks like: full-resolution decode, default session options."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import onnxruntime as ort

        sys.path.insert(0, str(LAMBDA_SRC))
        import preprocess  # the same (torchvision-exact) transform, minus the draft decode

        self.preprocess_module = preprocess
        self.threads = spec["threads"]
        options = ort.SessionOptions()  # defaults: spinning thread pool, no tuning
        options.intra_op_num_threads = self.threads  # threads pinned equally for every variant
        self.session = ort.InferenceSession(
            str(Path(spec["model_dir"]) / "model.onnx"),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        meta = self.session.get_modelmeta().custom_metadata_map
        self.labels = json.loads(meta["labels"])
        import numpy as np

        self.np = np

    def bare(self, batch: Any) -> Any:
        return self.session.run(None, {"input": batch})[0]

    def preprocess_file(self, path: Path) -> Any:
        from PIL import Image

        with Image.open(path) as img:
            return self.preprocess_module.transform(img.convert("RGB"))

    def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        from PIL import Image

        np = self.np
        data = base64.b64decode(event["body"])
        img = Image.open(io.BytesIO(data)).convert("RGB")  # decodes every pixel
        batch = self.preprocess_module.transform(img)[None]
        logits = self.bare(batch)[0]
        exp = np.exp(logits - logits.max())
        probs = exp / exp.sum()
        return {"statusCode": 200, "body": _top5_json(probs, self.labels)}


class TorchVariant(Variant):
    """PyTorch eager + torchvision transforms: the usual way to serve a torchvision model."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import torch
        from torchvision import transforms
        from torchvision.models import resnet18

        self.torch = torch
        self.threads = spec["threads"]
        torch.set_num_threads(self.threads)
        manifest = json.loads((Path(spec["model_dir"]) / "manifest.json").read_text())
        self.labels = manifest["labels"]
        state_path = Path(spec["state_dict"])
        if not state_path.is_file():
            state_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = state_path.with_suffix(".tmp")
            torch.save(_same_weights(manifest).state_dict(), tmp)
            tmp.replace(state_path)
        model = resnet18(weights=None, num_classes=len(self.labels))
        model.load_state_dict(torch.load(state_path, weights_only=True))
        self.model = model.eval()
        pre = manifest["preprocessing"]
        self.transform = transforms.Compose(
            [
                transforms.Resize(pre["resize"]),
                transforms.CenterCrop(pre["crop"]),
                transforms.ToTensor(),
                transforms.Normalize(pre["mean"], pre["std"]),
            ]
        )
        with torch.inference_mode():
            self.model(torch.zeros(1, 3, pre["crop"], pre["crop"]))

    def bare(self, batch: Any) -> Any:
        torch = self.torch
        with torch.inference_mode():
            return self.model(torch.from_numpy(batch)).numpy()

    def preprocess_file(self, path: Path) -> Any:
        from PIL import Image

        with Image.open(path) as img:
            return self.transform(img.convert("RGB")).numpy()

    def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        from PIL import Image

        torch = self.torch
        data = base64.b64decode(event["body"])
        img = Image.open(io.BytesIO(data)).convert("RGB")
        with torch.inference_mode():
            logits = self.model(self.transform(img).unsqueeze(0))
            probs = torch.softmax(logits, dim=1)[0].numpy()
        return {"statusCode": 200, "body": _top5_json(probs, self.labels)}


def _same_weights(manifest: dict[str, Any]) -> Any:
    """The torch module whose export is the ONNX model under test (same weights)."""
    from model_export.weights import checkpoint_model, imagenet_model, random_model

    weights = manifest["weights"]
    source = weights["source"]
    if source == "random":
        return random_model(int(weights["seed"])).model
    if source.startswith("imagenet"):
        return imagenet_model().model
    if source == "checkpoint" and weights.get("checkpoint"):
        return checkpoint_model(Path(weights["checkpoint"]), manifest["labels"]).model
    raise RuntimeError(f"bench cannot rebuild weights from source {source!r} for PyTorch eager")


VARIANTS = {
    "handler": HandlerVariant,
    "naive": NaiveVariant,
    "torch": TorchVariant,
    "batch": BatchVariant,
}


def serve(variant: Variant, out: Any) -> None:
    import numpy as np

    images: dict[str, bytes] = {}
    events: dict[str, dict[str, Any]] = {}
    checked: set[str] = set()
    batch_runs = 0

    def reply(payload: dict[str, Any]) -> None:
        out.write(json.dumps(payload) + "\n")
        out.flush()

    reply({"ready": True, "threads": variant.threads, "init": variant.init})
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            name = cmd["cmd"]
            if name == "quit":
                reply({"ok": True})
                return
            if name == "load":  # case -> (path, content type)
                for case, (path, ctype) in cmd["cases"].items():
                    images[case] = Path(path).read_bytes()
                    events[case] = predict_event(images[case], ctype)
                reply({"ok": True})
            elif name in ("latency", "batch"):
                key = cmd["case"] if name == "latency" else f"batch{cmd['size']}"
                if key not in events:
                    events[key] = batch_event(images[cmd["image"]], cmd["size"])
                event = events[key]
                ms, inner = [], []
                deadline = time.perf_counter() + cmd.get("budget_ms", 1e9) / 1000.0
                for _ in range(cmd["n"]):
                    if ms and time.perf_counter() > deadline:
                        break  # slow variants give fewer samples per block, never zero
                    t0 = time.perf_counter()
                    response = variant.handle(event)
                    ms.append((time.perf_counter() - t0) * 1000.0)
                    if key not in checked or "timings_ms" in response["body"]:
                        body = json.loads(response["body"])
                        if response["statusCode"] != 200:
                            raise RuntimeError(f"{key}: HTTP {response['statusCode']} {body}")
                        checked.add(key)
                        if "timings_ms" in body:
                            # Paired per request: everything but the model's own run.
                            inner.append(
                                body["timings_ms"]
                                | {"outside_model": ms[-1] - body["timings_ms"]["inference"]}
                            )
                reply({"ms": ms, "inner": inner})
            elif name == "stages":  # per-stage ms of one request path (bench/stages.py)
                from bench.stages import new_samples

                samples = new_samples()
                deadline = time.perf_counter() + cmd.get("budget_ms", 1e9) / 1000.0
                for i in range(cmd["n"]):
                    if i and time.perf_counter() > deadline:
                        break
                    variant.stages(events[cmd["case"]], images[cmd["case"]], samples)  # type: ignore[attr-defined]
                reply({"samples": samples})
            elif name == "bare":
                batch = np.zeros((cmd["batch"], 3, 224, 224), dtype=np.float32)
                batch[:] = variant.preprocess_file(Path(cmd["image"]))
                ms = []
                deadline = time.perf_counter() + cmd.get("budget_ms", 1e9) / 1000.0
                for _ in range(cmd["n"]):
                    if ms and time.perf_counter() > deadline:
                        break
                    t0 = time.perf_counter()
                    variant.bare(batch)
                    ms.append((time.perf_counter() - t0) * 1000.0)
                reply({"ms": ms})
            elif name == "logits":
                batch = np.stack([variant.preprocess_file(Path(p)) for p in cmd["paths"]])
                reply({"logits": np.asarray(variant.bare(batch), dtype=np.float64).tolist()})
            elif name == "batch_run":
                assert isinstance(variant, BatchVariant)
                batch_runs += 1
                reply(variant.run_batch(cmd, batch_runs))
            elif name == "rss":
                reply({"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
            else:
                raise ValueError(f"unknown command {name!r}")
        except Exception as exc:
            reply({"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})


def main() -> int:
    spec = json.loads(sys.argv[1])
    if spec.get("cpus"):
        os.sched_setaffinity(0, spec["cpus"])  # before any thread pool reads the affinity
    # Keep the protocol channel; send what the variant prints (logs, EMF) to /dev/null.
    out = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        variant = VARIANTS[spec["kind"]](spec)
    except Exception as exc:
        out.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        out.flush()
        traceback.print_exc()
        return 1
    serve(variant, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
