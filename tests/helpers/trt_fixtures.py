"""Tiny seeded ONNX graphs for the TensorRT plan tests: FP32, FP16-by-casts and Q/DQ INT8 variants.

Each is a Conv (+ Relu) on input "input" of shape (batch, 3, 8, 8), batch symbolic unless ``static``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def conv_model(path: Path, kind: str = "fp32", static: bool = False, input_name: str = "input") -> Path:
    """Write a tiny model: kind "fp32", "fp16" (float16 weights behind Cast nodes) or "int8" (Q/DQ)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    batch = 2 if static else "batch"
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    nodes = []
    inits = []
    x = input_name
    if kind == "fp16":
        inits += [numpy_helper.from_array(weight.astype(np.float16), "w"), numpy_helper.from_array(bias.astype(np.float16), "b")]
        nodes.append(helper.make_node("Cast", [x], ["x16"], to=TensorProto.FLOAT16))
        nodes.append(helper.make_node("Conv", ["x16", "w", "b"], ["y16"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", ["y16"], ["r16"]))
        nodes.append(helper.make_node("Cast", ["r16"], ["output"], to=TensorProto.FLOAT))
    else:
        inits += [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")]
        conv_in, w = x, "w"
        if kind == "int8":
            inits += [numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
                      numpy_helper.from_array(np.array(0, np.int8), "xz"),
                      numpy_helper.from_array(np.full(4, 0.02, np.float32), "ws"),
                      numpy_helper.from_array(np.zeros(4, np.int8), "wz")]
            nodes += [helper.make_node("QuantizeLinear", [x, "xs", "xz"], ["xq"]),
                      helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xdq"]),
                      helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], axis=0),
                      helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wdq"], axis=0)]
            conv_in, w = "xdq", "wdq"
        nodes.append(helper.make_node("Conv", [conv_in, w, "b"], ["y"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", ["y"], ["output"]))
    graph = helper.make_graph(nodes, f"conv_{kind}",
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="trtopt-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path
