"""Ranges → INT8 Q/DQ ONNX, in the layout each target runtime runs fast.

One set of calibrated ranges (`trtopt.quant.calibrate`) serves every target; only the Q/DQ layout differs:

``onnxruntime``  U8S8: asymmetric uint8 activations (zero point from the calibrated min/max), symmetric
                 int8 per-channel weights, Q/DQ around every operator ONNX Runtime's CPU kernels fuse
                 (Conv, MatMul, Gemm, Add, Relu, pooling, Concat, ...). On this CPU (AVX-512 VNNI) this
                 is the layout that is faster than FP32; S8S8 is not (ENVIRONMENT.md).
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
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtopt._config import check_choice
from trtopt.artifacts import OnnxArtifact, Ranges, inspect_onnx
from trtopt.errors import TrtoptError, first_line
from trtopt.files import ensure_writable, staging_dir
from trtopt.progress import StepCallback

TARGETS = ("onnxruntime", "tensorrt")
# Ops whose inputs carry Q/DQ in TensorRT's rules (weights and activations).
TENSORRT_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops that make a model worth quantizing at all (they hold the MACs).
COMPUTE_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
PER_CHANNEL_OPSET = 13  # the first opset whose QuantizeLinear/DequantizeLinear take an axis


@dataclass(frozen=True)
class QuantizeConfig:
    """How ranges become a Q/DQ model.

    Attributes:
        target: "onnxruntime" (U8S8, for CPUs) or "tensorrt" (symmetric S8S8, inputs of GEMM-like ops).
        per_channel: per-output-channel weight scales (default True: depthwise convolutions need them;
            EfficientNet-Lite0 per-tensor kept top-1 agreement with FP32 on 10 of 19 photos).
        reduce_range: 7-bit weights; None = the target's default: True for onnxruntime, False for
            tensorrt. ONNX Runtime's x86 U8S8 kernels multiply u8×s8 pairs into int16 sums that can
            saturate; 7-bit weights cannot. Measured here: EfficientNet-Lite0 per-channel top-1 agreement
            11/19 with 8-bit weights vs 17/19 with 7-bit (the same as exact Q/DQ semantics), at the same speed.
        exclude_nodes: node names kept in FP32 (mixed precision).
        exclude_op_types: op types kept in FP32 (e.g. "Softmax", "Gemm").
        op_types: op types to quantize; None = the target's default set.
    """

    target: str = "onnxruntime"
    per_channel: bool = True
    reduce_range: bool | None = None
    exclude_nodes: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    op_types: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_choice("target", self.target, TARGETS, fix="use onnxruntime (U8S8, CPUs) or tensorrt (S8S8 Q/DQ)")

    @property
    def weights_reduce_range(self) -> bool:
        """Whether weights use 7 bits (resolves the target default)."""
        return self.target == "onnxruntime" if self.reduce_range is None else self.reduce_range

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "per_channel": self.per_channel, "reduce_range": self.weights_reduce_range, "exclude_nodes": list(self.exclude_nodes),
                "exclude_op_types": list(self.exclude_op_types),
                "op_types": None if self.op_types is None else list(self.op_types)}


def quantize(onnx_path: str | os.PathLike, ranges: Ranges, out_path: str | os.PathLike,
             config: QuantizeConfig = QuantizeConfig(), force: bool = False,
             on_step: StepCallback | None = None) -> OnnxArtifact:
    """Write the INT8 Q/DQ version of an FP32 ONNX model for ``config.target``.

    Args:
        onnx_path: the FP32 ONNX model that ``ranges`` were calibrated on.
        ranges: calibrated activation ranges (tensor names of ``onnx_path``).
        out_path: destination ``.onnx`` (written atomically; weights inline unless > 2 GB).
        config: target layout, per-channel weights, exclusions.
        force: overwrite an existing output.

    Raises:
        TrtoptError: the model has nothing to quantize, ``config.op_types`` holds a typo or matches no
        node (the message lists the op types present), ranges lack a tensor the layout needs, the ranges
        come from another model, or the output exists without ``force``.
    """
    import onnx

    step = on_step or (lambda _msg: None)
    target = ensure_writable(out_path, force)
    source = inspect_onnx(onnx_path)
    if ranges.model_sha256 and ranges.model_sha256 != source.sha256:
        raise TrtoptError(f"the ranges were calibrated on another model (sha256 {ranges.model_sha256[:12]}…, "
                          f"{source.path.name} is {source.sha256[:12]}…)", f"calibrate {source.path.name} itself")
    model = onnx.load(str(source.path), load_external_data=False)
    excluded = set(config.exclude_nodes) | {n.name for n in model.graph.node if n.op_type in config.exclude_op_types}
    unknown = sorted(set(config.exclude_nodes) - {n.name for n in model.graph.node})
    if unknown:
        raise TrtoptError(f"--exclude names node {unknown[0]!r}, which is not in {source.path.name}",
                          "list node names with trtopt quantize --list-nodes or exclude by op type")
    _check_op_types(model, config.op_types, source.path.name)
    compute = [n for n in model.graph.node if n.op_type in COMPUTE_OP_TYPES and n.name not in excluded]
    if not compute:
        raise TrtoptError(f"{source.path.name} has no quantizable layers ({', '.join(COMPUTE_OP_TYPES)}) left to quantize",
                          "INT8 pays off only for Conv/MatMul/Gemm; keep this model in FP32/FP16")
    with staging_dir(target) as stage:
        step("preparing the model (shape inference)")
        prepared = _prepare(source.path, stage)
        step(f"placing Q/DQ for {config.target}")
        staged = stage / target.name
        _run_ort_quantizer(prepared, staged, ranges, config, sorted(excluded), stage)
        counts = _stamp(staged, config, ranges)
        if not counts["QuantizeLinear"]:  # e.g. op_types naming only ops ONNX Runtime's quantizer leaves alone
            raise TrtoptError(f"quantizing {source.path.name} for target {config.target} placed no Q/DQ node "
                              f"(op types {', '.join(config.op_types or ('of the target',))})",
                              f"quantize op types that hold the MACs: {', '.join(COMPUTE_OP_TYPES)}")
        try:
            onnx.checker.check_model(str(staged))
        except onnx.checker.ValidationError as e:  # ONNX Runtime's tool can emit graphs the checker rejects
            first = " ".join(str(e).split())[:240]
            raise TrtoptError(f"quantizing {source.path.name} for target {config.target} gives an invalid model: {first}",
                              "keep the op named there in FP32 (--exclude-op-type OP) or quantize a simpler graph") from e
        os.replace(staged, target)
    notes = (f"target {config.target}: {_layout(config)}",
             f"{counts['QuantizeLinear']} QuantizeLinear, {counts['DequantizeLinear']} DequantizeLinear nodes",
             f"{len(excluded)} node(s) kept in FP32" + (f": {', '.join(sorted(excluded)[:8])}" if excluded else ""))
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


def _layout(config: QuantizeConfig) -> str:
    if config.target == "tensorrt":
        return "symmetric int8 activations and weights (zero point 0), Q/DQ on inputs of Conv/MatMul/Gemm"
    weights = ("per-channel" if config.per_channel else "per-tensor") + (", 7-bit" if config.weights_reduce_range else "")
    return f"uint8 asymmetric activations, int8 symmetric {weights} weights (U8S8), Q/DQ around fusable ops"


def _prepare(path: Path, stage: Path) -> Path:
    """Shape inference (no graph rewrites, so tensor names stay those the ranges were calibrated on).

    A model below opset 13 (old exporters: Caffe2, early PyTorch, MXNet) is first converted to opset 13,
    where Q/DQ takes the axis per-channel weights need; the converter keeps tensor names.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = stage / "prepared.onnx"
    model = onnx.load(str(path), load_external_data=False)
    if _default_opset(model) < PER_CHANNEL_OPSET:
        upgraded = stage / "upgraded.onnx"
        onnx.save(convert_opset(onnx.load(str(path)), PER_CHANNEL_OPSET, path.name), str(upgraded))
        path = upgraded
    with contextlib.redirect_stdout(io.StringIO()), _quiet_logging():
        try:
            quant_pre_process(str(path), str(out), skip_optimization=True, skip_symbolic_shape=False)
        except Exception:  # ORT's symbolic shape inference fails on some exporter graphs (MiniLM: Expand)
            quant_pre_process(str(path), str(out), skip_optimization=True, skip_symbolic_shape=True)
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


def _run_ort_quantizer(prepared: Path, staged: Path, ranges: Ranges, config: QuantizeConfig,
                       excluded: list[str], stage: Path) -> None:
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
    op_types = list(config.op_types) if config.op_types else (list(TENSORRT_OP_TYPES) if symmetric else None)
    extra: dict[str, Any] = {"ActivationSymmetric": symmetric, "WeightSymmetric": True}
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
                calibration_cache_path=str(cache),
            )
    except (KeyError, ValueError) as e:
        # ONNX Runtime reports a tensor without a range as KeyError(name) or as
        # ValueError("Quantization parameters are not specified for param <name>. ...").
        found = re.search(r"for param (\S+?)\.? In static", str(e)) if isinstance(e, ValueError) else None
        if isinstance(e, ValueError) and not found:
            raise
        name = found.group(1) if found else e.args[0]
        raise TrtoptError(f"the ranges have no entry for tensor {name!r}, which the {config.target} layout quantizes",
                          "calibrate this exact model (trtopt calibrate) so every activation has a range") from e


def _stamp(path: Path, config: QuantizeConfig, ranges: Ranges) -> dict[str, int]:
    """Record the target and calibration in the model's metadata, so the file says what it is for.

    Returns how many QuantizeLinear / DequantizeLinear nodes the model holds (counted on the same load).
    """
    import onnx

    model = onnx.load(str(path))
    counts = {"QuantizeLinear": 0, "DequantizeLinear": 0}
    for node in model.graph.node:
        if node.op_type in counts:
            counts[node.op_type] += 1
    props = {"trtopt.quantize.target": config.target, "trtopt.calibration.method": ranges.method,
             "trtopt.calibration.samples": str(ranges.samples), "trtopt.calibration.data_sha256": ranges.data_sha256}
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(model, str(path))
    return counts


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
            force: bool = False) -> OnnxArtifact:
    """FP16 by casts: weights and compute in float16, inputs/outputs kept float32 behind Cast nodes.

    This is how TensorRT 11 takes FP16 (strongly typed networks: precision comes from the graph, there
    is no FP16 builder flag), and it runs unchanged in ONNX Runtime. The conversion is onnxconverter-
    common's ``convert_float_to_float16`` (it also keeps ops without float16 kernels, e.g. Resize's
    scales, in float32); ``exclude_op_types`` keeps more op types in float32 (e.g. "Softmax").
    """
    import onnx
    from onnxconverter_common import float16

    target = ensure_writable(out_path, force)
    source = inspect_onnx(onnx_path)
    model = onnx.load(str(source.path))
    with staging_dir(target) as stage, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxconverter-common warns about values it clamps to the fp16 range
        half = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=list(exclude_op_types) or None)
        _repair_casts(half)
        entry = half.metadata_props.add()
        entry.key, entry.value = "trtopt.precision", "fp16"
        staged = stage / target.name
        onnx.save_model(half, str(staged))
        onnx.checker.check_model(str(staged))
        _require_loadable(staged)
        os.replace(staged, target)
    casts = sum(n.op_type == "Cast" for n in half.graph.node)
    return inspect_onnx(target, notes=(f"fp16 weights and compute, float32 inputs/outputs ({casts} Cast nodes)",))


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
