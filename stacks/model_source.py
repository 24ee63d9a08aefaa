"""Where the deployed model comes from: the exporter's artifact dir, or an already-published key.

Pure Python (no CDK): reading a manifest must not need torch, AWS credentials or the network.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

MODEL_PREFIX = "models"
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
# The photograph the rollout hook sends to every new version; it ships in the hook's asset and
# the exporter records the model's answer for it (manifest "reference").
ROLLOUT_HOOK_DIR = Path(__file__).resolve().parent.parent / "rollout_hook"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MIB = 1024 * 1024
# Headroom on /tmp beyond the model itself: the download's temporary file and ONNX Runtime's
# optimized-model cache both live there next to the checksummed copy.
_EPHEMERAL_HEADROOM_MB = 256

HOW_TO_GET_A_MODEL = (
    "run `make model` to export one to build/model, pass -c model_dir=<artifact dir>, "
    "or deploy an already-published model with "
    "-c model_key=models/<sha256>/model.onnx -c model_sha256=<sha256>"
)


class ModelSourceError(ValueError):
    """A one-line, actionable reason why no model can be deployed."""


def model_key(sha256: str, prefix: str = MODEL_PREFIX) -> str:
    """Content-addressed key of a model, the exporter's publish layout."""
    return f"{prefix}/{sha256}/{MODEL_FILE}"


def _sha256_of(path: Path) -> str:
    # stacks/ never imports model_export (torch); the stdlib does the chunked read.
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


@dataclass(frozen=True, kw_only=True)
class ModelReference:
    """What the model answers for the photograph shipped in ``rollout_hook/``.

    Attributes:
        image: File name in ``rollout_hook/`` (``reference.jpg``).
        image_sha256: Hex SHA-256 of that file when the answer was recorded.
        top1_index: Class index the model ranks first for it.
        top1_label: That class's name, for logs (``None`` when only the index is known).
    """

    image: str
    image_sha256: str
    top1_index: int
    top1_label: str | None = None

    @property
    def image_path(self) -> Path:
        return ROLLOUT_HOOK_DIR / self.image

    @classmethod
    def from_manifest(cls, raw: object, manifest_path: Path) -> ModelReference:
        """Parse and check the manifest's ``reference`` against the shipped image."""
        try:
            if not isinstance(raw, dict):
                raise TypeError(f"reference is a {type(raw).__name__}, not an object")
            image = str(raw["image"])
            image_sha256 = str(raw["image_sha256"])
            top1 = raw["top1"]
            index = top1["index"]
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise TypeError(f"top1.index {index!r}")
            label = top1.get("label")
        except (KeyError, TypeError, AttributeError) as error:
            raise ModelSourceError(
                f"{manifest_path} has a malformed reference ({error!r}): re-export with "
                "`make model`"
            ) from None
        reference = cls(
            image=image,
            image_sha256=image_sha256,
            top1_index=index,
            top1_label=None if label is None else str(label),
        )
        path = reference.image_path
        if "/" in image or not path.is_file():
            raise ModelSourceError(
                f"{manifest_path} records its reference prediction for {image!r}, which is not "
                f"in {ROLLOUT_HOOK_DIR.name}/: re-export with `make model`"
            )
        if _sha256_of(path) != image_sha256:
            raise ModelSourceError(
                f"{manifest_path} records its reference prediction for another version of "
                f"{ROLLOUT_HOOK_DIR.name}/{image} (sha256 {image_sha256}): re-export with "
                "`make model`"
            )
        return reference


@dataclass(frozen=True, kw_only=True)
class ModelSource:
    """The model a stack deploys.

    Attributes:
        key: S3 object key of ``model.onnx`` in the model bucket (``models/<sha256>/model.onnx``).
        sha256: Hex SHA-256 of ``model.onnx``; the function verifies the download against it.
        artifact_dir: Exporter output to upload with the stack, or ``None`` when the model is
            already published in the bucket.
        size_bytes: Size of ``model.onnx`` in bytes, when known.
        reference: The model's recorded answer for the rollout hook's photograph, or ``None``
            (a manifest from before it was recorded, or a published model deployed by key
            without ``model_reference_top1``): the hook then checks status and sha256 only.
    """

    key: str
    sha256: str
    artifact_dir: Path | None = None
    size_bytes: int | None = None
    reference: ModelReference | None = None

    def __post_init__(self) -> None:
        if not _SHA256.match(self.sha256):
            raise ModelSourceError(
                f"model_sha256 must be 64 lowercase hex characters, got {self.sha256!r}"
            )
        if not self.key or self.key.startswith("/") or "*" in self.key:
            raise ModelSourceError(f"model_key must be a plain S3 key, got {self.key!r}")

    @property
    def key_prefix(self) -> str:
        """The "folder" holding ``model.onnx`` and ``manifest.json``."""
        return self.key.rpartition("/")[0]

    @property
    def store_prefix(self) -> str:
        """The content-addressed root every model lives under (``models``): the key's folders
        before ``<sha256>``. Older versions of the function read their own models from there
        during a canary or after a rollback."""
        segments = self.key.split("/")
        cut = segments.index(self.sha256) if self.sha256 in segments else len(segments) - 2
        return "/".join(segments[: max(cut, 0)])

    @property
    def min_ephemeral_storage_mb(self) -> int | None:
        """Smallest ``/tmp`` that fits two copies of the model plus headroom, in MB."""
        if self.size_bytes is None:
            return None
        return -(-2 * self.size_bytes // _MIB) + _EPHEMERAL_HEADROOM_MB

    @classmethod
    def published(cls, *, key: str, sha256: str, reference_top1: object = None) -> ModelSource:
        """A model already in the bucket (for example uploaded by ``model_export.publish``).

        ``reference_top1``: the class index its manifest records for the shipped reference
        photograph (``reference.top1.index``; an int or its decimal string, as CDK context
        gives it), so the rollout hook checks the top-1 too. ``None``: it does not.
        """
        reference = None
        if reference_top1 is not None:
            text = str(reference_top1).strip()
            if isinstance(reference_top1, bool) or not re.fullmatch(r"[0-9]{1,9}", text):
                raise ModelSourceError(
                    f"model_reference_top1 must be a class index >= 0, got {reference_top1!r}"
                )
            image = ROLLOUT_HOOK_DIR / "reference.jpg"
            reference = ModelReference(
                image=image.name, image_sha256=_sha256_of(image), top1_index=int(text)
            )
        source = cls(key=key, sha256=sha256, reference=reference)
        if sha256 not in key.split("/"):
            raise ModelSourceError(
                f"model_key {key!r} is not content-addressed by model_sha256 {sha256}: "
                f"expected {model_key(sha256)}"
            )
        if not source.store_prefix:
            raise ModelSourceError(
                f"model_key {key!r} must sit under a prefix: expected {model_key(sha256)}"
            )
        return source

    @classmethod
    def from_artifact_dir(cls, model_dir: Path) -> ModelSource:
        """Read the exporter's ``manifest.json`` and check ``model.onnx`` against it."""
        manifest_path = model_dir / MANIFEST_FILE
        model_path = model_dir / MODEL_FILE
        if not manifest_path.is_file() or not model_path.is_file():
            raise ModelSourceError(f"No exported model in {model_dir}: {HOW_TO_GET_A_MODEL}")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            sha256 = str(manifest["sha256"])
            declared_file = manifest.get("file", MODEL_FILE)
            format_version = manifest.get("format_version")
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ModelSourceError(
                f"{manifest_path} is not an exporter manifest ({error!r}): {HOW_TO_GET_A_MODEL}"
            ) from None
        if format_version != 1:
            raise ModelSourceError(
                f"{manifest_path} has format_version {format_version!r}, expected 1: re-export "
                "with `make model`"
            )
        if declared_file != MODEL_FILE:
            raise ModelSourceError(
                f"{manifest_path} names {declared_file!r}; the serving contract is {MODEL_FILE}"
            )
        actual = _sha256_of(model_path)
        if actual != sha256:
            raise ModelSourceError(
                f"{model_path} has sha256 {actual} but {MANIFEST_FILE} says {sha256}: "
                "re-export with `make model`"
            )
        raw_reference = manifest.get("reference")
        return cls(
            key=model_key(sha256),
            sha256=sha256,
            artifact_dir=model_dir,
            size_bytes=model_path.stat().st_size,
            reference=(
                None
                if raw_reference is None
                else ModelReference.from_manifest(raw_reference, manifest_path)
            ),
        )
