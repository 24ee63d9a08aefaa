"""The one preprocessing definition: torchvision's ImageNet eval transforms.

The same numbers go into the ONNX metadata and the manifest, so the serving side can reproduce
exactly what the model was verified with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import transforms

from .errors import ExportError

RESIZE = 256
CROP = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

PREPROCESSING: dict[str, Any] = {
    "resize": RESIZE,
    "crop": CROP,
    "mean": list(MEAN),
    "std": list(STD),
    "interpolation": "bilinear",
    "antialias": True,
}

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def eval_transform() -> transforms.Compose:
    """torchvision's ImageNet eval pipeline, as in ResNet18_Weights.IMAGENET1K_V1.transforms()."""
    return transforms.Compose(
        [
            transforms.Resize(
                RESIZE, interpolation=transforms.InterpolationMode.BILINEAR, antialias=True
            ),
            transforms.CenterCrop(CROP),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )


def load_image(path: Path) -> Image.Image:
    """Open an image as RGB (greyscale and palette images are converted, as serving does)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise ExportError(f"cannot read image {path}: {exc}") from exc


def preprocess(paths: Sequence[Path]) -> np.ndarray:
    """A float32 NCHW batch, one row per path, in the given order."""
    transform = eval_transform()
    tensors = [transform(load_image(path)) for path in paths]
    return torch.stack(tensors).numpy().astype(np.float32, copy=False)


def image_files(directory: Path) -> list[Path]:
    """Image files under ``directory`` (recursively), sorted so runs are reproducible."""
    if not directory.exists():
        raise ExportError(f"calibration directory {directory} does not exist")
    if not directory.is_dir():
        raise ExportError(f"calibration directory {directory} is not a directory")
    try:
        files = sorted(
            path
            for path in directory.rglob("*")
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
        )
    except OSError as exc:
        raise ExportError(f"cannot read calibration directory {directory}: {exc}") from exc
    if not files:
        # rglob swallows permission errors, so an unreadable directory also lands here.
        raise ExportError(
            f"calibration directory {directory} has no readable images "
            f"({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return files
