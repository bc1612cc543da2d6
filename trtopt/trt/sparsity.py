"""Proof of NVIDIA's 2:4 pattern in an exported ONNX model: what TensorRT's ``SPARSE_WEIGHTS`` accelerates.

:func:`check_2to4` reads every Conv/Gemm/MatMul weight initializer and checks that each group of 4
consecutive weights along the input dimension (for a conv: the input channels at each kernel position, as
NVIDIA's ASP groups them) has at most 2 nonzeros. Pure ONNX + numpy: no torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from trtopt.errors import TrtoptError


@dataclass
class TwoFourCheck:
    """Result of :func:`check_2to4`.

    Attributes:
        ok: every checked layer has at most 2 nonzeros in every group of 4 along its input dimension
            (and at least one layer was checked).
        layers: per Conv/Gemm/MatMul with a constant weight: node, op, weight name, shape, input axis,
            groups, groups with more than 2 nonzeros, ok.
        skipped: weight layers whose input dimension is not a multiple of 4 (cannot be 2:4), with reason.
    """

    ok: bool
    layers: list[dict[str, Any]]
    skipped: list[dict[str, Any]]

    @property
    def violating(self) -> list[str]:
        """Names of the nodes whose weights break the 2:4 pattern."""
        return [r["node"] for r in self.layers if not r["ok"]]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "violating": self.violating, "layers": self.layers, "skipped": self.skipped}

def check_2to4(onnx_path: str | os.PathLike) -> TwoFourCheck:
    """Prove the 2:4 pattern on the weights an exported ONNX model really carries.

    For every Conv, Gemm and MatMul whose weight is a constant (an initializer, a Constant node, or a
    DequantizeLinear of one), the weight is split into groups of 4 consecutive elements along its input
    dimension (Conv ``W[O, C/g, k...]``: C at each kernel position; Gemm ``B``: K, i.e. axis 1 with
    transB=1, else axis 0; MatMul ``B[..., K, N]``: axis -2) and each group must hold at most 2 nonzeros.

    Returns:
        A :class:`TwoFourCheck` naming every violating layer; layers whose input dimension is not a
        multiple of 4 are listed in ``skipped``.

    Raises:
        TrtoptError: the file is missing or not an ONNX model.
    """
    import onnx
    from onnx import numpy_helper

    from trtopt.artifacts import inspect_onnx

    path = inspect_onnx(onnx_path).path  # missing, not ONNX, empty or cut off: one error naming the file
    try:
        model = onnx.load(str(path), load_external_data=True)
    except Exception as e:
        raise TrtoptError(f"{path} is not a readable ONNX model ({type(e).__name__})", "give an .onnx file written by trtopt export") from e
    graph = model.graph
    constants: dict[str, Any] = {t.name: t for t in graph.initializer}
    producers: dict[str, Any] = {}
    for node in graph.node:
        for out in node.output:
            producers[out] = node
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    constants[node.output[0]] = attr.t

    def constant(name: str) -> np.ndarray | None:
        if name in constants:
            return numpy_helper.to_array(constants[name])
        node = producers.get(name)
        if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in constants:
            return numpy_helper.to_array(constants[node.input[0]])
        return None

    layers, skipped = [], []
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        weight = constant(node.input[1])
        if weight is None or weight.ndim < 2:
            continue
        if node.op_type == "Conv":
            axis = 1
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axis = 1 if trans_b else 0
        else:
            axis = weight.ndim - 2
        name = node.name or node.output[0]
        size = weight.shape[axis]
        if size % 4:
            skipped.append({"node": name, "op": node.op_type, "weight": node.input[1], "shape": list(weight.shape),
                            "reason": f"input dimension {size} is not a multiple of 4"})
            continue
        groups = (np.moveaxis(weight, axis, -1).reshape(-1, 4) != 0).sum(axis=1)
        bad = int((groups > 2).sum())
        layers.append({"node": name, "op": node.op_type, "weight": node.input[1], "shape": list(weight.shape),
                       "input_axis": axis, "groups": int(groups.size), "groups_over_2_nonzero": bad, "ok": bad == 0})
    return TwoFourCheck(bool(layers) and all(r["ok"] for r in layers), layers, skipped)
