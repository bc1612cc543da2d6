"""Quantization-aware training (QAT) and distillation (QAD) with NVIDIA ModelOpt's fake quantization.

``qat(model, train_data, config) -> QATResult`` inserts INT8 fake quantization with
``modelopt.torch.quantization`` (``INT8_DEFAULT_CFG``: per-output-channel weights, per-tensor activations at
the inputs of Conv/Linear/pooling layers; symmetric, scale = amax / 127), calibrates the quantizers' ranges on
the first ``calibration_samples`` training samples (ModelOpt's max calibration), and fine-tunes the
fake-quantized model with the distillation trainer (`trtopt.compress.distill.distill`: one process or
``torchrun``/DDP, checkpoints, bit-for-bit resume):

- mode ``"qat"``: plain task loss, cross-entropy against the labels (``DistillConfig.alpha`` forced to 1);
- mode ``"qad"``: quantization-aware distillation, the loss of `trtopt.compress.losses` against a frozen
  copy of the FP32 model taken *before* fake quantization is inserted; labels are dropped (not needed).

The ranges stay fixed while the weights learn to live with them (ModelOpt's default INT8 recipe), and so do
BatchNorm statistics by default (``freeze_batchnorm``: the ranges were calibrated with them); the ranges are
buffers (``*_quantizer._amax``), so they travel in checkpoints and state dicts. The trained model still
computes in float with fake quantization; `trtopt.quant.qat_export` turns it into the TensorRT Q/DQ ONNX and
the ONNX Runtime CPU layout.

Resume (``training.resume_from``): the quantizers are inserted and calibrated again from the same samples
(deterministic), then the checkpoint overwrites weights and ranges, so a resumed run equals one that ran
straight through.

Errors (`TrtoptError`, one line, raised before any training step): ModelOpt missing (names the extra),
mode "qat" without labels, empty data, data the model cannot take (the first sample is run through the
FP32 model first, and its shape is named), a model where ModelOpt finds nothing to quantize.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from trtopt._modelopt import import_modelopt, quiet
from trtopt.compress.config import QATConfig
from trtopt.compress.data_source import DataSource, call_model, map_tensors
from trtopt.compress.distill import DistillResult, distill
from trtopt.compress.layers import QUANTIZABLE, base_type
from trtopt.compress.trainer import DistillProgress, Metric, frozen_batchnorm
from trtopt.errors import TrtoptError, first_line

_PURPOSE = "quantization-aware training"


@dataclass
class QATResult:
    """What `qat` returns.

    Attributes:
        model: the trained fake-quantized model (eval mode), ModelOpt quantizers inside.
        training: the trainer's record (`DistillResult`: loss curve, evaluations, checkpoints, world size).
        quantizers: enabled weight / activation quantizers ModelOpt inserted.
        calibration_samples: samples that calibrated the ranges.
        mode: "qat" or "qad".
    """

    model: nn.Module
    training: DistillResult
    quantizers: dict[str, int]
    calibration_samples: int
    mode: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (the model named by its class)."""
        return {"model": type(self.model).__name__, "mode": self.mode, "quantizers": dict(self.quantizers),
                "calibration_samples": self.calibration_samples, "training": self.training.to_dict()}


def qat(model: nn.Module, train_data: Any, config: QATConfig | None = None, eval_data: Any = None,
        metric: Metric | None = None, progress: Callable[[DistillProgress], None] | None = None,
        set_ranges: Callable[[nn.Module], Any] | None = None) -> QATResult:
    """Insert INT8 fake quantization into ``model``, calibrate it, and fine-tune it (QAT or QAD).

    Args:
        model: the FP32 model (modified in place: quantizers are inserted and weights trained).
        train_data: ``(inputs, labels-or-None)`` or a Dataset of ``(inputs, label)`` (`trtopt.compress.data_source`);
            inputs as the model's ``forward`` takes them (e.g. float32 (N, C, H, W) images).
        config: `QATConfig` (defaults when None).
        eval_data: same forms, evaluated during training (accuracy with labels; agreement with the FP32
            model in mode "qad" without labels).
        metric: ``metric(model_out, fp32_out, labels) -> float`` (see `trtopt.compress.distill.distill`).
        progress: called on rank 0 after every step.
        set_ranges: called with the fake-quantized model after ModelOpt's max calibration, before training, to
            set other ranges in place, e.g. trtopt's PTQ ranges: ``lambda m: set_amax_(m, calibrated_amax(...))``
            (`trtopt.quant.qat_export.calibrated_amax`).

    Returns:
        `QATResult` with the trained fake-quantized model in eval mode.

    Raises:
        TrtoptError: see the module docstring.
    """
    config = config or QATConfig()
    mtq = import_modelopt("modelopt.torch.quantization", _PURPOSE)
    source = DataSource(train_data, "QAT training data")
    if config.mode == "qat" and not source.labelled:
        raise TrtoptError("QAT mode 'qat' trains on the task loss but the training data has no labels",
                          "give labelled data, or use mode 'qad' (distillation from the FP32 model, no labels)")
    calibration = source.batch(torch.arange(min(config.calibration_samples, len(source))))[0]
    model.eval()
    check_runs(model, calibration, "QAT training data")
    teacher = copy.deepcopy(model).eval() if config.mode == "qad" else None
    insert_fake_quant(model, calibration, mtq)
    if set_ranges is not None:
        set_ranges(model)
    counts = quantizer_counts(model)
    if not counts["weight"]:
        raise TrtoptError(f"ModelOpt found no Conv/Linear layer to quantize in {type(model).__name__}",
                          "QAT pays off for models whose MACs sit in Conv/Linear layers; keep this model in FP32/FP16")
    training = config.training
    frozen = config.freeze_batchnorm or config.eval_mode
    with frozen_batchnorm(model, everything=config.eval_mode) if frozen else contextlib.nullcontext():
        if config.mode == "qat":
            result = distill(model, None, train_data, replace(training, alpha=1.0), eval_data=eval_data, metric=metric,
                             progress=progress)
        else:
            # array data: labels dropped (pure distillation); a Dataset's labels, if any, weigh in with alpha
            data = (source.inputs, None) if source.dataset is None else train_data
            result = distill(model, teacher, data, training, eval_data=eval_data, metric=metric, progress=progress)
    return QATResult(model=result.student, training=result, quantizers=counts,
                     calibration_samples=int(_first_dim(calibration)), mode=config.mode)


def check_runs(model: nn.Module, inputs: Any, what: str) -> None:
    """Run ``model`` on one sample of ``inputs`` (no grad); a failure is one line naming the sample's shape.

    Raises:
        TrtoptError: the model cannot take the data (wrong shape, dtype or number of inputs).
    """
    sample = map_tensors(inputs, lambda t: t[:1])
    try:
        with torch.no_grad():
            call_model(model, sample)
    except Exception as e:  # shape/dtype errors come as RuntimeError, ValueError, TypeError, IndexError ...
        shapes = map_tensors(sample, lambda t: tuple(t.shape))
        raise TrtoptError(f"{what} (one sample shaped {shapes}) does not fit {type(model).__name__}: "
                          f"{first_line(e, limit=160)}", "give samples shaped like the model's input "
                          "(e.g. float32 N×C×H×W images at its resolution)") from None


def insert_fake_quant(model: nn.Module, calibration: Any, mtq: Any = None) -> nn.Module:
    """ModelOpt's INT8 fake quantization (``INT8_DEFAULT_CFG``) inserted into ``model`` in place, its ranges
    calibrated (max of |x|) on the ``calibration`` batch (inputs as ``forward`` takes them). The quantizers
    ModelOpt puts on normalization layers (LayerNorm, GroupNorm, InstanceNorm, RMSNorm) are disabled: norms stay
    float, as in TensorRT's rules and trtopt's tensorrt layout.

    Returns ``model``. Raises TrtoptError when ModelOpt is not installed.
    """
    mtq = mtq or import_modelopt("modelopt.torch.quantization", _PURPOSE)
    chunks = _chunks(calibration, 64)

    def forward_loop(m: nn.Module) -> None:
        with torch.no_grad():
            for chunk in chunks:
                call_model(m, chunk)

    model.eval()
    _register_layer_subclasses(model)
    with quiet():  # ModelOpt prints "Inserted N quantizers"
        mtq.quantize(model, copy.deepcopy(mtq.INT8_DEFAULT_CFG), forward_loop)
    for module in model.modules():
        if isinstance(module, _NORMS):
            for _, quantizer in _quantizers(module):
                quantizer.disable()
    return model


# ModelOpt's INT8 default also quantizes the inputs of normalization layers: a transformer's LayerNorm reads the
# residual sum, whose outlier channels (amax 223 in all-MiniLM-L6-v2's first layer vs 3-30 at the Linear inputs)
# leave the other channels a few levels. Those quantizers cost MiniLM its accuracy (cosine to FP32 0.733; 0.983
# with them off, trtopt's tensorrt layout 0.981), and TensorRT's rules (trtopt's tensorrt layout) keep norms float.
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm, nn.RMSNorm)


def _register_layer_subclasses(model: nn.Module) -> None:
    """Register with ModelOpt every subclass of a Conv/Linear layer in ``model`` that overrides ``forward``.

    ModelOpt matches a subclass to its base's quantized class only when ``forward`` is inherited, so
    e.g. ``Conv2dStaticSamePadding`` (EfficientNet-Lite: pads, then ``F.conv2d``) stayed unquantized and
    Lite0's "fake quantized" model quantized only its classifier (1 of 50 layers). Registering the
    subclass with its base's quantized class quantizes the ``forward`` input and the weight, as for the
    base (zero padding is exact in INT8). The registration is process-wide, as ModelOpt's own.
    """
    from modelopt.torch.quantization.nn import QuantModuleRegistry

    for cls, module in {type(m): m for m in model.modules()}.items():
        base = base_type(module, QUANTIZABLE)
        if base is not None and cls not in QuantModuleRegistry:
            quantized = QuantModuleRegistry._registry[getattr(nn, base)]
            QuantModuleRegistry.register({cls: f"{cls.__module__}.{cls.__qualname__}"})(quantized)


def set_amax_(model: nn.Module, amax: dict[str, float]) -> int:
    """Set the range (amax, float units of the tensor) of each named ModelOpt quantizer in ``model``, in place.

    ``amax``: quantizer module path → amax (e.g. `trtopt.quant.qat_export.calibrated_amax`: trtopt's calibrated
    ranges). Returns how many quantizers were set. Raises TrtoptError naming a path ``model`` has no quantizer at.
    """
    quantizers = dict(_quantizers(model))
    missing = sorted(set(amax) - set(quantizers))
    if missing:
        raise TrtoptError(f"{type(model).__name__} has no quantizer {missing[0]!r} ({len(missing)} of {len(amax)} "
                          "ranges name none)", "give ranges computed for this fake-quantized model")
    for name, value in amax.items():
        quantizers[name].amax = torch.tensor(float(value))
    return len(amax)


def quantizer_counts(model: nn.Module) -> dict[str, int]:
    """Enabled ModelOpt quantizers in ``model`` by kind: {"weight": n, "input": n}."""
    counts = {"weight": 0, "input": 0}
    for name, module in _quantizers(model):
        kind = name.rsplit(".", 1)[-1].removesuffix("_quantizer")
        if kind in counts and module.is_enabled:
            counts[kind] += 1
    return counts


def _quantizers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if type(module).__name__ == "TensorQuantizer":
            yield name, module


def _first_dim(inputs: Any) -> int:
    sizes: list[int] = []
    map_tensors(inputs, lambda t: sizes.append(int(t.shape[0])))
    return sizes[0]


def _chunks(inputs: Any, size: int) -> list[Any]:
    total = _first_dim(inputs)
    return [map_tensors(inputs, lambda t, s=start: t[s:s + size]) for start in range(0, total, size)]
