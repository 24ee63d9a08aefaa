"""Real photographs that ship inside installed wheels, used to verify every export.

Nothing is downloaded: scikit-image's wheel carries ``skimage/data`` and matplotlib's carries
``mpl-data/sample_data``. They are natural images with ImageNet-like content (a cat, a rocket,
a motorcycle, coffee, a person), so agreement between PyTorch and ONNX Runtime is measured on
the kind of input the endpoint will see, not on noise.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# Colour and greyscale photographs only; skimage's synthetic test patterns are left out.
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "camera.png",
    "retina.jpg",
    "hubble_deep_field.jpg",
)
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg",)


def _package_dir(name: str) -> Path | None:
    # find_spec locates the package without importing it (matplotlib's import is slow).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def photographs() -> list[Path]:
    """Paths of the shipped photographs, in a fixed order.

    scikit-image is an exporter dependency, so its eight photographs are always there;
    matplotlib (a development dependency) adds a ninth when installed.
    """
    found: list[Path] = []
    skimage_dir = _package_dir("skimage")
    if skimage_dir is not None:
        found += [skimage_dir / "data" / name for name in SKIMAGE_PHOTOS]
    mpl_dir = _package_dir("matplotlib")
    if mpl_dir is not None:
        found += [mpl_dir / "mpl-data" / "sample_data" / name for name in MATPLOTLIB_PHOTOS]
    found = [path for path in found if path.is_file()]
    if not found:
        raise FileNotFoundError(
            "no shipped photographs found: install scikit-image (model_export/requirements.txt)"
        )
    return found
