"""Accuracy recovery before INT8, as rewrites of the FP32 ONNX graph: activation smoothing and bias correction.

- **Smoothing** (Xiao et al. 2023, "SmoothQuant", eq. 4): a GEMM input X whose channels differ wildly in
  range (transformers: a few outlier channels set the per-tensor INT8 range and every other channel
  gets a handful of codes) is divided per channel by ``s_j = max|X_j|^α / max|W_j|^(1−α)`` (α = 0.5)
  and the weight rows multiplied by it: ``X·W = (X/s)·(diag(s)·W)`` exactly in FP32. Here X/s is a Mul
  node inserted in front of the GEMMs that read X (other readers, such as a residual Add, keep X), so
  it works for post-LN and pre-LN blocks alike; the weights absorb ``s`` offline.
- **Bias correction** (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias
  Correction", §4.2, with measured means): INT8 weights shift every output channel's mean by
  ``(W_q − W)·E[x]``; subtracting that from the bias removes the shift. It matters most where weights
  are coarse relative to their channel (depthwise convolutions, per-tensor weights). ``E[x]`` per input
  channel comes from calibration (:class:`~trtopt.quant.histogram.ChannelStatistics`).

Cross-layer equalization (the same paper, §4.1) is not offered: it equalizes per-channel *weight*
ranges for per-tensor weights, and trtopt's weights are per-channel by default; and the depthwise-
separable CNNs it targets (MobileNetV2, EfficientNet-Lite) put ReLU6 between the layers, through which a
per-channel scale cannot be moved without changing the clip.

Method ``auto`` scores each rewrite on held-out samples and keeps it only when it raises output SQNR
(`trtopt.quant.range_choice`); ``quantize`` then applies what the ranges record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

SMOOTH_ALPHA = 0.5  # SmoothQuant's migration strength: half of the range moves into the weights
OUTLIER_RATIO = 8.0  # a GEMM input is smoothed when its largest channel range is >= 8x the median one
_SCALE_LIMITS = (1e-4, 1e4)


def _attr(node: Any, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _float_attr(node: Any, name: str) -> float:
    return next((a.f for a in node.attribute if a.name == name), 1.0)


def recoverable_inputs(model: Any) -> dict[str, int]:
    """Activation inputs of GEMM-like nodes with a constant weight, and their channel axis.

    Conv/ConvTranspose: input 0, channel axis 1. MatMul: input 0 when input 1 is an initializer, axis −1.
    Gemm: input 0 when input 1 is an initializer, axis 1 (0 with ``transA``).
    """
    inits = {t.name for t in model.graph.initializer}
    found: dict[str, int] = {}
    for node in model.graph.node:
        if len(node.input) < 2 or node.input[1] not in inits or node.input[0] in inits:
            continue
        if node.op_type in ("Conv", "ConvTranspose"):
            found[node.input[0]] = 1
        elif node.op_type == "MatMul":
            found[node.input[0]] = -1
        elif node.op_type == "Gemm":
            found[node.input[0]] = 0 if _attr(node, "transA", 0) else 1
    return found


def weight_roundtrip(w: np.ndarray, axis: int | None, bits: int = 8) -> np.ndarray:
    """Symmetric INT8 round trip of a weight as ONNX Runtime's quantizer makes it (per channel along ``axis``).

    ``bits`` 8: codes in [−127, 127]; 7 (``reduce_range``): [−64, 64]. Scale = max|w| / top code.
    """
    top = 127.0 if bits == 8 else 64.0
    reduce = tuple(i for i in range(w.ndim) if i != axis) if axis is not None else None
    amax = np.max(np.abs(w), axis=reduce, keepdims=True) if reduce is not None else np.max(np.abs(w))
    scale = np.where(amax > 0, amax / top, 1.0)
    return (np.clip(np.round(w / scale), -top, top) * scale).astype(w.dtype)


def smooth(model: Any, channels: Mapping[str, Mapping[str, Any]],
           alpha: float = SMOOTH_ALPHA) -> tuple[Any, dict[str, dict[str, Any]]]:
    """Insert ``X/s`` in front of the GEMMs that read each outlier-channel input X; scale their weights by ``s``.

    Args:
        model: a ModelProto with its weights (changed in place).
        channels: per-tensor channel statistics (``{"axis", "absmax", "mean"}``), from calibration.
        alpha: migration strength.

    Returns:
        (model, smoothed): for each new tensor ``<X>_smoothed``: ``{"source": X, "scales": s, "amax":
        max_j(absmax_j / s_j), "channels": its channel statistics}``. Inputs read by a GEMM whose weight
        is shared with another node, or read with ``transA``/a batched weight, are left alone.
    """
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    readers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
        if node.input:
            readers.setdefault(node.input[0], []).append(node)
    smoothed: dict[str, dict[str, Any]] = {}
    inserted = []
    for tensor, stats in channels.items():
        absmax = np.asarray(stats["absmax"], np.float64)
        if absmax.size < 2 or np.median(absmax) <= 0 or absmax.max() < OUTLIER_RATIO * np.median(absmax):
            continue
        gemms = [n for n in readers.get(tensor, []) if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1
                 and n.input[1] in inits and uses[n.input[1]] == 1 and not _attr(n, "transA", 0)
                 and len(inits[n.input[1]].dims) == 2]
        if not gemms:
            continue
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in gemms]
        rows = [np.abs(w).max(axis=0 if n.op_type == "Gemm" and _attr(n, "transB", 0) else 1)
                for n, w in zip(gemms, weights, strict=True)]
        if any(r.size != absmax.size for r in rows):
            continue
        w_max = np.max(rows, axis=0)
        s = np.where((absmax > 0) & (w_max > 0), absmax ** alpha / np.maximum(w_max, 1e-12) ** (1 - alpha), 1.0)
        s = np.clip(s, *_SCALE_LIMITS)
        for node, w in zip(gemms, weights, strict=True):
            scaled = w * (s[None, :] if node.op_type == "Gemm" and _attr(node, "transB", 0) else s[:, None])
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(scaled.astype(w.dtype), node.input[1]))
        new, inverse = f"{tensor}_smoothed", f"{tensor}_smoothing_inverse"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inverse))
        inserted.append((tensor, helper.make_node("Mul", [tensor, inverse], [new], name=f"{tensor}_smoothing")))
        for node in gemms:
            node.input[0] = new
        mean = np.asarray(stats["mean"], np.float64)
        smoothed[new] = {"source": tensor, "scales": s, "amax": float(np.max(absmax / s)),
                         "channels": {"axis": stats["axis"], "absmax": list(absmax / s), "mean": list(mean / s)}}
    _insert_after_producers(model, inserted)
    return model, smoothed


def _insert_after_producers(model: Any, inserted: list[tuple[str, Any]]) -> None:
    """Put each new node right after the node producing its input (graph order stays topological)."""
    if not inserted:
        return
    after: dict[str, list[Any]] = {}
    for tensor, node in inserted:
        after.setdefault(tensor, []).append(node)
    nodes = [n for tensor in [i.name for i in model.graph.input] for n in after.pop(tensor, [])]
    for node in model.graph.node:
        nodes.append(node)
        for out in node.output:
            nodes += after.pop(out, [])
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def correct_biases(model: Any, channels: Mapping[str, Mapping[str, Any]], bits: int = 8,
                   per_channel: bool = True) -> tuple[Any, int]:
    """Subtract each Conv/Gemm output channel's INT8 weight-error shift ``(W_q − W)·E[x]`` from its bias.

    Args:
        model: a ModelProto with its weights (changed in place).
        channels: per-tensor channel statistics with ``mean`` (from calibration).
        bits: weight bits of the target layout (8, or 7 for ``reduce_range``).
        per_channel: per-channel weight scales (as the quantizer will use).

    Returns:
        (model, number of biases corrected). Nodes without a constant bias, ConvTranspose and MatMul
        (whose bias is a separate Add) are left alone; the error near a padded border is ignored.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    corrected = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[0] not in channels:
            continue
        weight, bias = node.input[1], node.input[2]
        if weight not in inits or bias not in inits or uses[bias] != 1:
            continue
        mean = np.asarray(channels[node.input[0]]["mean"], np.float64)
        w = numpy_helper.to_array(inits[weight]).astype(np.float64)
        b = numpy_helper.to_array(inits[bias])
        if node.op_type == "Conv":
            groups = _attr(node, "group", 1)
            if mean.size != w.shape[1] * groups:
                continue
            delta = weight_roundtrip(w, 0 if per_channel else None, bits) - w  # (O, I/g, k...)
            per_group_mean = mean.reshape(groups, w.shape[1])[np.arange(w.shape[0]) // (w.shape[0] // groups)]
            shift = (delta.reshape(delta.shape[0], delta.shape[1], -1).sum(axis=2) * per_group_mean).sum(axis=1)
        else:
            if _attr(node, "transA", 0):
                continue
            trans_b = _attr(node, "transB", 0)
            delta = weight_roundtrip(w, (0 if trans_b else 1) if per_channel else None, bits) - w
            if mean.size != (delta.shape[1] if trans_b else delta.shape[0]):
                continue
            shift = delta @ mean if trans_b else mean @ delta
            # Gemm: alpha·A·B + beta·C, so the bias moves by alpha·shift / beta
            shift = shift * _float_attr(node, "alpha") / _float_attr(node, "beta")
        if b.shape != shift.shape:
            continue
        inits[bias].CopyFrom(numpy_helper.from_array((b - shift).astype(b.dtype), bias))
        corrected += 1
    return model, corrected


RECOVERY_STEPS = ("smoothing", "bias_correction")


def apply_recovery(model: Any, channels: Mapping[str, Mapping[str, Any]], steps: Mapping[str, bool], bits: int = 8,
                   per_channel: bool = True) -> tuple[Any, dict[str, dict[str, Any]], dict[str, int]]:
    """Apply the chosen steps in order (smoothing, then bias correction) to ``model`` (in place).

    Returns (model, smoothed tensors as :func:`smooth` gives them, how many tensors or layers each step
    changed: ``{"smoothing": n, "bias_correction": n}`` for the steps asked for).
    """
    smoothed: dict[str, dict[str, Any]] = {}
    applied: dict[str, int] = {}
    stats = dict(channels)
    if steps.get("smoothing"):
        model, smoothed = smooth(model, stats)
        stats.update({name: info["channels"] for name, info in smoothed.items()})
        applied["smoothing"] = len(smoothed)
    if steps.get("bias_correction"):
        model, applied["bias_correction"] = correct_biases(model, stats, bits, per_channel)
    return model, smoothed, applied


def describe(applied: Mapping[str, int]) -> list[str]:
    """One note per step applied (for artifact notes)."""
    notes = []
    if applied.get("smoothing"):
        notes.append(f"SmoothQuant-style smoothing (alpha {SMOOTH_ALPHA}) of {applied['smoothing']} GEMM input(s) "
                     "with outlier channels")
    if applied.get("bias_correction"):
        notes.append(f"bias correction of {applied['bias_correction']} Conv/Gemm layer(s) for their INT8 weight error")
    return notes
