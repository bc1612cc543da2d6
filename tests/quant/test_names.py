"""trtopt.quant.names: node, tensor and PyTorch module names of a layer, on a handmade ONNX graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtopt.errors import TrtoptError
from trtopt.quant.names import node_modules, resolve_layer_names


@pytest.fixture(scope="module")
def model():
    """x → Conv (layer1.0.conv, exporter names) → Relu → Conv (layer2.conv) → Add(with the relu) → y."""
    w = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "layer1.0.conv.weight")
    b = numpy_helper.from_array(np.zeros(2, np.float32), "layer1.0.conv.weight_bias")  # a folded batch norm
    w2 = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "layer2.conv.weight")
    nodes = [helper.make_node("Conv", ["x", "layer1.0.conv.weight", "layer1.0.conv.weight_bias"], ["getitem"], "node_Conv_1"),
             helper.make_node("Relu", ["getitem"], ["relu"], "node_relu"),
             helper.make_node("Conv", ["relu", "layer2.conv.weight"], ["getitem_3"], "node_Conv_2"),
             helper.make_node("Add", ["getitem_3", "relu"], ["y"], "node_add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], [w, b, w2])
    return helper.make_model(graph)


def test_node_modules_label_every_node_with_the_layer_it_belongs_to(model):
    assert node_modules(model) == {"node_Conv_1": "layer1.0.conv", "node_relu": "layer1.0.conv",
                                   "node_Conv_2": "layer2.conv", "node_add": "layer2.conv"}


def test_exclude_names_resolve_from_node_tensor_and_module(model):
    found = resolve_layer_names(model, ["node_relu", "getitem_3", "layer1.0.conv", "layer1"])
    assert found == {"node_relu": ("node", ["node_relu"]), "getitem_3": ("tensor", ["node_Conv_2"]),
                     "layer1.0.conv": ("module", ["node_Conv_1"]), "layer1": ("module", ["node_Conv_1"])}


def test_unknown_exclude_name_is_one_error_with_the_fix(model):
    with pytest.raises(TrtoptError, match="'layer9'.*no node, tensor or PyTorch module.*module path"):
        resolve_layer_names(model, ["layer9"], "m.onnx")
    with pytest.raises(TrtoptError):  # a prefix of a module name is not a parent module
        resolve_layer_names(model, ["layer1.0.co"])
    onnx.checker.check_model(model)
