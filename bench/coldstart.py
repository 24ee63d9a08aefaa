"""One cold start, in a fresh interpreter: ``python -m bench.coldstart handler|torch SPEC OUT``.

Only the standard library is imported before the clock starts, so module imports are as cold as
a new Lambda execution environment's (modulo the OS page cache, see docs/performance.md).

handler: the real lambda_src handler's INIT with an empty /tmp cache, downloading the model from
the S3 API server named by AWS_ENDPOINT_URL_S3; phases come from the handler's own timers.
torch: the usual PyTorch eager service start: import torch + torchvision, build ResNet18, load
the state dict from a local file (cheaper than fetching it, so the comparison favours PyTorch),
one first inference.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 2)


def handler_init(spec: dict) -> dict:
    os.environ.update(spec["env"])
    sys.path.insert(0, spec["lambda_src"])
    t0 = time.perf_counter()
    import handler

    total = _ms(t0)
    runtime = handler.RUNTIME
    if runtime.model is None:
        raise RuntimeError(f"handler INIT failed: {runtime.load_error}")
    report = runtime.init_report()
    # Every phase the handler times itself (imports, download incl. hashing, verify, session,
    # warm-up, ...); model_load_ms is their sum, so it is not a phase of its own.
    phases = {
        k: v
        for k, v in report.items()
        if k.endswith("_ms") and k != "model_load_ms" and isinstance(v, int | float)
    }
    # What the handler does not time itself (e.g. Powertools setup, the cold-start log line).
    phases["other_ms"] = round(total - sum(phases.values()), 2)
    return {
        "total_ms": total,
        "phases": phases,
        "downloaded_bytes": report["downloaded_bytes"],
        "threads": report["threads"],
        "cache_hit": report["cache_hit"],
    }


def torch_init(spec: dict) -> dict:
    t0 = time.perf_counter()
    import torch
    import torchvision

    imports = _ms(t0)
    t = time.perf_counter()
    torch.set_num_threads(spec["threads"])
    model = torchvision.models.resnet18(weights=None, num_classes=spec["num_classes"])
    build = _ms(t)
    t = time.perf_counter()
    model.load_state_dict(torch.load(spec["state_dict"], weights_only=True))
    model.eval()
    load = _ms(t)
    t = time.perf_counter()
    with torch.inference_mode():
        model(torch.zeros(1, 3, 224, 224))
    first = _ms(t)
    return {
        "total_ms": _ms(t0),
        "phases": {
            "imports_ms": imports,
            "build_ms": build,
            "load_weights_ms": load,
            "first_inference_ms": first,
        },
        "threads": torch.get_num_threads(),
    }


def main() -> int:
    kind, spec_json, out_path = sys.argv[1:4]
    spec = json.loads(spec_json)
    result = handler_init(spec) if kind == "handler" else torch_init(spec)
    result["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    with open(out_path, "w") as out:
        json.dump(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
