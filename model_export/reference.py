"""The reference prediction: what the exported model answers for the photograph the stack ships.

Recorded in ``manifest.json`` at export. The CodeDeploy BeforeAllowTraffic hook
(``rollout_hook/``) and ``make smoke`` send the same photograph to a deployed function and
compare its top-1 with this record, so a broken image or a wrong model never takes traffic.

It is computed with the serving code itself, not a second implementation: the handler's
``preprocess.preprocess``, ``model_store.open_model`` (ONNX Runtime with the handler's session
options) and ``api.top_predictions`` (softmax, stable ordering), imported from ``lambda_src/``.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import ExportError

REPO = Path(__file__).resolve().parents[1]
LAMBDA_SRC = REPO / "lambda_src"
# Ships inside the hook function's asset; the hook reads it from its own code directory.
REFERENCE_IMAGE = REPO / "rollout_hook" / "reference.jpg"
TOP_K = 5


def serving_module(name: str) -> ModuleType:
    """A module of the Lambda image's code (``preprocess``, ``model_store``, ``api``).

    lambda_src/ modules import each other flat, as in the image, so its directory goes on
    sys.path; the resolved file is checked so that no other module of the same name is used.
    """
    if str(LAMBDA_SRC) not in sys.path:
        sys.path.insert(0, str(LAMBDA_SRC))
    module = importlib.import_module(name)
    if Path(module.__file__ or "").resolve().parent != LAMBDA_SRC:
        raise ExportError(f"module {name!r} resolves to {module.__file__}, not lambda_src/")
    return module


def reference_prediction(model_path: Path, image: Path = REFERENCE_IMAGE) -> dict[str, Any]:
    """The manifest's ``reference`` object for ``model_path`` and ``image``.

    ``{"image", "image_sha256", "top1": {index, label, probability}, "top5": [...],
    "computed_with"}``; probabilities are the serving softmax, for people reading the manifest
    (the hook and the smoke test compare the top-1 index only).
    """
    try:
        data = image.read_bytes()
    except OSError as exc:
        raise ExportError(f"cannot read the reference image {image}: {exc.strerror}") from exc
    preprocess = serving_module("preprocess")
    model_store = serving_module("model_store")
    api = serving_module("api")
    sha256 = hashlib.sha256(model_path.read_bytes()).hexdigest()
    # One thread: the reference must not depend on how many cores the export machine has.
    model = model_store.open_model(model_path, sha256, 1, model_store.LoadTimings())
    spec = model.preprocessing
    try:
        pixels = preprocess.preprocess(data, spec)
    except Exception as exc:  # ApiError from lambda_src: the handler would refuse the image too
        raise ExportError(f"the serving code refuses the reference image {image}: {exc}") from exc
    (logits,) = model.infer(pixels[None, ...])
    top = api.top_predictions(logits, model.labels, min(TOP_K, model.num_classes))
    import onnxruntime

    return {
        "image": image.name,
        "image_sha256": hashlib.sha256(data).hexdigest(),
        "top1": top[0],
        "top5": top,
        "computed_with": (
            f"lambda_src preprocess + ONNX Runtime {onnxruntime.__version__} "
            "(CPUExecutionProvider, 1 thread)"
        ),
    }
