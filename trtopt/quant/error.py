"""Quantization error, measured where it arises: per weight, per activation, per output.

- Weights: for every weight a Q/DQ model dequantizes, |w − dequant(quant(w))| against the FP32 model's
  weight (mean, max, p99, and relative to max |w|), with the scales the quantizer actually chose.
- Activations: the SQNR (dB) of each GEMM-like layer's output in the Q/DQ model against the FP32 model
  on real inputs, accumulated while streaming batches (bounded memory): 10·log10(Σref² / Σ(ref − q)²).
  Errors compound through the network, so deeper layers show lower SQNR; a sharp drop marks a layer
  that quantizes badly.
- Outputs: the usual comparison (`trtopt.measure.compare`) of the final outputs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trtopt import metrics
from trtopt.backends.ort import OrtConfig
from trtopt.data import iter_batches
from trtopt.feeds import Feed
from trtopt.files import temp_dir

GEMM_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _initializers(model: Any) -> dict[str, Any]:
    return {t.name: t for t in model.graph.initializer}


def weight_errors(fp32_path: str | os.PathLike, qdq_path: str | os.PathLike) -> list[dict[str, Any]]:
    """Per quantized weight of GEMM-like nodes: the error of dequant(quant(w)) against the FP32 weight.

    Nodes are matched by name (the quantizer keeps node names); a weight counts as quantized when its
    input in the Q/DQ model comes from a DequantizeLinear whose input is an int8/uint8 initializer.
    Returns one dict per weight: node, op_type, weight, shape, per_channel, mean/max/p99 absolute error
    and max relative to max |w|.
    """
    import onnx
    from onnx import numpy_helper

    fp32 = onnx.load(str(fp32_path))
    qdq = onnx.load(str(qdq_path))
    fp32_nodes = {n.name: n for n in fp32.graph.node}
    fp32_inits = _initializers(fp32)
    q_inits = _initializers(qdq)
    producers = {o: n for n in qdq.graph.node for o in n.output}
    rows = []
    for node in qdq.graph.node:
        if node.op_type not in GEMM_OPS or node.name not in fp32_nodes:
            continue
        for i, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in q_inits:
                continue
            original_name = fp32_nodes[node.name].input[i]
            if original_name not in fp32_inits:
                continue
            w = numpy_helper.to_array(fp32_inits[original_name]).astype(np.float64)
            deq = _dequantize(dq, q_inits)
            errors = metrics.quantization_error(w, deq)
            summary = metrics.error_summary(errors)
            scale = numpy_helper.to_array(q_inits[dq.input[1]])
            rows.append({"node": node.name, "op_type": node.op_type, "weight": original_name, "shape": list(w.shape),
                         "per_channel": bool(scale.size > 1), "abs_error_mean": summary["mean"],
                         "abs_error_max": summary["max"], "abs_error_p99": summary["p99"],
                         "rel_error_max": summary["max"] / max(float(np.abs(w).max()), 1e-12)})
    return rows


def _dequantize(dq: Any, inits: dict[str, Any]) -> np.ndarray:
    """(q − zero_point) · scale with the node's axis for per-channel scales, in float64."""
    from onnx import numpy_helper

    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
    zp = numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64) if len(dq.input) > 2 and dq.input[2] else 0.0
    if np.ndim(scale) == 1 and scale.size > 1:
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        shape[axis] = scale.size
        scale = scale.reshape(shape)
        zp = np.reshape(zp, shape) if np.ndim(zp) else zp
    return (q - zp) * scale


def _gemm_activations(model: Any) -> list[str]:
    """Output of each GEMM-like node, or of the Relu/Clip right after it.

    ONNX Runtime's quantizer folds a Relu/Clip that follows a quantized op into the uint8 range, so the
    pre-activation value no longer exists in the Q/DQ graph; the post-activation value exists in both.
    """
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    names = []
    for node in model.graph.node:
        if node.op_type in GEMM_OPS:
            out = node.output[0]
            after = consumers.get(out, [])
            names.append(out)
            if len(after) == 1 and after[0].op_type in ("Relu", "Clip"):
                names.append(after[0].output[0])
    return names


def _qdq_name(name: str, q_values: set[str]) -> str | None:
    """The Q/DQ graph's version of a FP32 value, as its consumers see it, or None.

    A quantized value is read after its DequantizeLinear (``<name>_DequantizeLinear_Output``: rounded and
    clipped, which is also where a folded Relu takes effect); an unquantized one under its own name; a
    quantized graph output's producer writes ``<name>_QuantizeLinear_Input``.
    """
    for candidate in (f"{name}_DequantizeLinear_Output", name, f"{name}_QuantizeLinear_Input"):
        if candidate in q_values:
            return candidate
    return None


def activation_sqnr(fp32_path: str | os.PathLike, qdq_path: str | os.PathLike, feed: Feed,
                    qdq_ort: OrtConfig | None = None, batch_size: int = 16,
                    tensors: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """SQNR (dB) of each GEMM-like layer's output, Q/DQ model vs FP32 model, over every sample of ``feed``.

    Args:
        fp32_path / qdq_path: the two models (the Q/DQ one made from the FP32 one by `trtopt.quant.quantize`).
        feed: real inputs, all samples on axis 0.
        qdq_ort: ONNX Runtime settings for the Q/DQ model (see `trtopt.quant.quantize.evaluation_config`).
        batch_size: samples per run (memory is bounded by one batch of activations).
        tensors: which tensors; default the outputs of Conv/MatMul/Gemm (or of the Relu/Clip fused
            after them) that exist in both graphs.

    Returns one dict per tensor in graph order: tensor, node, op_type, sqnr_db (inf when exact),
    max_abs_error, ref_rms.
    """
    import onnx

    from trtopt.backends.ort import OrtRunner
    from trtopt.quant.calibrate import write_with_outputs

    fp32 = onnx.load(str(fp32_path), load_external_data=False)
    qdq = onnx.load(str(qdq_path), load_external_data=False)
    q_values = {o for n in qdq.graph.node for o in n.output}
    node_of = {o: n for n in fp32.graph.node for o in n.output}
    wanted = tensors if tensors is not None else _gemm_activations(fp32)
    # (fp32 name, name of the same value in the Q/DQ graph, producing node)
    owners = [(t, _qdq_name(t, q_values), node_of[t]) for t in wanted if t in node_of and _qdq_name(t, q_values)]
    if not owners:
        return []
    names = [t for t, _, _ in owners]
    q_names = [q for _, q, _ in owners]
    signal = dict.fromkeys(names, 0.0)
    noise = dict.fromkeys(names, 0.0)
    worst = dict.fromkeys(names, 0.0)
    count = dict.fromkeys(names, 0)
    with temp_dir("sqnr") as tmp:
        ref_dir, q_dir = Path(tmp, "fp32"), Path(tmp, "qdq")
        ref_dir.mkdir()
        q_dir.mkdir()
        with OrtRunner(write_with_outputs(fp32, Path(fp32_path), names, ref_dir), OrtConfig()) as ref_runner, \
                OrtRunner(write_with_outputs(qdq, Path(qdq_path), q_names, q_dir), qdq_ort or OrtConfig()) as q_runner:
            for batch in iter_batches(feed, batch_size):
                ref = ref_runner.infer(batch)
                got = q_runner.infer(batch)
                for name, q_name in zip(names, q_names):
                    r = ref[name].astype(np.float64)
                    e = r - got[q_name].astype(np.float64)
                    signal[name] += float(np.sum(r * r))
                    noise[name] += float(np.sum(e * e))
                    worst[name] = max(worst[name], float(np.abs(e).max()))
                    count[name] += r.size
    rows = []
    for name, _, node in owners:
        sqnr = math.inf if noise[name] == 0 else 10 * math.log10(max(signal[name], 1e-300) / noise[name])
        rows.append({"tensor": name, "node": node.name, "op_type": node.op_type, "sqnr_db": sqnr,
                     "max_abs_error": worst[name], "ref_rms": math.sqrt(signal[name] / max(count[name], 1))})
    return rows
