"""Fetch, verify, cache and open the model: everything the INIT phase does, callable from tests.

Trust rule: a model file is used only right after its sha256 was computed and matched
MODEL_SHA256. The cache file is named by that digest, written to a temp file in the same
directory and renamed into place, so a crash mid-download never leaves a file a later start
would trust, and a cached file is re-hashed before every use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from preprocess import PreprocessSpec

logger = logging.getLogger(__name__)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_CACHE_DIR = "/tmp/model-cache"  # noqa: S108 - /tmp is the only writable path on Lambda
CHUNK_BYTES = 1024 * 1024
# Lambda allocates CPU in proportion to memory: 1,769 MB is one full vCPU, 10,240 MB gets 6.
MB_PER_VCPU = 1769
MAX_LAMBDA_VCPUS = 6
# The flags that decide which ONNX Runtime (MLAS) kernels run, as /proc/cpuinfo spells them.
# x86: AVX2 / AVX-512 / VNNI (int8 dot products) / AMX. arm64: asimddp (Graviton2+: sdot/udot
# int8 GEMM), i8mm (Graviton3+: MLAS switches int8 GEMM to smmla/ummla), bf16 (Graviton3+: needed
# by ORT's opt-in bfloat16 fast-math GEMM); sve (Graviton3+) and sve2 (Graviton4 only) tell the
# generations apart.
CPU_FLAGS_OF_INTEREST = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "asimddp",
    "i8mm",
    "bf16",
    "sve",
    "sve2",
)


class ModelUnavailable(Exception):
    """The model could not be fetched, verified or opened; requests get 503 and retry later."""


@dataclass(frozen=True)
class Config:
    bucket: str
    key: str
    sha256: str
    cache_dir: Path

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ[str] = os.environ) -> Config:
        """Read the deploy-time configuration; a missing value is a deploy bug, so fail loudly."""
        missing = [n for n in ("MODEL_BUCKET", "MODEL_KEY", "MODEL_SHA256") if not env.get(n)]
        if missing:
            raise RuntimeError(
                f"Missing required environment variable(s): {', '.join(missing)}. "
                "The stack sets them; see docs/inference.md."
            )
        sha = env["MODEL_SHA256"].strip().lower()
        if not SHA256_RE.match(sha):
            raise RuntimeError(f"MODEL_SHA256 must be 64 hex characters, got {sha!r}.")
        return cls(
            bucket=env["MODEL_BUCKET"],
            key=env["MODEL_KEY"],
            sha256=sha,
            cache_dir=Path(env.get("MODEL_CACHE_DIR") or DEFAULT_CACHE_DIR),
        )


@dataclass
class LoadTimings:
    """Milliseconds per INIT phase: logs, the ModelLoadMs metric, scripts/bench_handler.py."""

    download_ms: float = 0.0
    verify_ms: float = 0.0
    session_ms: float = 0.0
    warmup_ms: float = 0.0
    cache_hit: bool = False
    downloaded_bytes: int = 0

    @property
    def total_ms(self) -> float:
        return self.download_ms + self.verify_ms + self.session_ms + self.warmup_ms


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def cached_model_path(config: Config) -> Path:
    return config.cache_dir / f"{config.sha256}.onnx"


def fetch_model(
    config: Config,
    s3_client_factory: Callable[[], Any],
    timings: LoadTimings,
    trace: Callable[[str], contextlib.AbstractContextManager[Any]] | None = None,
) -> Path:
    """Return the path of a model file whose sha256 was just checked against config.sha256."""
    trace = trace or (lambda _name: contextlib.nullcontext())
    path = cached_model_path(config)
    if path.exists():
        started = time.perf_counter()
        actual = sha256_file(path)
        timings.verify_ms = _ms_since(started)
        if actual == config.sha256:
            timings.cache_hit = True
            return path
        # /tmp survives between environments on the same sandbox; never trust what is there.
        logger.warning(
            "Cached model digest mismatch; deleting and re-downloading",
            extra={"path": str(path), "expected_sha256": config.sha256, "actual_sha256": actual},
        )
        path.unlink(missing_ok=True)

    config.cache_dir.mkdir(parents=True, exist_ok=True)
    # Left by a process killed mid-download (SIGKILL skips cleanup). One process owns /tmp per
    # environment, so none is in use; removing them keeps repeated crashes from filling /tmp.
    for stale in config.cache_dir.glob(".download-*.part"):
        stale.unlink(missing_ok=True)
    started = time.perf_counter()
    with trace("s3_download"):
        actual, size = _download_verifying(config, s3_client_factory, path)
    timings.download_ms = _ms_since(started)
    timings.downloaded_bytes = size
    if actual != config.sha256:
        raise ModelUnavailable(
            f"s3://{config.bucket}/{config.key} has sha256 {actual}, expected MODEL_SHA256 "
            f"{config.sha256}; refusing to serve it."
        )
    return path


def _download_verifying(
    config: Config, s3_client_factory: Callable[[], Any], dest: Path
) -> tuple[str, int]:
    """Stream the object into a temp file beside dest, hashing as it arrives.

    The temp file is renamed to dest only if the digest matches, so dest is either absent or
    complete and correct. Returns (digest, size).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(dir=config.cache_dir, prefix=".download-", suffix=".part")
    tmp = Path(tmp_name)
    try:
        try:
            response = s3_client_factory().get_object(Bucket=config.bucket, Key=config.key)
            with os.fdopen(fd, "wb") as out:
                for chunk in response["Body"].iter_chunks(CHUNK_BYTES):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
        except (BotoCoreError, ClientError) as exc:
            raise ModelUnavailable(
                f"Could not download s3://{config.bucket}/{config.key}: {exc}"
            ) from exc
        actual = digest.hexdigest()
        if actual == config.sha256:
            os.replace(tmp, dest)
        return actual, size
    finally:
        tmp.unlink(missing_ok=True)


def lambda_vcpus(env: dict[str, str] | os._Environ[str] = os.environ) -> int:
    """The CPUs this function can really use: Lambda's memory-to-vCPU rule, bounded by affinity.

    os.cpu_count() reports the host (or the VM's nominal) CPUs, not the share Lambda grants,
    and oversubscribing ORT threads on a fractional vCPU only adds contention.
    """
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        available = os.cpu_count() or 1
    memory = env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
    if memory and memory.isdigit():
        by_memory = min(MAX_LAMBDA_VCPUS, max(1, math.ceil(int(memory) / MB_PER_VCPU)))
        return max(1, min(available, by_memory))
    return max(1, available)


def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """CPU model and the SIMD flags that decide which ORT kernels run (logged at cold start)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return {"model": None, "flags": []}
    model = None
    flags: set[str] = set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name in ("model name", "cpu part") and model is None:
            model = value.strip()
        elif name in ("flags", "features"):
            flags.update(value.split())
    return {"model": model, "flags": [f for f in CPU_FLAGS_OF_INTEREST if f in flags]}


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Spinning workers burn the CPU share Lambda grants (and bills) while waiting for work;
    # with one request per environment at a time there is nothing to gain from it.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


@dataclass
class Model:
    """An open ONNX Runtime session plus what the model's metadata says about it."""

    session: ort.InferenceSession
    name: str
    sha256: str
    labels: list[str]
    preprocessing: PreprocessSpec
    input_name: str
    output_name: str
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """float32 [N, 3, H, W] -> logits [N, num_classes]."""
        (logits,) = self.session.run([self.output_name], {self.input_name: batch})
        return np.asarray(logits)


def open_model(path: Path, sha256: str, threads: int, timings: LoadTimings) -> Model:
    """Create the session, read labels/preprocessing from the (digest-covered) metadata, warm up."""
    started = time.perf_counter()
    try:
        session = ort.InferenceSession(
            str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises several private exception types for bad models
        raise ModelUnavailable(f"ONNX Runtime could not load the model: {exc}") from exc
    timings.session_ms = _ms_since(started)

    meta = dict(session.get_modelmeta().custom_metadata_map)
    try:
        labels = json.loads(meta["labels"])
        spec = PreprocessSpec.from_json(meta["preprocessing"])
        name = meta.get("model_name") or session.get_modelmeta().graph_name
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelUnavailable(f"Model metadata lacks valid labels/preprocessing: {exc}") from exc
    output = session.get_outputs()[0]
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ModelUnavailable("Model metadata 'labels' is not a JSON list of strings.")
    if isinstance(output.shape[-1], int) and output.shape[-1] != len(labels):
        raise ModelUnavailable(f"Model has {output.shape[-1]} outputs but {len(labels)} labels.")
    model = Model(
        session=session,
        name=name,
        sha256=sha256,
        labels=labels,
        preprocessing=spec,
        input_name=session.get_inputs()[0].name,
        output_name=output.name,
        metadata=meta,
    )

    started = time.perf_counter()
    # The first run allocates buffers and picks kernels; pay that here, not on a client request.
    model.infer(np.zeros((1, 3, spec.crop, spec.crop), dtype=np.float32))
    timings.warmup_ms = _ms_since(started)
    return model


def load_model(
    config: Config,
    s3_client_factory: Callable[[], Any],
    threads: int,
    trace: Callable[[str], contextlib.AbstractContextManager[Any]] | None = None,
) -> tuple[Model, LoadTimings]:
    timings = LoadTimings()
    path = fetch_model(config, s3_client_factory, timings, trace)
    return open_model(path, config.sha256, threads, timings), timings


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
