"""The right answers, computed once and without the serving code: torchvision's ResNet eval
transform and ONNX Runtime run directly on the artifact, with the session settings the function
uses (all graph optimizations, intra-op threads from the memory size), so the logits are the
function's own and a near-tie cannot flip between the two.

Every 200 the load test, the soak and the fault scenarios receive is compared with this: the
model's sha256, the top-1 class and its probability (within 1e-4) and the top-5 ranking must
match, or it is counted as a wrong answer. The top-5 ranking matters for an untrained export,
which tends to name the same top-1 class for every photograph: the ranking still tells the
photographs apart, so an answer for the wrong image is caught.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MB_PER_VCPU = 1769  # Lambda's memory-to-vCPU rule, as lambda_src/model_store.py applies it


@dataclass(frozen=True)
class Expected:
    name: str  # the photograph's file name
    content_type: str
    top1: int
    top1_probability: float
    top5: list[int]
    margin: float  # top-1 minus top-2 probability: how far from a tie the answer is


@dataclass(frozen=True)
class Reference:
    model_sha256: str
    answers: dict[str, Expected]

    def check(self, name: str, body: Any) -> str | None:
        """None when a 200 body is the right answer for photograph `name`, else why not."""
        expected = self.answers[name]
        try:
            predictions = body["predictions"]
            top1, probability = int(predictions[0]["index"]), float(predictions[0]["probability"])
            top5 = [int(p["index"]) for p in predictions[:5]]
            sha = body["model"]["sha256"]
        except (KeyError, IndexError, TypeError, ValueError):
            return "a 200 without predictions"
        if sha != self.model_sha256:
            return f"served by model {str(sha)[:12]}, expected {self.model_sha256[:12]}"
        if top1 != expected.top1:
            return f"top-1 {top1}, expected {expected.top1}"
        if abs(probability - expected.top1_probability) > 1e-4:
            return f"top-1 probability {probability:.5f}, expected {expected.top1_probability:.5f}"
        if top5 != expected.top5[: len(top5)]:
            return f"top-5 {top5}, expected {expected.top5}"
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "model_sha256": self.model_sha256,
            "answers": {k: vars(v) for k, v in self.answers.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reference:
        return cls(data["model_sha256"], {k: Expected(**v) for k, v in data["answers"].items()})


def content_type_of(path: Path) -> str:
    return {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}[path.suffix.lower()]


def compute_reference(model_dir: Path, photos: list[Path], memory_mb: int) -> Reference:
    import numpy as np
    import onnxruntime as ort
    from PIL import Image, ImageOps
    from torchvision import transforms

    manifest = json.loads((model_dir / "manifest.json").read_text())
    spec = manifest.get("preprocessing", {})
    mean = tuple(spec.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(spec.get("std", (0.229, 0.224, 0.225)))
    transform = transforms.Compose(
        [
            transforms.Resize(int(spec.get("resize", 256))),
            transforms.CenterCrop(int(spec.get("crop", 224))),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = max(1, math.ceil(memory_mb / MB_PER_VCPU))
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(model_dir / str(manifest.get("file", "model.onnx"))),
        sess_options=options,
        providers=["CPUExecutionProvider"],
    )
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    answers: dict[str, Expected] = {}
    for photo in photos:
        image = ImageOps.exif_transpose(Image.open(photo)).convert("RGB")
        batch = transform(image).unsqueeze(0).numpy()
        logits = session.run([output_name], {input_name: batch})[0][0].astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")[:5]
        answers[photo.name] = Expected(
            name=photo.name,
            content_type=content_type_of(photo),
            top1=int(order[0]),
            top1_probability=float(probs[order[0]]),
            top5=[int(i) for i in order],
            margin=float(probs[order[0]] - probs[order[1]]),
        )
    return Reference(model_sha256=str(manifest["sha256"]), answers=answers)
