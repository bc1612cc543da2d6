"""A quantization-aware-trained model (`trtopt.compress.qat`) → the INT8 ONNX of each target.

``tensorrt``     the fake-quantized model exported as is (TorchScript exporter: ModelOpt's quantizers export
                 as QuantizeLinear/DequantizeLinear pairs only through it): per-channel int8 weights and
                 per-tensor int8 activations with the *trained* scales (amax / 127), where ModelOpt placed
                 them (inputs of Conv/Linear/pooling). Stamped ``trtopt.quantize.target=tensorrt`` so it is
                 evaluated with exact Q/DQ semantics on the CPU (`trtopt.quant.quantize.evaluation_config`).
``onnxruntime``  the CPU layout (U8S8) on the *trained grid*: the Q/DQ export with its Q/DQ pairs removed
                 (:func:`strip_qdq`: FP32 with the trained weights, the tensor names unchanged) and simplified
                 (onnxslim folds BatchNorm into Conv), calibrated with trtopt (`trtopt.quant.calibrate`;
                 covers the tensors ModelOpt does not quantize, such as residual adds); then every tensor a
                 quantizer guarded gets uint8 parameters that reproduce the trained int8 grid exactly, scale
                 amax / 127 (:func:`with_learned_ranges`), and trtopt's own quantize
                 (`trtopt.quant.quantize.quantize`) places Q/DQ. Smoothing and bias correction are off: the
                 weights were trained for these ranges. The trained weights adapt to the training grid's
                 rounding; a finer grid loses that (measured on the no-BN 56-px Fashion-MNIST CNN, README "QAT"):
                 vs FP32 its QAT model scored −1.87 points with uint8 on the learned [min, max] (scale about
                 amax / 255; −2.76 before :func:`strip_qdq` kept the trained weight grid), +0.03 on the trained
                 grid; symmetric int8 activations (S8S8) with the trained scales score the same (+0.02) but
                 run at 0.81× (batch 1) and 0.71× (batch 8) the speed of U8S8 on an AMX/VNNI CPU, the tensorrt
                 Q/DQ model itself on ONNX Runtime's fused kernels −0.18 at 0.48× / 0.34×.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from trtopt.artifacts import OnnxArtifact, Ranges, TensorRange, inspect_onnx
from trtopt.data import take_batch
from trtopt.errors import TrtoptError
from trtopt.export import ExportConfig, export_onnx, simplify_graph, symbolic_inputs
from trtopt.files import ensure_writable, staging_dir
from trtopt.measure.compare import Tolerances
from trtopt.models.spec import LoadedModel
from trtopt.progress import StepCallback
from trtopt.quant.calibrate import CalibrationConfig, calibrate
from trtopt.quant.quantize import TARGETS, QuantizeConfig, quantize

#: The opset of the Q/DQ export: per-channel Q/DQ (axis) needs 13; 17 is what TensorRT 10.x and 11 parse.
QDQ_OPSET = 17
#: Fake quantization in PyTorch vs Q/DQ in ONNX Runtime: the same arithmetic up to float rounding at the
#: quantization steps' midpoints, so outputs agree closely but not to FP32 export precision. ``atol`` is in
#: units of the output's scale (`qdq_parity`). Deep models drift further (issue 16, QAD with trtopt's ranges):
#: all-MiniLM-L6-v2 cosine 0.993 on one sentence, EfficientNet-Lite0 logits up to 0.21 apart (cosine 0.9989),
#: while held-out agreement / mean cosine of export and PyTorch stay within 3 of 128 crops / 1e-4; an export
#: bug (a wrong scale, a missing Q/DQ) is far outside these.
QDQ_PARITY = Tolerances(atol=5e-2, rtol=5e-2, min_cosine=0.99)
#: Samples whose outputs set the scale of `qdq_parity` (the export's largest parity batch).
_SCALE_SAMPLES = 8


def export_qat(loaded: LoadedModel, paths: Mapping[str, str | os.PathLike], feed: Any,
               calibration: CalibrationConfig = CalibrationConfig(), force: bool = False,
               on_step: StepCallback | None = None, check_parity: bool = True,
               keep_first_layer_fp32: bool = False) -> dict[str, OnnxArtifact]:
    """Write the INT8 ONNX model of each target in ``paths`` (target → ``.onnx`` path) for a QAT model.

    Args:
        loaded: the model (``loaded.module`` fake-quantized by `trtopt.compress.qat.qat`) and its input specs.
        paths: ``{"tensorrt": path, "onnxruntime": path}`` (either or both).
        feed: calibration inputs (input name → array, samples on axis 0), e.g. training samples; they also
            trace the export and check its parity with the fake-quantized PyTorch model.
        calibration: trtopt's calibration of the FP32 graph (onnxruntime target only).
        force: overwrite existing outputs.
        on_step: progress callback.
        check_parity: compare the Q/DQ export with the fake-quantized PyTorch model (`QDQ_PARITY`); False
            writes it unchecked, e.g. to measure how far it differs on held-out data.
        keep_first_layer_fp32: the onnxruntime layout keeps its first layer float
            (`QuantizeConfig.keep_first_layer_fp32`), for a model trained with that layer's quantizers disabled.

    Returns:
        target → artifact (the onnxruntime one's notes say how many ranges came from training).

    Raises:
        TrtoptError: an unknown target, an existing output without ``force``, a failed export or parity check
        (named), an export holding no activation Q/DQ (the model was not quantized by `qat`).
    """
    import onnx

    unknown = sorted(set(paths) - set(TARGETS))
    if unknown:
        raise TrtoptError(f"unknown QAT export target {unknown[0]!r}", f"use {' and/or '.join(TARGETS)}")
    targets = {t: ensure_writable(p, force) for t, p in paths.items()}
    step = on_step or (lambda _msg: None)
    loaded.module.eval()
    notes: dict[str, tuple[str, ...]] = {}
    with staging_dir(next(iter(targets.values()))) as stage:
        step("exporting the Q/DQ model (TorchScript exporter)")
        qdq = stage / "tensorrt.onnx"
        parity = qdq_parity(loaded, feed) if check_parity else QDQ_PARITY
        export_onnx(loaded, qdq, replace(_QDQ_EXPORT, parity=parity, check_parity=check_parity), feed=feed, on_step=step)
        _stamp(qdq, {"trtopt.quantize.target": "tensorrt", "trtopt.calibration.method": "modelopt-qat"})
        notes["tensorrt"] = ("quantization-aware trained (ModelOpt): Q/DQ where ModelOpt placed them, trained scales",)
        staged = {"tensorrt": qdq}
        if "onnxruntime" in targets:
            fp32, learned = strip_qdq(onnx.load(str(qdq)))
            if not learned:
                raise TrtoptError(f"the export of {loaded.spec} holds no activation Q/DQ",
                                  "quantize the model with trtopt.compress.qat.qat before exporting it")
            fp32_path = stage / "fp32.onnx"
            onnx.save_model(simplify_graph(fp32, []), str(fp32_path))
            step("calibrating the FP32 graph (tensors training did not range)")
            ranges = with_learned_ranges(calibrate(fp32_path, feed, calibration), learned)
            staged["onnxruntime"] = stage / "onnxruntime.onnx"
            quantize(fp32_path, ranges, staged["onnxruntime"],
                     QuantizeConfig(target="onnxruntime", smoothing=False, bias_correction=False,
                                    keep_first_layer_fp32=keep_first_layer_fp32), on_step=step)
            notes["onnxruntime"] = (f"quantization-aware trained (ModelOpt): {len(ranges.choice['qat_ranges'])} of "
                                    f"{len(ranges.tensors)} activation ranges from training, the rest calibrated "
                                    f"({calibration.method})",)
        for target, path in targets.items():
            os.replace(staged[target], path)
    return {target: inspect_onnx(path, notes=notes[target]) for target, path in targets.items()}


def qdq_parity(loaded: LoadedModel, feed: Any) -> Tolerances:
    """`QDQ_PARITY` with ``atol`` scaled by the model's output scale: max |output| of the PyTorch model on the
    first 8 samples of ``feed`` (input name → array), at least 1. A quantized activation that rounds to the
    neighbouring step in one runtime moves the outputs by an amount proportional to their size, so a fixed
    atol refuses a correct export of a model with large logits (measured: a Fashion-MNIST CNN without
    BatchNorm, logits up to ~10, max abs error 0.27 at cosine 0.99997). The cosine bound is `QDQ_PARITY`'s."""
    from trtopt.backends.torch import TorchRunner

    batch = take_batch(feed, min(_SCALE_SAMPLES, len(next(iter(feed.values())))))
    with TorchRunner(replace(loaded, inputs=symbolic_inputs(loaded.inputs))) as runner:
        scale = max(float(np.max(np.abs(out))) for out in runner.infer(batch).values())
    return replace(QDQ_PARITY, atol=QDQ_PARITY.atol * max(1.0, scale))


def calibrated_amax(loaded: LoadedModel, feed: Any, calibration: CalibrationConfig = CalibrationConfig(),
                    on_step: StepCallback | None = None) -> dict[str, float]:
    """trtopt's calibrated range of each tensor a fake-quantized model's activation quantizers guard.

    So that QAT/QAD starts from trtopt's PTQ ranges (method auto: MSE/percentile/entropy per model) instead
    of ModelOpt's max calibration. ``loaded.module`` (fake-quantized by `trtopt.compress.qat.insert_fake_quant`)
    is exported with Q/DQ (TorchScript exporter, in a temporary folder); each activation QuantizeLinear is
    named after its quantizer's module path (``/conv1/input_quantizer/QuantizeLinear``); the Q/DQ pairs are
    stripped (:func:`strip_qdq`), the FP32 graph calibrated with ``calibration`` on ``feed`` (input name →
    float32 array, samples on axis 0), and each quantizer gets the symmetric amax (max of |min|, |max|) of its
    tensor. trtopt's recovery steps (bias correction, smoothing) change weights and do not carry over.

    Returns:
        quantizer module path (e.g. ``"conv1.input_quantizer"``) → amax, for every activation quantizer whose
        tensor the FP32 graph still names (apply with `trtopt.compress.qat.set_amax_`).

    Raises:
        TrtoptError: the export holds no activation Q/DQ (the model is not fake-quantized), or a failed export.
    """
    import tempfile

    import onnx

    step = on_step or (lambda _msg: None)
    loaded.module.eval()
    with tempfile.TemporaryDirectory(prefix="trtopt_qat_ranges_") as tmp:
        qdq = Path(tmp) / "qdq.onnx"
        step("exporting the Q/DQ model (TorchScript exporter) to find each quantizer's tensor")
        export_onnx(loaded, qdq, replace(_QDQ_EXPORT, check_parity=False), feed=feed, on_step=step)  # names only
        model = onnx.load(str(qdq))
        names = {name for name, _ in loaded.module.named_modules() if name.endswith("_quantizer")}
        quantizer_of = {node.input[0]: _module_path(node.name, names)
                        for node in model.graph.node if node.op_type == "QuantizeLinear"}
        fp32, learned = strip_qdq(model)
        if not learned:
            raise TrtoptError(f"the export of {loaded.spec} holds no activation Q/DQ",
                              "insert fake quantization first (trtopt.compress.qat.insert_fake_quant)")
        fp32_path = Path(tmp) / "fp32.onnx"
        onnx.save_model(fp32, str(fp32_path))  # not simplified: onnxslim would rename tensors the quantizers read
        step(f"calibrating the FP32 graph ({calibration.method})")
        ranges = calibrate(fp32_path, feed, calibration, tensors=sorted(learned))
    return {quantizer_of[tensor]: max(abs(ranges.tensors[tensor].min), abs(ranges.tensors[tensor].max))
            for tensor in learned if tensor in ranges.tensors and quantizer_of[tensor]}


def _module_path(node_name: str, quantizers: set[str]) -> str | None:
    """The quantizer module path a TorchScript-exported QuantizeLinear belongs to, from its scoped node name.

    The exporter names it after the module scopes, each scope a name relative to *some* ancestor (e.g.
    ``/stem/stem.0/input_quantizer/QuantizeLinear`` for ``stem.0.input_quantizer``); the longest trailing run
    of scopes that names a quantizer in ``quantizers`` is it (None when none does).
    """
    scopes = node_name.strip("/").split("/")[:-1]
    return next((".".join(scopes[k:]) for k in range(len(scopes)) if ".".join(scopes[k:]) in quantizers), None)


def strip_qdq(model: Any) -> tuple[Any, dict[str, float]]:
    """Remove every QuantizeLinear → DequantizeLinear pair from ``model`` (an ONNX ModelProto, changed in place).

    Consumers of a pair read its float input instead, so tensor names stay the exporter's; a weight (an
    initializer) becomes the values its pair computes, ``(clip(round(w / scale) + zero point, -128, 127) − zero
    point) × scale`` per channel (ONNX QuantizeLinear/DequantizeLinear), i.e. the trained int8 grid stored as
    float, so a later per-channel quantization finds that grid again (its scale is max |w| / 127: the same where
    a channel's largest code is ±127); measured on the no-BN Fashion-MNIST CNN, the onnxruntime layout's top-1
    agreement with the exact tensorrt layout rose from 0.970 to 0.976 (QAT; QAD 0.969 to 0.978). The model's metadata is cleared. Returns
    ``(model, {activation tensor: amax})`` with amax = |scale| × 127 (symmetric int8, zero point 0, as ModelOpt
    exports) for each pair whose input is an activation, not an initializer.
    """
    from onnx import helper, numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    weights = {t.name: t for t in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    graph_outputs = {o.name for o in model.graph.output}
    rename: dict[str, str] = {}
    drop: set[int] = set()
    learned: dict[str, float] = {}
    keep_as_identity = []
    for node in model.graph.node:
        q = producer.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        source = q.input[0]
        if source not in consts and q.input[1] in consts:
            learned[source] = float(abs(consts[q.input[1]]).max()) * 127.0
        elif source in weights and q.input[1] in consts:
            weights[source].CopyFrom(numpy_helper.from_array(_fake_quantized(consts[source], q, consts), source))
        drop.update((id(q), id(node)))
        if node.output[0] in graph_outputs:
            keep_as_identity.append(helper.make_node("Identity", [source], [node.output[0]], name=node.name + "_identity"))
        else:
            rename[node.output[0]] = source
    kept = [n for n in model.graph.node if id(n) not in drop]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del model.graph.node[:]
    model.graph.node.extend(kept + keep_as_identity)
    del model.metadata_props[:]  # no longer the quantized model its stamps describe
    return model, learned


def _fake_quantized(weight: np.ndarray, q: Any, consts: Mapping[str, np.ndarray]) -> np.ndarray:
    """What QuantizeLinear ``q`` (int8, per tensor or along its ``axis``) then DequantizeLinear make of ``weight``."""
    scale = consts[q.input[1]].astype(np.float32)
    zero = consts[q.input[2]].astype(np.float32) if len(q.input) > 2 and q.input[2] in consts else np.zeros_like(scale)
    if scale.ndim:  # per channel: broadcast along the axis
        axis = next((a.i for a in q.attribute if a.name == "axis"), 1) % weight.ndim
        shape = [1] * weight.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    codes = np.clip(np.rint(weight / scale) + zero, -128, 127)  # rint: half to even, as QuantizeLinear rounds
    return ((codes - zero) * scale).astype(weight.dtype)


def with_learned_ranges(ranges: Ranges, learned: Mapping[str, float]) -> Ranges:
    """``ranges`` with each tensor in ``learned`` (tensor → trained amax) on the grid training used, in uint8.

    Training quantized such a tensor to symmetric int8 with scale s = amax / 127 and zero point 0. The uint8
    range given here makes ONNX Runtime's quantizer (scale = (max − min) / 255, zero point = −min / scale)
    compute the same scale s: ``[0, 255·s]`` (zero point 0) for a tensor calibration saw no negative value in
    (post-ReLU: the int8 codes 0..127 become uint8 0..127, values above amax keep codes up to 255 instead of
    clipping), ``[−128·s, 127·s]`` (zero point 128) otherwise (every int8 code maps to one uint8 code, same
    clipping). Returns new `Ranges`; ``amax`` of those tensors is max(|min|, max) of that range,
    ``choice["qat_ranges"]`` records tensor → trained amax for those found, ``method`` reads ``qat+<method>``.
    A learned tensor the FP32 graph no longer has (simplification renamed it) keeps its calibrated range.
    """
    tensors = dict(ranges.tensors)
    used: dict[str, float] = {}
    for tensor, amax in learned.items():
        r = tensors.get(tensor)
        if r is None:
            continue
        step = amax / 127.0
        low, high = (0.0, 255.0 * step) if r.min >= 0 else (-128.0 * step, 127.0 * step)
        tensors[tensor] = TensorRange(amax=max(-low, high), min=low, max=high)
        used[tensor] = amax
    return replace(ranges, tensors=tensors, method=f"qat+{ranges.method}", choice={**ranges.choice, "qat_ranges": used})


def _stamp(path: Path, props: Mapping[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(model, str(path))


# Q/DQ graphs are not simplified (constant folding would fold the weights' Q/DQ pairs into float weights).
_QDQ_EXPORT = ExportConfig(opset=QDQ_OPSET, exporter="torchscript", simplify=False, parity=QDQ_PARITY)
