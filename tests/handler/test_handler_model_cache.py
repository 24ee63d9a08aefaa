"""INIT: download once, verified /tmp cache, refusal of wrong digests, retry after failure."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from handler_testkit import CountingS3, body_of, predict_event, s3_client, sha256_of

import model_store
from model_store import Config

# /health flushes no application metric; Powertools warns about that on every call.
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


@pytest.fixture
def jpeg_bytes() -> bytes:
    from model_export.photos import photographs

    jpegs = [p for p in photographs() if p.suffix == ".jpg"]
    return jpegs[0].read_bytes()


def test_import_time_init_downloads_verifies_and_warms_up(handler_module, fp32_published):
    runtime = handler_module.RUNTIME
    assert runtime.model is not None, runtime.load_error
    assert runtime.model.sha256 == fp32_published.sha256
    report = runtime.init_report()
    assert report["cache_hit"] is False
    assert report["downloaded_bytes"] == (fp32_published.model_dir / "model.onnx").stat().st_size
    for phase in ("imports_ms", "download_ms", "session_ms", "warmup_ms"):
        assert report[phase] > 0, phase
    cached = runtime.config.cache_dir / f"{fp32_published.sha256}.onnx"
    assert sha256_of(cached) == fp32_published.sha256


def test_cold_start_downloads_once_then_never_calls_s3(
    make_runtime, fp32_published, invoke, jpeg_bytes
):
    s3 = CountingS3()
    runtime = make_runtime(fp32_published, s3=s3)
    assert s3.get_object_calls == 1
    for _ in range(3):
        assert invoke(predict_event(jpeg_bytes), runtime)["statusCode"] == 200
    assert invoke(predict_event(jpeg_bytes), runtime)["statusCode"] == 200
    assert s3.get_object_calls == 1
    assert s3.clients_created == 1


def test_new_environment_reuses_verified_cache_without_s3(make_runtime, fp32_published, tmp_path):
    cache = tmp_path / "shared-tmp"
    first = make_runtime(fp32_published, cache_dir=cache)
    assert first.model is not None
    s3 = CountingS3()
    second = make_runtime(fp32_published, cache_dir=cache, s3=s3)
    assert second.model is not None
    assert second.load_timings.cache_hit is True
    assert second.load_timings.verify_ms > 0
    assert s3.clients_created == 0
    assert s3.get_object_calls == 0


def test_cached_file_with_wrong_digest_is_replaced_not_served(
    make_runtime, fp32_published, tmp_path
):
    cache = tmp_path / "tampered"
    cache.mkdir()
    target = cache / f"{fp32_published.sha256}.onnx"
    # A complete, loadable model, but not the one MODEL_SHA256 names.
    other = fp32_published.model_dir / "model.onnx"
    data = bytearray(other.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    assert sha256_of(target) != fp32_published.sha256

    s3 = CountingS3()
    runtime = make_runtime(fp32_published, cache_dir=cache, s3=s3)
    assert runtime.model is not None, runtime.load_error
    assert s3.get_object_calls == 1
    assert runtime.load_timings.cache_hit is False
    assert sha256_of(target) == fp32_published.sha256
    assert sorted(p.name for p in cache.iterdir()) == [target.name]


def test_model_sha_mismatch_gets_503_then_next_request_retries(
    make_runtime, fp32_published, int8_published, invoke, jpeg_bytes, tmp_path
):
    # MODEL_SHA256 names the FP32 model, but the object at its key is another model.
    client = s3_client()
    key = f"retry/{fp32_published.sha256}/model.onnx"
    client.upload_file(str(int8_published.model_dir / "model.onnx"), fp32_published.bucket, key)
    published = type(fp32_published)(
        fp32_published.bucket, key, fp32_published.sha256, fp32_published.model_dir, {}
    )
    s3 = CountingS3()
    cache = tmp_path / "cache"
    runtime = make_runtime(published, s3=s3, cache_dir=cache)
    assert runtime.model is None
    assert fp32_published.sha256 in runtime.load_error

    response = invoke(predict_event(jpeg_bytes), runtime)
    assert response["statusCode"] == 503
    assert body_of(response)["error"]["code"] == "model_unavailable"
    assert response["headers"]["Retry-After"] == "5"
    assert s3.get_object_calls == 2  # INIT plus the retry this request made
    # Nothing a later start could trust was left behind.
    assert list(cache.iterdir()) == []

    client.upload_file(str(fp32_published.model_dir / "model.onnx"), published.bucket, key)
    response = invoke(predict_event(jpeg_bytes), runtime)
    assert response["statusCode"] == 200
    assert body_of(response)["model"]["sha256"] == fp32_published.sha256
    assert s3.get_object_calls == 3
    assert runtime.load_error is None


def test_missing_object_gets_503_and_health_reports_it(make_runtime, fp32_published, invoke):
    from handler_testkit import route_event

    published = type(fp32_published)(
        fp32_published.bucket,
        "models/absent/model.onnx",
        fp32_published.sha256,
        fp32_published.model_dir,
        {},
    )
    runtime = make_runtime(published)
    assert "Could not download" in runtime.load_error
    response = invoke(route_event("GET", "/health"), runtime)
    assert response["statusCode"] == 503
    error = body_of(response)["error"]
    assert error["code"] == "model_unavailable"
    # Operators read the reason in the logs; clients never see bucket names or digests.
    assert fp32_published.bucket not in error["message"]


class _BrokenBody:
    """Stands in for a connection that drops after the first chunk."""

    def __init__(self, inner):
        self.inner = inner

    def iter_chunks(self, size):
        chunks = self.inner.iter_chunks(size)
        yield next(chunks)
        from botocore.exceptions import ReadTimeoutError

        raise ReadTimeoutError(endpoint_url="s3")


def test_interrupted_download_leaves_nothing_to_trust(make_runtime, fp32_published, tmp_path):
    real = CountingS3()

    class DroppingClient:
        def __init__(self):
            self.client = real()

        def get_object(self, **kwargs):
            response = self.client.get_object(**kwargs)
            response["Body"] = _BrokenBody(response["Body"])
            return response

    cache = tmp_path / "cache"
    runtime = make_runtime(fp32_published, cache_dir=cache, s3=DroppingClient)
    assert runtime.model is None
    assert "Could not download" in runtime.load_error
    assert list(cache.iterdir()) == []

    runtime.s3_client_factory = real
    assert runtime.try_load() is True
    assert sha256_of(cache / f"{fp32_published.sha256}.onnx") == fp32_published.sha256


def test_partial_download_left_by_a_killed_process_is_removed(
    make_runtime, fp32_published, tmp_path
):
    cache = tmp_path / "cache"
    cache.mkdir()
    stale = cache / ".download-abc123.part"
    stale.write_bytes(b"half a model")
    runtime = make_runtime(fp32_published, cache_dir=cache)
    assert runtime.model is not None
    assert sorted(p.name for p in cache.iterdir()) == [f"{fp32_published.sha256}.onnx"]


def test_config_missing_variables_fail_fast_with_names():
    with pytest.raises(RuntimeError, match="MODEL_BUCKET, MODEL_SHA256"):
        Config.from_env({"MODEL_KEY": "models/x/model.onnx"})
    with pytest.raises(RuntimeError, match="64 hex"):
        Config.from_env({"MODEL_BUCKET": "b", "MODEL_KEY": "k", "MODEL_SHA256": "abc"})
    config = Config.from_env({"MODEL_BUCKET": "b", "MODEL_KEY": "k", "MODEL_SHA256": "A" * 64})
    assert config.sha256 == "a" * 64
    assert config.cache_dir == Path("/tmp/model-cache")


def test_import_without_configuration_fails_fast(tmp_path):
    import subprocess
    import sys

    lambda_src = Path(model_store.__file__).resolve().parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_")}
    result = subprocess.run(
        [sys.executable, "-c", "import handler"],
        cwd=lambda_src,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode != 0
    assert "Missing required environment variable(s): MODEL_BUCKET, MODEL_KEY, MODEL_SHA256" in (
        result.stderr
    )


@pytest.mark.parametrize(
    ("memory", "affinity", "expected"),
    [
        ("128", 2, 1),
        ("1769", 2, 1),
        ("1770", 4, 2),
        ("3008", 2, 2),
        ("10240", 64, 6),
        ("10240", 2, 2),
        (None, 3, 3),
    ],
)
def test_threads_follow_lambda_memory_not_host(monkeypatch, memory, affinity, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(affinity)))
    env = {"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": memory} if memory else {}
    assert model_store.lambda_vcpus(env) == expected


def test_session_uses_lambda_thread_count_and_full_optimization(shared_runtime):
    options = shared_runtime.model.session.get_session_options()
    assert options.intra_op_num_threads == shared_runtime.threads
    assert options.inter_op_num_threads == 1
    assert options.graph_optimization_level.name == "ORT_ENABLE_ALL"
    assert options.execution_mode.name == "ORT_SEQUENTIAL"


def test_labels_and_preprocessing_come_from_verified_model_metadata(shared_runtime, fp32_published):
    model = shared_runtime.model
    assert model.labels == fp32_published.manifest["labels"]
    assert model.name == fp32_published.manifest["model_name"]
    spec = fp32_published.manifest["preprocessing"]
    assert (model.preprocessing.resize, model.preprocessing.crop) == (spec["resize"], spec["crop"])
    assert list(model.preprocessing.mean) == spec["mean"]


def test_int8_model_serves_too(make_runtime, int8_published, invoke, jpeg_bytes):
    runtime = make_runtime(int8_published)
    assert runtime.model is not None, runtime.load_error
    assert runtime.model.metadata["quantization"] == "int8"
    body = body_of(invoke(predict_event(jpeg_bytes), runtime))
    assert (
        body["model"]["sha256"]
        == hashlib.sha256((int8_published.model_dir / "model.onnx").read_bytes()).hexdigest()
    )


def test_cpu_features_parsed_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu sse avx2 avx512f "
        "avx512_vnni\n\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu avx2\n"
    )
    assert model_store.cpu_features(cpuinfo) == {
        "model": "Intel(R) Xeon(R)",
        "flags": ["avx2", "avx512f", "avx512_vnni"],
    }
    graviton = tmp_path / "graviton"
    graviton.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp sve\nCPU part\t: 0xd40\n")
    assert model_store.cpu_features(graviton) == {"model": "0xd40", "flags": ["asimddp", "sve"]}


# /proc/cpuinfo "Features" lines as the Linux kernel prints them on each Graviton generation.
GRAVITON_FEATURES = {
    "graviton2": (
        "0xd0c",
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc "
        "dcpop asimddp ssbs",
        ["asimddp"],
    ),
    "graviton3": (
        "0xd40",
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma "
        "lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca "
        "pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng",
        ["asimddp", "i8mm", "bf16", "sve"],
    ),
    "graviton4": (
        "0xd4f",
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma "
        "lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca "
        "pacg dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svebf16 "
        "i8mm bf16 dgh rng bti",
        ["asimddp", "i8mm", "bf16", "sve", "sve2"],
    ),
}


@pytest.mark.parametrize("generation", sorted(GRAVITON_FEATURES))
def test_cpu_features_tell_graviton_generations_apart(tmp_path, generation):
    part, features, expected = GRAVITON_FEATURES[generation]
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "".join(
            f"processor\t: {n}\nBogoMIPS\t: 2100.00\nFeatures\t: {features}\n"
            f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: {part}\n\n"
            for n in range(2)
        )
    )
    # svei8mm / svebf16 are distinct flags: only the exact names count.
    assert model_store.cpu_features(cpuinfo) == {"model": part, "flags": expected}
