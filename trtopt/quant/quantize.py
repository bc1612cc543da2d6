"""Ranges → INT8 Q/DQ ONNX, in the layout each target runtime runs fast.

One set of calibrated ranges (`trtopt.quant.calibrate`) serves every target; only the Q/DQ layout differs:

``onnxruntime``  U8S8: asymmetric uint8 activations (zero point from the calibrated min/max), symmetric
                 int8 per-channel weights, Q/DQ around every operator ONNX Runtime's CPU kernels fuse
                 (Conv, MatMul, Gemm, Add, Relu, pooling, Concat, ...). On AVX-512 VNNI CPUs this is the
                 layout that is faster than FP32; S8S8 is not (ENVIRONMENT.md). Transformers (a graph
                 with LayerNorm or attention) get Q/DQ on MatMul/Gemm only: norms, softmax and residual
                 adds stay float (:func:`transformer_markers`), fused for ONNX Runtime first
                 (:func:`fuse_float_ops`: BiasGelu, SkipLayerNormalization). Weights are 8-bit on CPUs whose INT8
                 kernels accumulate in int32 (VNNI, AMX), 7-bit on AVX2-only CPUs (see
                 :attr:`QuantizeConfig.reduce_range`).
``tensorrt``     TensorRT's explicit-quantization rules: symmetric int8 (zero point 0) everywhere,
                 per-channel weights (axis = output channel), per-tensor activations, Q/DQ only on the
                 *inputs* of Conv/ConvTranspose/MatMul/Gemm (TensorRT fuses and propagates the rest).
                 This is what TensorRT 11 requires (no implicit INT8) and what 10.x prefers.

Placement and weight quantization are done by ONNX Runtime's quantization tool (`quantize_static`),
fed with trtopt's ranges through its calibration-cache path, so no calibration runs twice.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtopt._config import check_choice, field_error
from trtopt.artifacts import OnnxArtifact, Ranges, inspect_onnx
from trtopt.environment import cpu_isa
from trtopt.errors import TrtoptError, first_line
from trtopt.files import ensure_writable, staging_dir
from trtopt.progress import StepCallback
from trtopt.quant.names import COMPUTE_OP_TYPES, resolve_layer_names

TARGETS = ("onnxruntime", "tensorrt")
# Who places Q/DQ: trtopt (ONNX Runtime's quantizer with trtopt's rules) or NVIDIA ModelOpt (tensorrt only).
QUANTIZERS = ("trtopt", "modelopt")
# FP16 converters: onnxconverter-common (default) or NVIDIA ModelOpt AutoCast.
FP16_CONVERTERS = ("onnxconverter", "autocast")
# Ops whose inputs carry Q/DQ in TensorRT's rules (weights and activations).
TENSORRT_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
PER_CHANNEL_OPSET = 13  # the first opset whose QuantizeLinear/DequantizeLinear take an axis
# The onnxruntime target's default for transformers: the GEMMs hold the MACs; LayerNorm, Softmax and the
# residual Adds lose the most from per-tensor uint8 (an outlier channel sets their range).
TRANSFORMER_OP_TYPES = ("MatMul", "Gemm")
NORM_OP_TYPES = ("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
                 "SkipSimplifiedLayerNormalization", "RMSNormalization")
ATTENTION_OP_TYPES = ("Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention")
EXTERNAL_DATA_BYTES = 1_800_000_000  # weights above this are written to a side file (protobuf stops at 2 GiB)


@dataclass(frozen=True)
class QuantizeConfig:
    """How ranges become a Q/DQ model.

    Attributes:
        target: "onnxruntime" (U8S8, for CPUs) or "tensorrt" (symmetric S8S8, inputs of GEMM-like ops).
        per_channel: per-output-channel weight scales (default True: depthwise convolutions need them;
            EfficientNet-Lite0 per-tensor kept top-1 agreement with FP32 on 10 of 19 photos).
        reduce_range: 7-bit weights; None = the target's default: for onnxruntime, 7-bit only on a CPU
            whose U8S8 kernels can saturate (x86 without VNNI or AMX: they sum u8×s8 pairs into int16;
            `trtopt.environment.cpu_isa`), 8-bit elsewhere; False for tensorrt. The model records the
            ISA it was made for (metadata ``trtopt.quantize.cpu_int8``). On a VNNI machine 7-bit
            weights cost accuracy for no speed (ResNet-18 INT8 p50 the same either way).
        exclude_nodes: layers kept in FP32 (mixed precision), each an ONNX node name, the name of the
            activation tensor a node produces, or a PyTorch module path (`trtopt.quant.names`).
        exclude_op_types: op types kept in FP32 (e.g. "Softmax", "Gemm").
        op_types: op types to quantize; None = the target's default set (onnxruntime: every op its CPU
            kernels fuse, or MatMul/Gemm for a transformer, see :func:`transformer_markers`; tensorrt:
            the inputs of Conv/ConvTranspose/MatMul/Gemm).
        smoothing: SmoothQuant-style smoothing of GEMM inputs with outlier channels
            (`trtopt.quant.recovery`); None = what calibration's method auto measured (on only where it
            raised output SQNR; off for other methods).
        bias_correction: correct Conv/Gemm biases for the INT8 weight error; None = as for smoothing.
        embeddings: 8-bit embedding tables (the float initializer a Gather looks rows up in), weight-only:
            ONNX Runtime's quantizer stores the table with the activation type (uint8, one symmetric
            per-tensor scale, zero point 128, 8 bits even with reduce_range), ONNX Runtime's optimizer drops
            the DQ→Gather→Q around the lookup, so the Gather reads 8-bit rows and only the rows looked up are
            dequantized. None = on for the onnxruntime target (all-MiniLM-L6-v2: 3.9x smaller than FP32
            instead of 1.55x, same accuracy and speed; README "INT8"). The tensorrt layout keeps tables
            float (Q/DQ only on the inputs of Conv/MatMul/Gemm) whatever this says. See :func:`embedding_tables`.
        keep_first_layer_fp32: keep the first layer(s) in float: every Conv/ConvTranspose/MatMul/Gemm that
            reads a float graph input (directly or through non-GEMM ops such as Pad), and the ops on the way
            (:func:`first_layer_nodes`), so the input (the normalized image of an image CNN) gets no Q/DQ and
            its first convolution runs in float in both layouts. EfficientNet-Lite0 INT8 lost the most at
            its stem's input (issue 16; README "QAT, QAD and ModelOpt").
        quantizer: who places Q/DQ: "trtopt" (the rules above, through ONNX Runtime's quantizer) or "modelopt"
            (the tensorrt target; a recipe's onnxruntime target keeps trtopt's: ModelOpt's placement with trtopt's ranges, `trtopt.quant.modelopt_placement`;
            needs the ``modelopt`` extra; weights always per-channel).
    """

    target: str = "onnxruntime"
    per_channel: bool = True
    reduce_range: bool | None = None
    exclude_nodes: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    op_types: tuple[str, ...] | None = None
    smoothing: bool | None = None
    bias_correction: bool | None = None
    embeddings: bool | None = None
    keep_first_layer_fp32: bool = False
    quantizer: str = "trtopt"

    def __post_init__(self) -> None:
        check_choice("target", self.target, TARGETS, fix="use onnxruntime (U8S8, CPUs) or tensorrt (S8S8 Q/DQ)")
        check_choice("quantizer", self.quantizer, QUANTIZERS, fix="use trtopt or modelopt (tensorrt target)")
        if self.quantizer == "modelopt" and not self.per_channel:
            raise field_error("per_channel", self.per_channel, "is not available with quantizer modelopt (always per-channel)",
                              "drop per_channel false, or use quantizer trtopt")

    @property
    def weights_reduce_range(self) -> bool:
        """Whether weights use 7 bits (resolves the target default on this machine's CPU)."""
        if self.reduce_range is not None:
            return self.reduce_range
        return self.target == "onnxruntime" and cpu_isa()["u8s8_saturates"]

    @property
    def quantizes_embeddings(self) -> bool:
        """Whether embedding tables become int8 (resolves the default; always False for the tensorrt layout)."""
        return self.target == "onnxruntime" and self.quantizer == "trtopt" and self.embeddings is not False

    def placement(self) -> dict[str, Any]:
        """The fields that decide which tensors get Q/DQ (what calibration must cover; see :func:`quantized_tensors`)."""
        return {"target": self.target, "op_types": None if self.op_types is None else list(self.op_types),
                "exclude_nodes": list(self.exclude_nodes), "exclude_op_types": list(self.exclude_op_types),
                "keep_first_layer_fp32": self.keep_first_layer_fp32}

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "per_channel": self.per_channel, "reduce_range": self.weights_reduce_range,
                "exclude_nodes": list(self.exclude_nodes),
                "exclude_op_types": list(self.exclude_op_types),
                "op_types": None if self.op_types is None else list(self.op_types),
                "smoothing": self.smoothing, "bias_correction": self.bias_correction,
                "embeddings": self.quantizes_embeddings, "keep_first_layer_fp32": self.keep_first_layer_fp32,
                "quantizer": self.quantizer}


def require_float_model(artifact: OnnxArtifact, purpose: str) -> None:
    """Raise TrtoptError when ``artifact`` already holds Q/DQ nodes: calibrating or quantizing it again would
    observe or stack a second quantization on the first (ONNX Runtime then fails on the result with a message
    about duplicate metadata, naming nothing the user can act on). ``purpose`` is what was asked ("quantize")."""
    if artifact.precision == "int8":
        raise TrtoptError(f"{artifact.path.name} is already INT8 (it holds QuantizeLinear/DequantizeLinear nodes), "
                          f"so it cannot {purpose}", "give the FP32 ONNX model it was quantized from")


def quantize(onnx_path: str | os.PathLike, ranges: Ranges, out_path: str | os.PathLike,
             config: QuantizeConfig = QuantizeConfig(), force: bool = False,
             on_step: StepCallback | None = None) -> OnnxArtifact:
    """Write the INT8 Q/DQ version of an FP32 ONNX model for ``config.target``.

    Args:
        onnx_path: the FP32 ONNX model that ``ranges`` were calibrated on.
        ranges: calibrated activation ranges (tensor names of ``onnx_path``).
        out_path: destination ``.onnx`` (written atomically; weights inline unless over 2 GB, then in
            ``<out_path>.data`` beside it).
        config: target layout, per-channel weights, weight bits, op types, exclusions, accuracy recovery
            (by default the steps method auto kept, recorded in ``ranges.choice``).
        force: overwrite an existing output.
        on_step: called with a short description as each step starts, and with each default it chose
            (the transformer op set, the recovery steps).

    Raises:
        TrtoptError: the model has nothing to quantize, ``config.op_types`` holds a typo or matches no
        node (the message lists the op types present), ranges lack a tensor the layout needs, the ranges
        come from another model, recovery is asked for but the ranges have no per-channel statistics, or
        the output exists without ``force``.
    """
    import onnx

    step = on_step or (lambda _msg: None)
    if config.quantizer == "modelopt" and config.target != "tensorrt":
        raise TrtoptError(f"quantizer modelopt places Q/DQ for TensorRT, not for target {config.target}",
                          "use --quantizer modelopt with --target tensorrt, or quantizer trtopt for onnxruntime")
    target = ensure_writable(out_path, force)
    source = inspect_onnx(onnx_path)
    require_float_model(source, "be quantized again")
    ranges.check_model(source)
    model = onnx.load(str(source.path), load_external_data=False)
    named = resolve_layer_names(model, config.exclude_nodes, source.path.name)  # node, tensor or module names
    first = first_layer_nodes(model, source.path.name) if config.keep_first_layer_fp32 else []
    excluded = ({node for _, found in named.values() for node in found}
                | {n.name for n in model.graph.node if n.op_type in config.exclude_op_types} | set(first))
    _check_op_types(model, config.op_types, source.path.name)
    compute = [n for n in model.graph.node if n.op_type in COMPUTE_OP_TYPES and n.name not in excluded]
    if not compute:
        raise TrtoptError(f"{source.path.name} has no quantizable layers ({', '.join(COMPUTE_OP_TYPES)}) left to quantize",
                          "INT8 pays off only for Conv/MatMul/Gemm; keep this model in FP32/FP16")
    op_types, op_note = _op_types(model, config)
    per_tensor, weight_note = _per_tensor_weights(model, config, excluded)
    tables = embedding_tables(model, excluded) if config.quantizer == "trtopt" else {}
    large = sum(_tensor_bytes(t) for t in model.graph.initializer) > EXTERNAL_DATA_BYTES
    if op_note:
        step(op_note)
    steps = recovery_steps(config, ranges)
    with staging_dir(target) as stage:
        fp32, ranges, recovery_nodes, recovery_notes = _recover(source.path, ranges, steps, config, stage, large)
        for note in recovery_notes:
            step(note)
        fusion_note = None
        if _fuses_float_ops(config, op_types, large):
            fp32, fusion_note = fuse_float_ops(fp32, config, stage)
            if fusion_note:
                step(fusion_note)
        step("preparing the model (shape inference)")
        prepared = _prepare(fp32, stage, large)
        step(f"placing Q/DQ for {config.target}" + (" with ModelOpt" if config.quantizer == "modelopt" else ""))
        staged = stage / target.name
        if config.quantizer == "modelopt":
            from trtopt.quant.modelopt_placement import place_qdq

            place_qdq(prepared, staged, ranges, list(config.op_types) if config.op_types else None,
                      sorted(excluded | recovery_nodes), config.exclude_op_types, large)
        else:
            with_tables, keep_float = _with_embeddings(model, config, op_types, tables)
            _run_ort_quantizer(prepared, staged, ranges, config, sorted(excluded | recovery_nodes | keep_float), stage,
                               with_tables, per_tensor, large, sorted(set(tables.values())) if config.quantizes_embeddings else [],
                               gemm_inputs_only=op_types == list(TRANSFORMER_OP_TYPES) and not config.op_types)
        counts = _stamp(staged, config, ranges, large)
        if not counts["QuantizeLinear"]:  # e.g. op_types naming only ops ONNX Runtime's quantizer leaves alone
            raise TrtoptError(f"quantizing {source.path.name} for target {config.target} placed no Q/DQ node "
                              f"(op types {', '.join(config.op_types or ('of the target',))})",
                              f"quantize op types that hold the MACs: {', '.join(COMPUTE_OP_TYPES)}")
        try:
            onnx.checker.check_model(str(staged))  # by path: works past 2 GiB
        except onnx.checker.ValidationError as e:  # ONNX Runtime's tool can emit graphs the checker rejects
            first = " ".join(str(e).split())[:240]
            raise TrtoptError(f"quantizing {source.path.name} for target {config.target} gives an invalid model: {first}",
                              "keep the op named there in FP32 (--exclude OPTYPE, e.g. --exclude Resize) or quantize a simpler graph") from e
        side = staged.with_name(staged.name + ".data")
        if side.exists():  # the weights' side file first: the model never refers to a missing one
            os.replace(side, target.with_name(target.name + ".data"))
        os.replace(staged, target)
    notes = (f"target {config.target}: {_layout(config, op_types)}",
             f"{counts['QuantizeLinear']} QuantizeLinear, {counts['DequantizeLinear']} DequantizeLinear nodes",
             f"{len(excluded)} node(s) kept in FP32" + (f": {', '.join(sorted(excluded)[:8])}" if excluded else ""),
             *((f"first layer kept in FP32 (its input unquantized): {', '.join(first[:8])}",) if first else ()),
             *(f"--exclude {name}: {kind} → node(s) {', '.join(found[:4])}" + (" …" if len(found) > 4 else "")
               for name, (kind, found) in named.items() if kind != "node"),
             *(n for n in (op_note, weight_note, _weight_bits_note(config), _embeddings_note(model, config, tables)) if n),
             *recovery_notes,
             *((fusion_note,) if fusion_note else ()),
             *(("weights in the side file " + target.name + ".data (the model is over 2 GB)",) if large else ()))
    return inspect_onnx(target, notes=notes)


def _check_op_types(model: Any, op_types: tuple[str, ...] | None, name: str) -> None:
    """Refuse an op-type filter with a typo (not in the model and no ONNX operator) or that matches no node:
    either would write an "INT8" model without a single Q/DQ node."""
    import onnx

    if op_types is None:
        return
    present = sorted({n.op_type for n in model.graph.node})
    typos = [t for t in op_types if t not in present and not onnx.defs.has(t)]
    if typos:
        problem = f"op type {typos[0]!r} to quantize is neither in {name} nor an ONNX operator (a typo?)"
    elif not set(op_types) & set(present):
        problem = f"op types to quantize ({', '.join(op_types)}) match no node of {name}"
    else:
        return
    raise TrtoptError(problem, f"name op types present there: {', '.join(present)}")


def recovery_steps(config: QuantizeConfig, ranges: Ranges) -> dict[str, bool]:
    """The accuracy-recovery steps to apply: the config's choice, else what method auto measured and kept."""
    measured = ranges.choice.get("recovery") or {}
    return {"smoothing": bool(measured.get("smoothing")) if config.smoothing is None else config.smoothing,
            "bias_correction": bool(measured.get("bias_correction")) if config.bias_correction is None
            else config.bias_correction}


def _recover(path: Path, ranges: Ranges, steps: dict[str, bool], config: QuantizeConfig, stage: Path,
             large: bool) -> tuple[Path, Ranges, set[str], list[str]]:
    """The FP32 model with the recovery ``steps`` applied (written in ``stage``), its ranges, nodes to keep float.

    Smoothing adds ``<X>_smoothed`` tensors, whose ranges follow from X's per-channel statistics; the
    Mul nodes that make them stay float (quantizing their input would bring the outliers back).
    """
    import dataclasses

    import onnx

    from trtopt.artifacts import TensorRange
    from trtopt.quant.recovery import apply_recovery, describe

    if not any(steps.values()):
        return path, ranges, set(), []
    if not ranges.channels:
        raise TrtoptError("the ranges have no per-channel statistics, which smoothing and bias correction need",
                          "recalibrate with this trtopt (trtopt calibrate), or turn the recovery steps off")
    model, smoothed, applied = apply_recovery(onnx.load(str(path)), ranges.channels, steps,
                                              bits=7 if config.weights_reduce_range else 8, per_channel=config.per_channel)
    tensors = dict(ranges.tensors)
    for name, info in smoothed.items():
        source = ranges.tensors[info["source"]]
        tensors[name] = TensorRange(info["amax"], -info["amax"] if source.min < 0 else 0.0,
                                    info["amax"] if source.max > 0 else 0.0)
    out = stage / "recovered.onnx"
    onnx.save_model(model, str(out), save_as_external_data=large, location="recovered.onnx.data" if large else None)
    mul_nodes = {n.name for n in model.graph.node if n.output and n.output[0] in smoothed}
    return out, dataclasses.replace(ranges, tensors=tensors), mul_nodes, describe(applied)


def _tensor_bytes(tensor: Any) -> int:
    """Bytes of an initializer's data, whether inline or in a side file (not loaded)."""
    for entry in tensor.external_data:
        if entry.key == "length":
            return int(entry.value)
    if tensor.external_data:  # no length recorded: count from the shape (4 bytes per element is enough here)
        return 4 * math.prod(tensor.dims)
    return len(tensor.raw_data) or 4 * len(tensor.float_data)


def transformer_markers(model: Any) -> dict[str, int]:
    """What makes a graph a transformer for the op-set default, with counts (empty for other graphs).

    Counted: LayerNorm-family ops (:data:`NORM_OP_TYPES`), fused attention ops
    (:data:`ATTENTION_OP_TYPES`), Softmax over attention scores (a MatMul of two activations within
    three element-wise steps upstream: Div/Mul/Add/Sub/Where/Cast), and LayerNorm exported as primitives
    (ReduceMean → Sub → Pow/Mul → ReduceMean). A CNN with a Softmax head is not a transformer.
    """
    nodes = list(model.graph.node)
    constants = {t.name for t in model.graph.initializer}
    constants.update(o for n in nodes if n.op_type == "Constant" for o in n.output)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    found: dict[str, int] = {}

    def add(key: str) -> None:
        found[key] = found.get(key, 0) + 1

    def scores_upstream(name: str, depth: int) -> bool:
        node = producer.get(name)
        if node is None or depth > 3:
            return False
        if node.op_type == "MatMul":
            return all(i not in constants for i in node.input)
        if node.op_type in ("Div", "Mul", "Add", "Sub", "Where", "Cast"):
            return any(scores_upstream(i, depth + 1) for i in node.input if i not in constants)
        return False

    for n in nodes:
        if n.op_type in NORM_OP_TYPES:
            add(n.op_type)
        elif n.op_type in ATTENTION_OP_TYPES:
            add(n.op_type)
        elif n.op_type == "Softmax" and n.input and scores_upstream(n.input[0], 0):
            add("Softmax over attention scores")
        elif n.op_type == "ReduceMean":
            for sub in (c for c in consumers.get(n.output[0], []) if c.op_type == "Sub"):
                squares = [c for c in consumers.get(sub.output[0], []) if c.op_type in ("Pow", "Mul")]
                if any(c.op_type == "ReduceMean" for sq in squares for c in consumers.get(sq.output[0], [])):
                    add("LayerNorm as primitives")
                    break
    return found


def first_layer_nodes(model: Any, model_name: str = "the model") -> list[str]:
    """The nodes `QuantizeConfig.keep_first_layer_fp32` keeps in float, in graph order.

    Walking from each float graph input (not an initializer) through the nodes that consume it, the walk
    stops at every GEMM-like node (`trtopt.quant.names.COMPUTE_OP_TYPES`: Conv, ConvTranspose, MatMul,
    Gemm): those first layers and every node passed on the way there (Pad, Cast, Transpose, ...) are
    returned, so neither the input nor anything computed from it before the first layer gets Q/DQ. Shape and
    Size are not followed (they read the input's dimensions, not its values). An image
    CNN gives its stem convolution (and e.g. the Pad of a "same"-padded one); token ids (int64 inputs)
    start no walk.

    Raises:
        TrtoptError: no GEMM-like node reads a float graph input (e.g. a transformer fed token ids); a returned
            node has no name (it could not be excluded alone).
    """
    import onnx

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
    initializers = {t.name for t in model.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    frontier = [i.name for i in model.graph.input
                if i.name not in initializers and i.type.tensor_type.elem_type in floats]
    found: set[int] = set()  # ids of the nodes walked: the first layers and the ops on the way
    layers = 0
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if id(node) in found or node.op_type in ("Shape", "Size"):  # metadata, not the input's values: a
                continue  # Reshape to x.size(0) rows would lead the walk into the classifier
            found.add(id(node))
            if node.op_type in COMPUTE_OP_TYPES:
                layers += 1
            else:
                frontier.extend(node.output)
    if not layers:
        raise TrtoptError(f"keep_first_layer_fp32: no Conv/ConvTranspose/MatMul/Gemm of {model_name} reads a float "
                          "input (only image-like float inputs have a first layer to keep)",
                          "drop --keep-first-layer-fp32 (recipe quantize.keep_first_layer_fp32) for this model")
    unnamed = [n.op_type for n in model.graph.node if id(n) in found and not n.name]
    if unnamed:  # an excluded "" would exclude every unnamed node of the graph
        raise TrtoptError(f"keep_first_layer_fp32: the first layer's node(s) of {model_name} have no node name "
                          f"({', '.join(unnamed)}), so they cannot be kept float alone",
                          "name every node (onnx: node.name = node.name or f'{node.op_type}_{i}' over "
                          "model.graph.node), or drop --keep-first-layer-fp32")
    return [n.name for n in model.graph.node if id(n) in found]


def _op_types(model: Any, config: QuantizeConfig) -> tuple[list[str] | None, str | None]:
    """The op types handed to ONNX Runtime's quantizer (None = all it supports) and a note on the choice."""
    if config.op_types:
        return list(config.op_types), None
    if config.target == "tensorrt":
        return list(TENSORRT_OP_TYPES), None
    markers = transformer_markers(model)
    if not markers:
        return None, None
    found = ", ".join(f"{k} ×{v}" for k, v in markers.items())
    return list(TRANSFORMER_OP_TYPES), (f"transformer graph ({found}): quantizing the inputs of "
                                        f"{', '.join(TRANSFORMER_OP_TYPES)} only; norms, softmax and residual adds "
                                        "stay float (--op-types to choose)")


def _fuses_float_ops(config: QuantizeConfig, op_types: list[str] | None, large: bool) -> bool:
    """Whether :func:`fuse_float_ops` runs: the onnxruntime target's transformer default (GEMM inputs only).

    Models over 2 GB are left unfused (ONNX Runtime's transformer optimizer loads the weights in memory).
    """
    return (config.target == "onnxruntime" and config.quantizer == "trtopt" and not config.op_types
            and op_types == list(TRANSFORMER_OP_TYPES) and not large)


def fuse_float_ops(path: Path, config: QuantizeConfig, stage: Path) -> tuple[Path, str | None]:
    """The float ops between a transformer's GEMMs fused by ONNX Runtime's transformer optimizer, before Q/DQ.

    With Q/DQ on the GEMM inputs only, what stays float between the INT8 GEMMs (bias Add + GELU as
    Div/Erf/Add/Mul/Mul, residual Add + LayerNorm) costs about as much as the GEMMs once they run in INT8,
    and ONNX Runtime's session optimizer fuses only part of it (residual Add + LayerNorm, without the bias).
    ``onnxruntime.transformers.optimizer`` (model type "bert", its pattern fusions only, ``opt_level=0``)
    makes BiasGelu and SkipLayerNormalization (bias folded in where shape inference allows) of them; the
    arithmetic is the same, in float. Attention and embedding fusions stay off: they would swallow the
    MatMuls that take Q/DQ. all-MiniLM-L6-v2 INT8 on 2 threads: about 10 % faster (the bench_int8_zoo row).

    Fused nodes keep the names of the tensors they produce, so the ranges calibrated on ``path`` still
    name every tensor the layout quantizes; where a fusion would change that set (or fails), ``path`` is
    returned unfused with a note saying so.

    Returns:
        the model to place Q/DQ in (``stage``/fused.onnx or ``path``) and a note (None when nothing fused).
    """
    import collections

    import onnx

    model = onnx.load(str(path))
    before = collections.Counter(n.op_type for n in model.graph.node)
    wanted = set(quantized_tensors(model, config))
    try:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        options = FusionOptions("bert")
        options.enable_attention = False
        options.enable_embed_layer_norm = False
        with contextlib.redirect_stdout(io.StringIO()), _quiet_logging():
            fused = optimize_model(model, model_type="bert", optimization_options=options, opt_level=0).model  # in place
    except Exception as e:  # an optimization, not a requirement: a pattern the optimizer chokes on keeps the graph
        return path, f"ONNX Runtime's transformer fusions failed ({first_line(e)}); float ops left unfused"
    made = collections.Counter(n.op_type for n in fused.graph.node if n.domain == "com.microsoft") - before
    if not made:
        return path, None
    if set(quantized_tensors(fused, config)) - wanted:
        return path, "ONNX Runtime's transformer fusions would rename quantized tensors; float ops left unfused"
    if not any(o.domain == "com.microsoft" for o in fused.opset_import):
        fused.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    out = stage / "fused.onnx"
    onnx.save_model(fused, str(out))
    return out, ("float ops between the GEMMs fused for ONNX Runtime (" + ", ".join(f"{k} ×{v}" for k, v in sorted(made.items()))
                 + "; attention kept as MatMuls)")


def quantized_tensors(model: Any, config: QuantizeConfig) -> dict[str, str]:
    """The activations whose ranges ``config``'s Q/DQ layout can ask for: tensor name → the node asking.

    ``model`` is a ModelProto (weights need not be loaded). A node takes Q/DQ when its op type is in the
    target's op set (:func:`_op_types`; with none given, every op ONNX Runtime's quantizer handles) and
    it is not excluded; the quantizer then asks for the range of each of its inputs that is not an
    initializer (activations, but also Constant outputs, initializers passed through Identity and float
    shape arithmetic), and of its outputs unless the layout quantizes inputs only (tensorrt; the
    transformer default of onnxruntime; ModelOpt's placement, which may put Q/DQ on the inputs of any op). This
    is a superset of what ONNX Runtime's quantizer asks for
    (it skips tensors it cannot type, and some ops quantize only some inputs), in graph order; tensors of
    non-float types are in it too (calibration keeps the float ones). Tensors outside it (an attention
    mask's -inf path, shape computations feeding nothing quantized) never need a range.
    """
    if config.quantizer == "modelopt":
        # ModelOpt's INT8 mode considers every op type of the graph (modelopt.onnx.quantization.int8) and takes
        # each scale it places from trtopt's calibration cache, so every node input may need a range
        op_types = list(config.op_types) if config.op_types else sorted({n.op_type for n in model.graph.node})
        output_free = set(op_types)
    else:
        op_types, _ = _op_types(model, config)
        if op_types is None:
            from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

            op_types = sorted(set(QDQRegistry) | set(QLinearOpsRegistry))  # quantize_static's own default
        output_free = set(TENSORRT_OP_TYPES if config.target == "tensorrt"
                          else TRANSFORMER_OP_TYPES if op_types == list(TRANSFORMER_OP_TYPES) and not config.op_types
                          else ())
    wanted = set(op_types) - set(config.exclude_op_types)
    excluded = set(config.exclude_nodes) | set(first_layer_nodes(model) if config.keep_first_layer_fp32 else ())
    initializers = {t.name for t in model.graph.initializer}
    found: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type not in wanted or node.name in excluded:
            continue
        for name in (*node.input, *(() if node.op_type in output_free else node.output)):
            if name and name not in initializers:
                found.setdefault(name, node.name or node.op_type)
    return found


def _per_tensor_weights(model: Any, config: QuantizeConfig, excluded: set[str]) -> tuple[list[str], str | None]:
    """Weights that must be per-tensor although ``config.per_channel``, and a note naming their nodes.

    A grouped ConvTranspose's weight is (C_in, C_out/groups, kH, kW): its output channels are not one
    axis of the weight, so per-channel scales cannot follow them. ONNX Runtime's quantizer then fails
    on the bias (``operands could not be broadcast together with shapes (8,) (4,)``). Only the
    onnxruntime target quantizes biases; the tensorrt target keeps them float and is left as it is.
    """
    if not config.per_channel or config.target != "onnxruntime":
        return [], None
    nodes = [n for n in model.graph.node if n.op_type == "ConvTranspose" and n.name not in excluded
             and next((a.i for a in n.attribute if a.name == "group"), 1) > 1 and len(n.input) > 1]
    if not nodes:
        return [], None
    names = ", ".join(n.name or n.output[0] for n in nodes[:5]) + (f" (+{len(nodes) - 5})" if len(nodes) > 5 else "")
    return [n.input[1] for n in nodes], (f"per-tensor weights for {len(nodes)} grouped ConvTranspose node(s) ({names}): "
                                         "their output channels are not one axis of the weight")


def embedding_tables(model: Any, excluded: set[str] = frozenset()) -> dict[str, str]:
    """The model's embedding lookups: Gather node name → the float table (initializer) it takes rows from.

    A table counts when it is a float initializer read only by Gathers, as its data input (a table that a
    MatMul also reads, e.g. a tied language-model head, is left to the MatMul's per-channel weights), and
    the Gather is named and not in ``excluded``. ``model`` is a ModelProto; weights need not be loaded.
    """
    from onnx import TensorProto

    floats = {t.name for t in model.graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)}
    readers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in floats:
                readers.setdefault(name, []).append((node, i))
    return {node.name: node.input[0] for node in model.graph.node
            if node.op_type == "Gather" and node.name and node.name not in excluded and node.input[0] in floats
            and all(r.op_type == "Gather" and i == 0 for r, i in readers[node.input[0]])}


def _with_embeddings(model: Any, config: QuantizeConfig, op_types: list[str] | None,
                     tables: dict[str, str]) -> tuple[list[str] | None, set[str]]:
    """The op types for ONNX Runtime's quantizer with the embedding Gathers in or out, and the Gathers to keep float.

    ONNX Runtime's quantizer takes a Gather whose data is an initializer as a weight (int8, per-tensor) and
    puts a Q/DQ with the same scale on its output; its graph optimizer then drops that DQ→Gather→Q, so the
    Gather reads int8 rows and only those are dequantized. Other Gathers keep their current treatment: out
    of an explicit op set, in the "every op" default.
    """
    if config.target != "onnxruntime" or not tables:
        return op_types, set()
    if not config.quantizes_embeddings:
        return op_types, set(tables)
    if op_types is None or "Gather" in op_types:
        return op_types, set()
    others = {n.name for n in model.graph.node if n.op_type == "Gather" and n.name not in tables}
    return [*op_types, "Gather"], others


def _embeddings_note(model: Any, config: QuantizeConfig, tables: dict[str, str]) -> str | None:
    if not tables:
        return None
    sizes = {t.name: _tensor_bytes(t) for t in model.graph.initializer if t.name in set(tables.values())}
    total = f"{len(sizes)} embedding table(s), {sum(sizes.values()) / 1e6:.3g} MB float"
    if config.target == "tensorrt":
        return f"{total} kept float (the tensorrt layout quantizes Conv/MatMul/Gemm inputs only)"
    if config.quantizes_embeddings:
        return f"{total} stored int8 (8-bit, weight-only, per-tensor scale; --no-embeddings keeps them float)"
    return f"{total} kept float (--no-embeddings)"


def _weight_bits_note(config: QuantizeConfig) -> str | None:
    if config.target != "onnxruntime" or config.reduce_range is not None:
        return None
    isa = cpu_isa()
    if config.weights_reduce_range:
        return (f"7-bit weights: this CPU's INT8 path ({isa['int8']}) sums u8×s8 pairs in int16, which 8-bit weights "
                "can saturate")
    return (f"8-bit weights for this CPU's INT8 path ({isa['int8']}); for AVX2-only CPUs (no VNNI/AMX) "
            "quantize with --reduce-range")


def _layout(config: QuantizeConfig, op_types: list[str] | None) -> str:
    if config.quantizer == "modelopt":
        return "ModelOpt's placement: symmetric int8 (zero point 0), per-channel weights, trtopt's activation ranges"
    if config.target == "tensorrt":
        return "symmetric int8 activations and weights (zero point 0), Q/DQ on inputs of Conv/MatMul/Gemm"
    weights = ("per-channel" if config.per_channel else "per-tensor") + (", 7-bit" if config.weights_reduce_range else "")
    where = ("on MatMul/Gemm inputs" if op_types == list(TRANSFORMER_OP_TYPES) and not config.op_types
             else "around fusable ops")
    return f"uint8 asymmetric activations, int8 symmetric {weights} weights (U8S8), Q/DQ {where}"


def _prepare(path: Path, stage: Path, large: bool) -> Path:
    """Shape inference (no graph rewrites, so tensor names stay those the ranges were calibrated on).

    A model below opset 13 (old exporters: Caffe2, early PyTorch, MXNet) is first converted to opset 13,
    where Q/DQ takes the axis per-channel weights need; the converter keeps tensor names. A ``large``
    model (weights over 2 GB) is written with its weights in a side file at each step.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = stage / "prepared.onnx"
    model = onnx.load(str(path), load_external_data=False)
    if _default_opset(model) < PER_CHANNEL_OPSET:
        upgraded = stage / "upgraded.onnx"
        onnx.save(convert_opset(onnx.load(str(path)), PER_CHANNEL_OPSET, path.name), str(upgraded),
                  save_as_external_data=large, location="upgraded.onnx.data" if large else None)
        path = upgraded
    external = {"save_as_external_data": True, "all_tensors_to_one_file": True,
                "external_data_location": "prepared.onnx.data"} if large else {}
    path, out = Path(path).resolve(), out.resolve()
    # chdir: ORT's symbolic shape inference writes sym_shape_infer_temp.onnx (and, failing, its .data files)
    # into the working directory; keep them in the staging folder
    with contextlib.chdir(stage), contextlib.redirect_stdout(io.StringIO()), _quiet_logging():
        try:
            quant_pre_process(str(path), str(out), skip_optimization=True, skip_symbolic_shape=False, **external)
        except Exception:  # ORT's symbolic shape inference fails on some exporter graphs (MiniLM: Expand)
            quant_pre_process(str(path), str(out), skip_optimization=True, skip_symbolic_shape=True, **external)
    return out


def _default_opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def convert_opset(model: Any, opset: int, name: str) -> Any:
    """``model`` (a ModelProto with its weights) converted to default-domain ``opset`` by ONNX's version converter.

    The IR version is raised to the least that opset needs (IR 3 files list every initializer as an
    input, which the Q/DQ initializers added later are not). Raises TrtoptError when the converter
    rejects a node (its message names the op).
    """
    import onnx
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, opset)
    except Exception as e:  # the converter raises RuntimeError/ValidationError naming the node's op
        raise TrtoptError(f"ONNX's version converter cannot take {name} from opset {_default_opset(model)} to {opset}: "
                          f"{first_line(e)}", f"re-export the model at opset {opset} or later") from e
    converted.ir_version = max(converted.ir_version, onnx.helper.find_min_ir_version_for(list(converted.opset_import)))
    return converted


@contextlib.contextmanager
def _quiet_logging():
    """ONNX Runtime's quantization tool logs through the root logger; keep it out of the user's output."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _run_ort_quantizer(prepared: Path, staged: Path, ranges: Ranges, config: QuantizeConfig, excluded: list[str],
                       stage: Path, op_types: list[str] | None, per_tensor: list[str], large: bool,
                       tables: list[str], gemm_inputs_only: bool) -> None:
    import numpy as np
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise TrtoptError("this onnxruntime cannot take precomputed ranges (quantize_static has no calibration_cache_path)",
                          "upgrade onnxruntime (1.32 has it): pip install -U onnxruntime")
    symmetric = config.target == "tensorrt"
    data = {}
    for name, r in ranges.tensors.items():
        low, high = (-r.amax, r.amax) if symmetric else (min(r.min, 0.0), max(r.max, 0.0))
        data[name] = (np.array(low, np.float32), np.array(high, np.float32))
    cache = stage / "ranges.json"
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
    extra: dict[str, Any] = {"ActivationSymmetric": symmetric, "WeightSymmetric": True}
    if gemm_inputs_only:
        # transformer default: Q/DQ on what enters the GEMMs only, so attention scores reach Softmax and
        # projections reach the residual Adds in float (ONNX Runtime runs DQ→MatMul as MatMulIntegerToFloat)
        extra["OpTypesToExcludeOutputQuantization"] = list(TRANSFORMER_OP_TYPES)
    overrides = {name: [{"symmetric": True}] for name in per_tensor}  # no "axis": ONNX Runtime goes per tensor
    # embedding tables: 8 bits even where GEMM weights get 7 (a Gather copies rows, no U8S8 kernel saturates)
    overrides.update({name: [{"symmetric": True, "reduce_range": False}] for name in tables})
    if overrides:
        extra["TensorQuantOverrides"] = overrides
    if symmetric:
        # TensorRT: quantize what enters a GEMM-like op, not what leaves it; biases stay float (TensorRT
        # dequantizes INT8/FP8/INT4 inputs only and folds the float bias into the fused kernel itself).
        extra["OpTypesToExcludeOutputQuantization"] = list(TENSORRT_OP_TYPES)
        extra["QuantizeBias"] = False
    try:
        with contextlib.redirect_stdout(io.StringIO()), _quiet_logging():
            quantize_static(
                str(prepared), str(staged), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types, per_channel=config.per_channel, reduce_range=config.weights_reduce_range,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded, calibrate_method=CalibrationMethod.MinMax, extra_options=extra,
                calibration_cache_path=str(cache), use_external_data_format=large,
            )
    except (KeyError, ValueError) as e:
        # ONNX Runtime reports a tensor without a range as KeyError(name) or as
        # ValueError("Quantization parameters are not specified for param <name>. ...").
        found = re.search(r"for param (\S+?)\.? In static", str(e)) if isinstance(e, ValueError) else None
        if isinstance(e, ValueError) and not found:
            raise
        name = found.group(1) if found else e.args[0]
        missing = f"the ranges have no entry for tensor {name!r}, which the {config.target} layout quantizes"
        if not ranges.settings.get("layouts"):  # ranges of chosen tensors, read from a cache or an older trtopt
            raise TrtoptError(missing, "calibrate this exact model with this trtopt (trtopt calibrate)") from e
        raise TrtoptError(f"{missing} ({'op types ' + ','.join(config.op_types) if config.op_types else 'exclusions'} "
                          f"beyond the layouts the ranges cover: {', '.join(ranges.settings['layouts'])})",
                          "calibrate for this layout: trtopt quantize with --data instead of --ranges calibrates what it "
                          "quantizes (API: calibrate(..., layouts=[this QuantizeConfig]))") from e


def _stamp(path: Path, config: QuantizeConfig, ranges: Ranges, large: bool) -> dict[str, int]:
    """Record the target, calibration and CPU in the model's metadata, so the file says what it is for.

    Returns how many QuantizeLinear / DequantizeLinear nodes the model holds (counted on the same load).
    The weights are not loaded: a side file stays as it is.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts = {"QuantizeLinear": 0, "DequantizeLinear": 0}
    for node in model.graph.node:
        if node.op_type in counts:
            counts[node.op_type] += 1
    props = {"trtopt.quantize.target": config.target, "trtopt.calibration.method": ranges.method,
             "trtopt.calibration.samples": str(ranges.samples), "trtopt.calibration.data_sha256": ranges.data_sha256,
             "trtopt.quantize.weight_bits": "7" if config.weights_reduce_range else "8",
             "trtopt.quantize.cpu_int8": cpu_isa()["int8"], "trtopt.quantize.quantizer": config.quantizer}
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    if large:  # <model name>.data beside the model, whatever name ONNX Runtime's quantizer gave it
        _rename_side_file(model, path)
    onnx.save_model(model, str(path))
    return counts


def _rename_side_file(model: Any, path: Path) -> None:
    """Point every external tensor at ``<model name>.data`` beside the model, renaming the file if needed."""
    from trtopt.artifacts import external_data_files

    sides = external_data_files(model, path.parent)
    wanted = path.with_name(path.name + ".data")
    if not sides:  # every quantized tensor was small enough to stay inline
        return
    if len(sides) > 1:
        raise TrtoptError(f"ONNX Runtime's quantizer wrote {len(sides)} weight side files for {path.name}, expected one",
                          "report this with the model's size and onnxruntime version")
    if sides[0] != wanted:
        os.replace(sides[0], wanted)
        for tensor in _external_tensors(model):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = wanted.name


def _external_tensors(model: Any) -> list[Any]:
    import onnx

    return [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]


def evaluation_config(artifact: OnnxArtifact, threads: int | None = None) -> Any:
    """ONNX Runtime settings that compute what the model's target would compute.

    A ``tensorrt``-target Q/DQ model is evaluated with graph optimizations off, i.e. with the exact
    float semantics of Q/DQ that TensorRT implements. ONNX Runtime's fused S8S8 CPU kernels lose accuracy
    on this CPU (ResNet-18: top-1 agreement with FP32 0.74 fused vs 1.00 unfused, cosine 0.985 vs
    0.9998), which is a property of those kernels, not of the model TensorRT will build.
    """
    from trtopt.backends.ort import OrtConfig

    level = "disable" if artifact.metadata.get("trtopt.quantize.target") == "tensorrt" else "all"
    return OrtConfig(intra_op_threads=threads, graph_optimization_level=level)


def to_fp16(onnx_path: str | os.PathLike, out_path: str | os.PathLike, exclude_op_types: tuple[str, ...] = (),
            force: bool = False, converter: str = "onnxconverter") -> OnnxArtifact:
    """FP16 by casts: weights and compute in float16, inputs/outputs kept float32 behind Cast nodes.

    This is how TensorRT 11 takes FP16 (strongly typed networks: precision comes from the graph, there
    is no FP16 builder flag), and it runs unchanged in ONNX Runtime. The conversion is onnxconverter-
    common's ``convert_float_to_float16`` (it also keeps ops without float16 kernels, e.g. Resize's
    scales, in float32); ``exclude_op_types`` keeps more op types in float32 (e.g. "Softmax").
    ``converter="autocast"`` uses NVIDIA ModelOpt AutoCast instead (`trtopt.quant.autocast`: keeps nodes whose
    values leave float16's range in FP32 and writes consistent Casts itself; needs the ``modelopt`` extra).

    Raises:
        TrtoptError: an unknown converter, the output exists without ``force``, the converter fails, or the
        result does not load in ONNX Runtime (the node it rejects is named).
    """
    import onnx

    check_choice("converter", converter, FP16_CONVERTERS, fix="use onnxconverter (default) or autocast (ModelOpt)")
    target = ensure_writable(out_path, force)
    source = inspect_onnx(onnx_path)
    with staging_dir(target) as stage, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxconverter-common warns about values it clamps to the fp16 range
        if converter == "autocast":
            from trtopt.quant.autocast import autocast_fp16

            half = autocast_fp16(source.path, exclude_op_types)
        else:
            from onnxconverter_common import float16

            half = float16.convert_float_to_float16(onnx.load(str(source.path)), keep_io_types=True,
                                                    op_block_list=list(exclude_op_types) or None)
            _repair_casts(half)
        for key, value in (("trtopt.precision", "fp16"), ("trtopt.fp16.converter", converter)):
            entry = half.metadata_props.add()
            entry.key, entry.value = key, value
        staged = stage / target.name
        onnx.save_model(half, str(staged))
        onnx.checker.check_model(str(staged))
        _require_loadable(staged)
        os.replace(staged, target)
    casts = sum(n.op_type == "Cast" for n in half.graph.node)
    other_nodes = sum(n.op_type not in ("Cast", "Constant") for n in half.graph.node)
    return inspect_onnx(target, notes=(f"fp16 weights and compute, float32 inputs/outputs ({casts} Cast nodes, "
                                       f"{other_nodes} other nodes; converter {converter})",))


def _repair_casts(model: Any) -> None:
    """Make Cast nodes agree with the float16 types the converter declared for their outputs.

    onnxconverter-common retypes a float32 value to float16 in ``value_info`` but leaves the ``to``
    attribute of the Cast that produces it (exported models are full of ``Cast(to=float)`` from
    ``tensor.float()``/``_to_copy``), which ONNX Runtime rejects ("Type (tensor(float16)) of output arg
    ... does not match expected type"). Seen on all-MiniLM-L6-v2.
    """
    from onnx import TensorProto

    declared = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    graph_outputs = {o.name for o in model.graph.output}  # kept float32 (keep_io_types): their Casts are right
    for node in model.graph.node:
        if (node.op_type != "Cast" or node.output[0] in graph_outputs
                or declared.get(node.output[0]) != TensorProto.FLOAT16):
            continue
        for attr in node.attribute:
            if attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16


def _require_loadable(path: Path) -> None:
    """Refuse to write a model ONNX Runtime cannot load (the error names the node it rejects)."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types; all mean "cannot load"
        raise TrtoptError(f"the FP16 model does not load in ONNX Runtime: {first_line(e, limit=300)}",
                          "keep the op types it names in FP32 with --exclude OPTYPE") from e
