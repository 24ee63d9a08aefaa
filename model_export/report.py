"""The human-readable verification report printed after every export."""

from __future__ import annotations

from typing import Any


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _shape(shape: list[int | str]) -> str:
    return "[" + ", ".join(str(dim) for dim in shape) + "]"


def format_report(manifest: dict[str, Any], model_path: str) -> str:
    weights = manifest["weights"]
    verification = manifest["verification"]
    lines = ["ResNet18 export report"]
    if weights["trained"]:
        source = weights["source"]
        if weights.get("checkpoint"):
            source += f" {weights['checkpoint']} (sha256 {weights['checkpoint_sha256'][:12]}...)"
        lines.append(f"  weights      {source}")
    else:
        lines.append(
            f"  weights      {weights['source']} (seed {weights['seed']}): UNTRAINED MODEL, "
            "its predictions are meaningless"
        )
    lines += [
        f"  file         {model_path}  {manifest['size_bytes']} bytes "
        f"({_mb(manifest['size_bytes'])})",
        f"  sha256       {manifest['sha256']}",
        f"  graph        opset {manifest['opset']}; {manifest['input']['name']} "
        f"{manifest['input']['dtype']} {_shape(manifest['input']['shape'])} -> "
        f"{manifest['output']['name']} {_shape(manifest['output']['shape'])}",
        f"  classes      {manifest['num_classes']} ({', '.join(manifest['labels'][:3])}, ...)",
        f"  quantization {manifest['quantization']['mode']}",
    ]
    fp32 = verification["fp32_vs_pytorch"]
    agree = sum(row["top1_match"] for row in fp32["per_image"])
    lines += [
        "",
        f"FP32 verification: ONNX Runtime vs PyTorch eager on {fp32['num_images']} real "
        f"photographs: {'PASSED' if fp32['passed'] else 'FAILED'}",
        f"  max abs logit diff  {fp32['max_abs_logit_diff']:.2e} "
        f"(limit {fp32['tolerance_max_abs_logit_diff']:.0e})",
        f"  top-1 agreement     {agree}/{fp32['num_images']} (required: all)",
        f"  top-5 overlap       mean {fp32['top5_overlap_mean']:.2f}, "
        f"min {fp32['top5_overlap_min']:.2f}",
        f"  batch of 1 vs batch {fp32['batch_of_one_max_abs_diff']:.2e} max abs diff",
        f"  {'image':<24}{'PyTorch top-1':<30}{'ONNX top-1':<30}max diff",
    ]
    for row in fp32["per_image"]:
        lines.append(
            f"  {row['image']:<24}{row['reference_top1'][:28]:<30}"
            f"{row['candidate_top1'][:28]:<30}{row['max_abs_logit_diff']:.1e}"
        )
    int8 = verification.get("int8_vs_fp32")
    if int8:
        agree8 = sum(row["top1_match"] for row in int8["per_image"])
        latency = int8["latency_batch1_median_ms"]
        lines += [
            "",
            f"INT8: ONNX Runtime INT8 vs FP32 on {int8['num_images']} real photographs",
            f"  calibration         {int8['calibration']}",
            f"  top-1 agreement     {agree8}/{int8['num_images']}",
            f"  top-5 overlap       mean {int8['top5_overlap_mean']:.2f}, "
            f"min {int8['top5_overlap_min']:.2f}",
            f"  logit cosine        mean {int8['logit_cosine_mean']:.4f}, "
            f"min {int8['logit_cosine_min']:.4f}",
            f"  max abs logit diff  {int8['max_abs_logit_diff']:.3f}",
            f"  size                {_mb(int8['int8_size_bytes'])} vs "
            f"{_mb(int8['fp32_size_bytes'])} FP32 ({int8['size_ratio']:.2f}x)",
            f"  speed-up            {int8['speedup']:.2f}x (INT8 {latency['int8']:.1f} ms vs "
            f"FP32 {latency['fp32']:.1f} ms; {int8['timing']})",
        ]
    if manifest.get("notes"):
        lines.append("")
    for note in manifest["notes"]:
        lines.append(f"NOTE: {note}")
    return "\n".join(lines)
