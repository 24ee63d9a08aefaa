"""Build the ResNet18 to export: ImageNet weights, a checkpoint, or a seeded untrained model."""

from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18
from torchvision.models.resnet import BasicBlock, ResNet

from .checksum import sha256_file
from .errors import ExportError, WeightsUnavailable

MODEL_NAME = "resnet18"
IMAGENET_WEIGHTS = ResNet18_Weights.IMAGENET1K_V1
# Category names ship inside torchvision's weight metadata: no download needed.
IMAGENET_LABELS: list[str] = list(IMAGENET_WEIGHTS.meta["categories"])

# Every class a pickled torchvision ResNet18 references. Allow-listing exactly these lets
# torch.load(weights_only=True) rebuild a whole saved model without running arbitrary code.
_RESNET_CLASSES: list[Any] = [
    ResNet,
    BasicBlock,
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Linear,
    nn.Sequential,
]
# Wrappers that training scripts commonly put around a state_dict.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net")


@dataclass(frozen=True)
class LoadedModel:
    """A ResNet18 in eval mode plus what the manifest says about where it came from."""

    model: nn.Module
    labels: list[str]
    source: str  # "imagenet:IMAGENET1K_V1", "random", or "checkpoint"
    trained: bool
    seed: int | None = None
    checkpoint: str | None = None  # file name, never the full local path
    checkpoint_sha256: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def read_labels(path: Path) -> list[str]:
    """One class name per line; blank lines are ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExportError(f"labels file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"cannot read labels file {path}: {exc}") from exc
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise ExportError(f"labels file {path} has no class names (one name per line expected)")
    duplicates = sorted({name for name in labels if labels.count(name) > 1})
    if duplicates:
        raise ExportError(f"labels file {path} repeats class names: {', '.join(duplicates[:5])}")
    return labels


def _check_labels(labels: list[str] | None, num_classes: int, origin: str) -> list[str] | None:
    if labels is not None and len(labels) != num_classes:
        raise ExportError(
            f"labels file has {len(labels)} names but the {origin} has {num_classes} classes"
        )
    return labels


def random_model(seed: int, labels: list[str] | None = None) -> LoadedModel:
    """torchvision's own initialisation, seeded: untrained, for tests and offline demos."""
    labels = _check_labels(labels, len(IMAGENET_LABELS), "random model's 1000-class head")
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = resnet18(weights=None)
    finally:
        torch.random.set_rng_state(generator_state)
    return LoadedModel(
        model=model.eval(),
        labels=labels or IMAGENET_LABELS,
        source="random",
        trained=False,
        seed=seed,
        notes=(
            f"UNTRAINED: random weights (seed {seed}); its predictions are meaningless "
            "(for tests and offline demos only)",
        ),
    )


def imagenet_model(labels: list[str] | None = None) -> LoadedModel:
    """torchvision's IMAGENET1K_V1 weights (downloaded once into $TORCH_HOME, then cached)."""
    labels = _check_labels(labels, len(IMAGENET_LABELS), "ImageNet model")
    try:
        state_dict = IMAGENET_WEIGHTS.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # urllib, socket, hash and unpickling errors all mean "not available"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsUnavailable(
            f"cannot download the ImageNet weights from {IMAGENET_WEIGHTS.url} ({reason}); "
            "offline, use --weights random (untrained) or --weights PATH (a local checkpoint)",
            reason,
        ) from exc
    model = resnet18(weights=None)
    model.load_state_dict(state_dict)
    return LoadedModel(
        model=model.eval(),
        labels=labels or IMAGENET_LABELS,
        source=f"imagenet:{IMAGENET_WEIGHTS.name}",
        trained=True,
    )


def _load_checkpoint_object(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(_RESNET_CLASSES):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any class outside the allow-list instead of executing it.
        detail = str(exc)
        if "Weights only load failed" in detail:
            found = re.search(r"GLOBAL ([\w.]+)", detail)
            needs = found.group(1) if found else "a class"
            raise ExportError(
                f"checkpoint {path} is a pickle that needs {needs}, which is not part of a "
                "state_dict or a torchvision ResNet18; loading it would run arbitrary code, so "
                "save model.state_dict() instead"
            ) from exc
        raise ExportError(f"cannot read checkpoint {path}: not a valid PyTorch file") from exc
    except Exception as exc:  # torch.load fails on arbitrary bytes with any exception type
        detail = str(exc).split(". ")[0].splitlines()[0] if str(exc) else ""
        raise ExportError(
            f"cannot read checkpoint {path}: corrupt or not a PyTorch file "
            f"({type(exc).__name__}: {detail[:160]})"
        ) from exc


def _state_dict_from(obj: Any, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        if not isinstance(obj, ResNet):
            raise ExportError(
                f"checkpoint {path} holds a {type(obj).__name__}, not a torchvision ResNet18"
            )
        return obj.state_dict()
    if isinstance(obj, Mapping):
        for key in _STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return _state_dict_from(inner, path)
            if (
                isinstance(inner, Mapping)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                obj = inner
                break
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            # nn.DataParallel / DistributedDataParallel save every key under "module.".
            if all(str(k).startswith("module.") for k in tensors):
                tensors = {str(k)[len("module.") :]: v for k, v in tensors.items()}
            return OrderedDict(tensors)
    raise ExportError(
        f"checkpoint {path} holds neither a state_dict nor a ResNet18 (found {type(obj).__name__})"
    )


def checkpoint_model(path: Path, labels: list[str] | None = None) -> LoadedModel:
    """A local checkpoint: a state_dict or a whole torchvision ResNet18 saved with torch.save.

    Fine-tuned heads are welcome: the class count comes from ``fc.weight``.
    """
    if not path.exists():
        raise ExportError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise ExportError(f"checkpoint {path} is not a file")
    state_dict = _state_dict_from(_load_checkpoint_object(path), path)
    fc_weight = state_dict.get("fc.weight")
    if not isinstance(fc_weight, torch.Tensor) or fc_weight.dim() != 2:
        raise ExportError(
            f"checkpoint {path} is not a ResNet18: it has no 2-D 'fc.weight' classifier "
            f"(keys start with {', '.join(list(state_dict)[:3])})"
        )
    num_classes = int(fc_weight.shape[0])
    model = resnet18(weights=None, num_classes=num_classes)
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # tensor shape mismatches raise even when strict=False
        detail = " ".join(str(exc).split())
        raise ExportError(
            f"checkpoint {path} is not a ResNet18 ({detail[:200]}); "
            "another architecture cannot be exported as resnet18"
        ) from exc
    problems = []
    if result.missing_keys:
        problems.append(f"missing {len(result.missing_keys)} keys e.g. {result.missing_keys[0]}")
    if result.unexpected_keys:
        problems.append(
            f"{len(result.unexpected_keys)} unexpected keys e.g. {result.unexpected_keys[0]}"
        )
    if problems:
        raise ExportError(
            f"checkpoint {path} is not a ResNet18 ({'; '.join(problems)}); "
            "another architecture cannot be exported as resnet18"
        )
    labels = _check_labels(labels, num_classes, f"checkpoint's {num_classes}-class head")
    notes: tuple[str, ...] = ()
    if labels is None:
        if num_classes == len(IMAGENET_LABELS):
            labels = IMAGENET_LABELS
            notes = ("no --labels given: using the ImageNet class names for the 1000-class head",)
        else:
            labels = [f"class_{index}" for index in range(num_classes)]
            notes = (
                f"no --labels given: the {num_classes} classes are named class_0..class_"
                f"{num_classes - 1}",
            )
    return LoadedModel(
        model=model.eval(),
        labels=labels,
        source="checkpoint",
        trained=True,
        checkpoint=path.name,
        checkpoint_sha256=sha256_file(path),
        notes=notes,
    )
