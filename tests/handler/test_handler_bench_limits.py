"""scripts/bench_limits.py: its probe measures the request itself, and bad input is one line."""

from __future__ import annotations

from hostile_inputs import encode, sliver_png
from PIL import Image

from scripts import bench_limits


def test_probe_sees_a_decode_and_not_a_refusal():
    photo = encode(Image.effect_noise((1200, 900), 64).convert("RGB"), "JPEG", quality=90)
    decoded = bench_limits.measure(bench_limits.LAMBDA_SRC, "image", photo, repeats=1)
    refused = bench_limits.measure(bench_limits.LAMBDA_SRC, "image", sliver_png(3000), 1)
    assert decoded["outcome"] == "200"
    assert refused["outcome"] == "422 extreme_aspect_ratio"
    # The peak is the request's own (VmHWM reset in the child), not pytest's inherited size.
    assert decoded["peak_growth_mib"] > 2
    assert refused["peak_growth_mib"] < decoded["peak_growth_mib"] / 4


def test_repeated_scans_helper_builds_the_requested_count():
    jpeg = encode(Image.new("RGB", (64, 64), 90), "JPEG", progressive=True)
    assert bench_limits._with_scans(jpeg, 40).count(b"\xff\xda") == 40


def test_bad_lambda_src_is_one_line_and_exit_2(tmp_path, capsys):
    assert bench_limits.main(["--lambda-src", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"bench_limits: no preprocess.py in {tmp_path}"
