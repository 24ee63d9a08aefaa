"""What one request can cost: the costliest inputs the limits admit, and hostile ones they refuse.

    .venv/bin/python -m scripts.bench_limits [--lambda-src DIR] [--repeats 3] [--json OUT]

Each case runs in a fresh interpreter that first warms up with a tiny image of the same format,
then times ``preprocess.preprocess`` (or, for JSON, ``api.parse_predict``) in CPU seconds and
reports how far its peak resident set (VmHWM, reset through /proc/self/clear_refs; Linux) rose
above where it stood just before. Ratios are to a
typical 1280x960 JPEG measured in the same run; the numbers only compare cases on this shared
machine. ``--lambda-src`` points at another copy of the function's modules (e.g. an older
commit's, exported with ``git archive``) to measure the same inputs against it. docs/inference.md
("Limits") quotes a run.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAMBDA_SRC = ROOT / "lambda_src"
# Virtual memory cap for every probe: an old or broken build fails with MemoryError instead of
# taking the shared machine's RAM.
PROBE_ADDRESS_SPACE = 4 << 30

_PROBE = """
import json, os, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[4]), int(sys.argv[4])))
sys.path.insert(0, sys.argv[1])
import api, preprocess
from errors import ApiError
kind, payload, warmup = sys.argv[2], open(sys.argv[3], "rb").read(), open(sys.argv[5], "rb").read()
def run(data):
    if kind == "json":
        event = {"httpMethod": "POST", "path": "/predict", "isBase64Encoded": False,
                 "headers": {"Content-Type": "application/json"}, "body": data.decode()}
        return api.parse_predict(event)
    return preprocess.preprocess(data)
def status_kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))
try:
    run(warmup)
except ApiError:
    pass
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # VmHWM := VmRSS (ru_maxrss would start at the parent's size)
before = status_kib("VmRSS")
started = time.process_time()
try:
    run(payload)
    outcome = "200"
except ApiError as error:
    outcome = f"{error.status} {error.code}"
except Exception as error:
    outcome = f"500 {type(error).__name__}"
cpu = time.process_time() - started
grown = status_kib("VmHWM") - before
print(json.dumps({"outcome": outcome, "cpu_s": cpu, "peak_growth_mib": grown / 1024}))
"""


def _encode(img, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **params)
    return out.getvalue()


def _typical_jpeg() -> bytes:
    from PIL import Image

    from model_export.photos import photographs

    photo = next(p for p in photographs() if p.name == "grace_hopper.jpg")
    return _encode(Image.open(photo).convert("RGB").resize((1280, 960)), "JPEG", quality=85)


def _with_scans(jpeg: bytes, total: int) -> bytes:
    """Repeat the last scan of a (libjpeg-written) progressive JPEG until it has ``total``."""
    starts, at = [], jpeg.find(b"\xff\xda")
    while at != -1:
        starts.append(at)
        at = jpeg.find(b"\xff\xda", at + 2)
    last = jpeg[starts[-1] : -2]
    return jpeg[:-2] + last * (total - len(starts)) + b"\xff\xd9"


def _flat(mode: str, size: tuple[int, int]):
    from PIL import Image

    gradient = Image.linear_gradient("L").resize(size)
    return gradient.convert(mode) if mode != "L" else gradient


def _png_chunks(count: int) -> bytes:
    from PIL import Image

    base = _encode(Image.new("RGB", (64, 48)), "PNG")
    chunk = b"\x00\x00\x00\x00unKn" + zlib.crc32(b"unKn").to_bytes(4, "big")
    return base[:33] + chunk * count + base[33:]


def cases() -> list[tuple[str, str, Callable[[], bytes]]]:
    """(name, kind, build): kind "image" runs preprocess, "json" runs api.parse_predict."""
    from PIL import Image

    forty_mp = (7744, 5164)  # 39.99 MP, 3:2: just under the limit
    return [
        ("reference: 1280x960 JPEG photo", "image", _typical_jpeg),
        ("limit: 40 MP PNG, RGBA", "image", lambda: _encode(_flat("RGBA", forty_mp), "PNG")),
        ("limit: 40 MP JPEG, baseline", "image", lambda: _encode(_flat("RGB", forty_mp), "JPEG")),
        (
            "limit: 40 MP JPEG, progressive, 32 scans",
            "image",
            lambda: _with_scans(_encode(_flat("RGB", forty_mp), "JPEG", progressive=True), 32),
        ),
        (
            "limit: 40 MP CMYK JPEG, progressive, 32 scans",
            "image",
            lambda: _with_scans(_encode(_flat("CMYK", forty_mp), "JPEG", progressive=True), 32),
        ),
        (
            "limit: 32:1 PNG at 40 MP (1118x35776)",
            "image",
            lambda: _encode(_flat("RGB", (1118, 35776)), "PNG"),
        ),
        (
            "hostile: 1x3000 PNG (95 B)",
            "image",
            lambda: _encode(Image.new("L", (1, 3000)), "PNG", optimize=True),
        ),
        (
            "hostile: 16383x1 WebP",
            "image",
            lambda: _encode(Image.new("RGB", (16383, 1)), "WEBP", lossless=True),
        ),
        (
            "hostile: 4 MP JPEG, 1000 scans (40 kB)",
            "image",
            lambda: _with_scans(
                _encode(Image.new("RGB", (2048, 2048), 120), "JPEG", progressive=True), 1000
            ),
        ),
        (
            "hostile: JPEG, 1M empty COM segments",
            "image",
            lambda: (
                (b := _encode(Image.new("RGB", (64, 48)), "JPEG"))[:2]
                + b"\xff\xfe\x00\x02" * 1_000_000
                + b[2:]
            ),
        ),
        ("hostile: PNG, 400k empty chunks", "image", lambda: _png_chunks(400_000)),
        (
            "hostile: EPS, 1M comment lines",
            "image",
            lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n" + b"%%X\n" * 1_000_000,
        ),
        ("hostile: JSON, 2M empty objects", "json", lambda: b"[" + b"{}," * 2_000_000 + b"{}]"),
        ("hostile: JSON, 100k nested arrays", "json", lambda: b"[" * 100_000),
    ]


def _warmup(kind: str, data: bytes) -> bytes:
    from PIL import Image

    if kind == "json":
        return b'{"top_k": 1, "image": "aGk="}'
    fmt = "JPEG" if data[:3] == b"\xff\xd8\xff" else "WEBP" if data[:4] == b"RIFF" else "PNG"
    return _encode(Image.new("RGB", (8, 8)), fmt)


def measure(lambda_src: Path, kind: str, data: bytes, repeats: int) -> dict:
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        payload, warmup = Path(tmp) / "payload", Path(tmp) / "warmup"
        payload.write_bytes(data)
        warmup.write_bytes(_warmup(kind, data))
        args = [str(lambda_src), kind, str(payload), str(PROBE_ADDRESS_SPACE), str(warmup)]
        for _ in range(repeats):
            done = subprocess.run(  # noqa: S603 - fixed argv, no shell
                [sys.executable, "-c", _PROBE, *args],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
                env={"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PATH": ""},
            )
            if done.returncode != 0:
                tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
                runs.append(
                    {"outcome": f"crash ({tail})", "cpu_s": float("nan"), "peak_growth_mib": 0}
                )
            else:
                runs.append(json.loads(done.stdout))
    return {
        "outcome": runs[0]["outcome"],
        "cpu_s": min(r["cpu_s"] for r in runs),
        "peak_growth_mib": max(r["peak_growth_mib"] for r in runs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lambda-src", type=Path, default=LAMBDA_SRC)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if not (args.lambda_src / "preprocess.py").is_file():
        print(f"bench_limits: no preprocess.py in {args.lambda_src}", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print("bench_limits: --repeats must be at least 1", file=sys.stderr)
        return 2

    rows = []
    for name, kind, build in cases():
        data = build()
        rows.append(
            {"case": name, "bytes": len(data), **measure(args.lambda_src, kind, data, args.repeats)}
        )
        print(f"  measured {name}", file=sys.stderr)
    reference = rows[0]["cpu_s"]
    print("| Case | Bytes | Answer | CPU s | x reference | Peak RSS growth MiB |")
    print("|---|---:|---|---:|---:|---:|")
    for row in rows:
        ratio = row["cpu_s"] / reference if reference > 0 else float("nan")
        print(
            f"| {row['case']} | {row['bytes']:,} | {row['outcome']} | {row['cpu_s']:.3f} "
            f"| {ratio:.1f} | {row['peak_growth_mib']:.0f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
