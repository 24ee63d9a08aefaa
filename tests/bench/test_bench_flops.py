"""MAC counting from the ONNX graph, against independent figures.

torchvision publishes ResNet18's cost in its weights metadata (``_ops``, in GFLOPS as torchvision
counts them, i.e. multiply-accumulates) without any download; tiny hand-built graphs check the
per-op arithmetic, grouped convolutions and a transposed Gemm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench.models import count_macs


def test_resnet18_macs_match_torchvision_published_figure(fp32_model_dir: Path) -> None:
    from torchvision.models import ResNet18_Weights

    published_gmacs = ResNet18_Weights.IMAGENET1K_V1.meta["_ops"]  # 1.814
    counted = count_macs(fp32_model_dir / "model.onnx")
    assert counted["gmacs"] == pytest.approx(published_gmacs, rel=0.002)
    assert counted["gflops"] == pytest.approx(2 * counted["gmacs"])
    # The classifier: 512 features x 1000 classes.
    assert counted["by_op"]["Gemm"] == 512 * 1000


def test_int8_graph_counts_the_same_work(fp32_model_dir: Path, int8_model_dir: Path) -> None:
    # QDQ keeps Conv/Gemm nodes (with DequantizeLinear inputs): same arithmetic, cheaper units.
    assert (
        count_macs(int8_model_dir / "model.onnx")["macs"]
        == count_macs(fp32_model_dir / "model.onnx")["macs"]
    )


def _save(tmp_path: Path, nodes: list, inits: list, inputs: list, output: str) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def test_hand_counted_conv_grouped_conv_and_gemm(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 10, 10])
    w1 = numpy_helper.from_array(np.zeros((8, 4, 3, 3), np.float32), "w1")
    # groups=2: each output channel sees 8/2 = 4 input channels.
    w2 = numpy_helper.from_array(np.zeros((6, 4, 1, 1), np.float32), "w2")
    wf = numpy_helper.from_array(np.zeros((5, 6 * 5 * 5), np.float32), "wf")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),  # 8 x 10 x 10 out
        helper.make_node("Conv", ["c1", "w2"], ["c2"], group=2, strides=[2, 2]),  # 6 x 5 x 5
        helper.make_node("Flatten", ["c2"], ["f"]),
        helper.make_node("Gemm", ["f", "wf"], ["y"], transB=1),
    ]
    counted = count_macs(_save(tmp_path, nodes, [w1, w2, wf], [x], "y"))
    conv1 = (8 * 10 * 10) * (4 * 3 * 3)  # 28,800
    conv2 = (6 * 5 * 5) * (4 * 1 * 1)  # 600
    gemm = 1 * 5 * 150  # 750
    assert counted["by_op"] == {"Conv": conv1 + conv2, "Gemm": gemm}
    assert counted["macs"] == 30_150
