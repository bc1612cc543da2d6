"""QAT / QAD vs PTQ on a MobileNet-style CNN trained on Fashion-MNIST (real labelled data, offline).

Parts (``--part``, default ``accuracy``):

``accuracy``  train the FP32 model (seeded; reused from ``--fp32-cache`` when present), then on the held-out
              test images: FP32, PTQ INT8 (trtopt's best: calibration method auto, both layouts), QAT with
              labels and QAD without labels (ModelOpt fake quantization fine-tuned by trtopt's trainer), each
              QAT model exported to both layouts and evaluated in ONNX Runtime (the tensorrt layout with exact
              Q/DQ semantics, graph optimizations off, as `trtopt.quant.quantize.evaluation_config` does);
              McNemar's exact test of each against FP32 (``paired_tests``). Beside `export_qat`'s onnxruntime
              layout (uint8 on the trained grid), candidates made from the same export (`ort_layout_candidates`:
              uint8 on the learned [min, max], S8S8 with the trained scales, the tensorrt Q/DQ model on ONNX
              Runtime's fused kernels) are rows too, and the QAT model's are timed against the PTQ U8S8 model
              with a same-model control (``ort_speed``, batch 1 and 8, ``--speed-iterations``/``--speed-repeats``).
              ``--model NAME``: a ``screen`` architecture (its cached weights) instead of the MobileNet-style CNN.
``screen``    architectures trained the same way (BatchNorm or not, ReLU/SiLU/GELU, widths 4/8/16, separable
              convolutions without BatchNorm between depthwise and pointwise, EfficientNet-B0-style MBConv with
              squeeze-excitation, MobileNetV3-style hardswish/hardsigmoid-SE blocks, linear bottlenecks with
              residual adds and no BatchNorm, 20 epochs, 56-px inputs with a fourth stage; `SCREEN`), each
              through trtopt's best PTQ: looking for one where INT8 PTQ loses ≥ 1 point (raw difference and
              McNemar's paired test against FP32).
``placement`` the tensorrt target placed by trtopt vs by ModelOpt (same ranges: calibration method auto), and
              FP16 by onnxconverter-common vs ModelOpt AutoCast, on the Fashion-MNIST CNN (``--fp32-cache``) and
              trtopt's digits CNN: Q/DQ counts, the op types they feed and follow, nodes, test accuracy on the CPU
              (exact Q/DQ semantics), load in ONNX Runtime, cosine to FP32.
``ddp``       training cost of QAT: seconds per step with 1 process × 2 threads, 2 processes (torchrun, gloo)
              × 1 thread and 1 process × 1 thread, same global batch (128), the layouts interleaved and
              repeated (``--ddp-rounds``; medians), and the loss curves compared.

Data: Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``): a subset of the 60k training
images trains (``--train-samples``), the first ``--test-samples`` of the 10k test images evaluate. Writes
``benchmarks/results/qat_fashion_mnist.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from bench_int8_zoo import FASHION, _idx, mcnemar  # the Fashion-MNIST files, their idx reader, the paired test
from torch import nn

from trtopt.compress.config import DistillConfig, QATConfig
from trtopt.environment import cpu_isa, environment

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel mean and std (pixels in [0, 1])
RESULTS = Path(__file__).resolve().parent / "results"
THREADS = 2


def fashion_mnist(split: str, limit: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` images of a split, normalized: (N, 1, size, size) float32 and (N,) int64 labels;
    ``size`` other than 28 resizes bilinearly (torch ``interpolate``, ``align_corners=False``)."""
    prefix = "train" if split == "train" else "t10k"
    images = _idx(FASHION / f"{prefix}-images-idx3-ubyte.gz")[:limit].astype(np.float32) / 255.0
    labels = _idx(FASHION / f"{prefix}-labels-idx1-ubyte.gz")[:limit].astype(np.int64)
    x = ((images - MEAN) / STD)[:, None].astype(np.float32)
    if size != 28:
        x = nn.functional.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear").numpy()
    return x, labels


def _ds(cin: int, cout: int, stride: int, bn: bool = True, act: type[nn.Module] = nn.ReLU,
        dw_norm: bool = True, dw_act: bool = True) -> nn.Sequential:
    """Depthwise-separable block: depthwise 3×3 + BN + act, pointwise 1×1 + BN + act (MobileNet v1).

    ``bn`` False: biases instead of BatchNorm. ``dw_norm`` False: no BatchNorm after the depthwise conv (its
    bias instead; Xception-style), and ``dw_act`` False also no activation between depthwise and pointwise."""
    if not dw_norm:
        return nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=True), *([act()] if dw_act else []),
                             nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), act())
    norm = (lambda c: [nn.BatchNorm2d(c)]) if bn else (lambda c: [])
    return nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=not bn), *norm(cin), act(),
                         nn.Conv2d(cin, cout, 1, bias=not bn), *norm(cout), act())


class MobileNetTiny(nn.Module):
    """MobileNet-v1-style classifier for 1×28×28 (or larger) images: stem 3×3 conv (stride 2), four to eight
    depthwise-separable blocks (blocks 7-8 add a stage: stride 2, 8× width), GAP, FC. Keyword arguments as
    `_ds`; the defaults are the benchmark's model."""

    def __init__(self, width: int = 16, classes: int = 10, bn: bool = True, act: type[nn.Module] = nn.ReLU,
                 blocks: int = 4, dw_norm: bool = True, dw_act: bool = True) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, 2, 1, bias=not bn), *([nn.BatchNorm2d(w)] if bn else []), act())
        shapes = ((w, 2 * w, 2), (2 * w, 2 * w, 1), (2 * w, 4 * w, 2), (4 * w, 4 * w, 1), (4 * w, 4 * w, 1),
                  (4 * w, 4 * w, 1), (4 * w, 8 * w, 2), (8 * w, 8 * w, 1))[:blocks]
        self.blocks = nn.Sequential(*(_ds(a, b, st, bn, act, dw_norm, dw_act) for a, b, st in shapes))
        self.head = nn.Linear(shapes[-1][1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class _SqueezeExcite(nn.Module):
    """x · gate(expand(act(reduce(GAP(x))))): EfficientNet's SiLU/sigmoid, MobileNetV3's ReLU/hardsigmoid."""

    def __init__(self, channels: int, reduced: int, act: type[nn.Module] = nn.SiLU,
                 gate: type[nn.Module] = nn.Sigmoid) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(channels, reduced, 1), nn.Conv2d(reduced, channels, 1)
        self.act, self.gate = act(), gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True)))))


#: MobileNetV3's nonlinearities (Howard et al. 2019): hardswish in the body, ReLU and hardsigmoid in the SE.
MOBILENET_V3 = {"act": nn.Hardswish, "se_act": nn.ReLU, "gate": nn.Hardsigmoid}


class _MBConv(nn.Module):
    """Inverted residual: 1×1 expansion, depthwise 3×3, squeeze-excitation, linear 1×1 projection, residual
    add when the shape allows. Defaults: EfficientNet-B0's block (BN, SiLU, SE SiLU/sigmoid); ``se`` False
    and ``bn`` False (biases instead): MobileNetV2's linear bottleneck without BatchNorm."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4, act: type[nn.Module] = nn.SiLU,
                 se_act: type[nn.Module] = nn.SiLU, gate: type[nn.Module] = nn.Sigmoid, se: bool = True,
                 bn: bool = True) -> None:
        super().__init__()
        h = cin * expand
        norm = (lambda c: [nn.BatchNorm2d(c)]) if bn else (lambda c: [])
        excite = [_SqueezeExcite(h, max(4, cin // 4), se_act, gate)] if se else []
        self.body = nn.Sequential(nn.Conv2d(cin, h, 1, bias=not bn), *norm(h), act(),
                                  nn.Conv2d(h, h, 3, stride, 1, groups=h, bias=not bn), *norm(h), act(),
                                  *excite, nn.Conv2d(h, cout, 1, bias=not bn), *norm(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MBConvTiny(nn.Module):
    """EfficientNet-B0-style classifier for 1×28×28 images (SiLU and squeeze-excitation: what EfficientNet-Lite
    removed for quantization): stem, five MBConv blocks, GAP, FC. Keyword arguments as `_MBConv` (``act`` also
    the stem's): ``**MOBILENET_V3`` gives MobileNetV3's nonlinearities."""

    def __init__(self, width: int = 16, classes: int = 10, **block: Any) -> None:
        super().__init__()
        w = width
        bn = block.get("bn", True)
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, 2, 1, bias=not bn), *([nn.BatchNorm2d(w)] if bn else []),
                                  block.get("act", nn.SiLU)())
        self.blocks = nn.Sequential(_MBConv(w, w, 1, 1, **block), _MBConv(w, 2 * w, 2, **block),
                                    _MBConv(2 * w, 2 * w, 1, **block), _MBConv(2 * w, 4 * w, 2, **block),
                                    _MBConv(4 * w, 4 * w, 1, **block))
        self.head = nn.Linear(4 * w, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class Screen(NamedTuple):
    """One ``--part screen`` architecture: its constructor, FP32 training epochs (None: ``--fp32-epochs``) and
    input side in pixels (Fashion-MNIST resized to it when not 28)."""

    factory: Callable[[], nn.Module]
    epochs: int | None = None
    size: int = 28


#: ``--part screen``: architectures tried for one where trtopt's best INT8 PTQ loses ≥ 1 point. Training has no
#: weight decay (DistillConfig's default 0).
SCREEN = {"bn_relu": Screen(MobileNetTiny), "bn_relu_w8": Screen(lambda: MobileNetTiny(width=8)),
          "nobn_relu_w8": Screen(lambda: MobileNetTiny(width=8, bn=False)),
          "bn_silu": Screen(lambda: MobileNetTiny(act=nn.SiLU)),
          "nobn_silu": Screen(lambda: MobileNetTiny(bn=False, act=nn.SiLU)),
          "nobn_relu_6blocks": Screen(lambda: MobileNetTiny(bn=False, blocks=6)),
          "bn_gelu": Screen(lambda: MobileNetTiny(act=nn.GELU)),
          "separable_linear": Screen(lambda: MobileNetTiny(dw_norm=False, dw_act=False)),
          "separable_relu": Screen(lambda: MobileNetTiny(dw_norm=False)),
          "separable_linear_w8": Screen(lambda: MobileNetTiny(width=8, dw_norm=False, dw_act=False)),
          "mbconv_se_silu": Screen(MBConvTiny),
          "mobilenetv3_hswish_se_w8": Screen(lambda: MBConvTiny(width=8, **MOBILENET_V3)),
          "linear_bottleneck_nobn_w8": Screen(lambda: MBConvTiny(width=8, se=False, bn=False, act=nn.ReLU)),
          "bn_relu_w4": Screen(lambda: MobileNetTiny(width=4)),
          "nobn_relu_w4": Screen(lambda: MobileNetTiny(width=4, bn=False)),
          "separable_linear_w4": Screen(lambda: MobileNetTiny(width=4, dw_norm=False, dw_act=False)),
          "bn_relu_20ep": Screen(MobileNetTiny, epochs=20),
          "nobn_relu_w8_20ep": Screen(lambda: MobileNetTiny(width=8, bn=False), epochs=20),
          "separable_linear_20ep": Screen(lambda: MobileNetTiny(dw_norm=False, dw_act=False), epochs=20),
          "bn_relu_56px_8blocks": Screen(lambda: MobileNetTiny(blocks=8), size=56),
          # without BN, 8 blocks did not train at 56 px (constant prediction, loss ln 10, at lr 3e-3 and 1e-3)
          "nobn_relu_56px_6blocks": Screen(lambda: MobileNetTiny(bn=False, blocks=6), size=56),
          "nobn_relu_w4_20ep": Screen(lambda: MobileNetTiny(width=4, bn=False), epochs=20),
          "linear_bottleneck_nobn_w8_20ep": Screen(lambda: MBConvTiny(width=8, se=False, bn=False, act=nn.ReLU),
                                                   epochs=20),
          "mobilenetv3_hswish_se_w8_20ep": Screen(lambda: MBConvTiny(width=8, **MOBILENET_V3), epochs=20)}


def torch_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(x[i:i + 500])).argmax(1) for i in range(0, len(x), 500)])
    return float((pred.numpy() == y).mean())


def onnx_correct(path: Path, x: np.ndarray, y: np.ndarray, ort: Any = None) -> np.ndarray:
    """Per test image, whether the top-1 prediction in ONNX Runtime is right: (N,) bool (its mean is the
    accuracy; without ``ort`` (an `OrtConfig`) a tensorrt-layout model runs with exact Q/DQ semantics:
    `onnx_candidate` applies `trtopt.quant.quantize.evaluation_config`)."""
    return _logits(path, {"input": x}, ort).argmax(1) == y


def qdq_summary(path: Path) -> dict[str, Any]:
    """Q/DQ counts and where they sit: op types fed by a DequantizeLinear, op types whose output is quantized."""
    import onnx

    model = onnx.load(str(path))
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for n in model.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n.op_type)
    feeds: dict[str, int] = {}
    after: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear":
            for op in consumers.get(n.output[0], []):
                feeds[op] = feeds.get(op, 0) + 1
        elif n.op_type == "QuantizeLinear" and n.input[0] in producer:
            op = producer[n.input[0]]
            after[op] = after.get(op, 0) + 1
    ops = [n.op_type for n in model.graph.node]
    return {"quantize_linear": ops.count("QuantizeLinear"), "dequantize_linear": ops.count("DequantizeLinear"),
            "nodes": len(ops), "dq_feeds_op_types": dict(sorted(feeds.items())),
            "q_after_op_types": dict(sorted(after.items()))}


def train_fp32(x: np.ndarray, y: np.ndarray, epochs: int, cache: Path,
               factory: Callable[[], nn.Module] = MobileNetTiny) -> tuple[nn.Module, dict[str, Any]]:
    """Seeded FP32 training (AdamW lr 3e-3, no weight decay, cosine, batch 64), or the weights in ``cache``.
    The training record is kept beside the weights (``.json``) and returned with ``cached`` when reused."""
    from trtopt.compress.distill import distill

    torch.manual_seed(0)
    model = factory()
    record = cache.with_suffix(".json")
    if cache.exists():
        model.load_state_dict(torch.load(cache, weights_only=True))
        return model.eval(), {"cached": str(cache), **(json.loads(record.read_text()) if record.exists() else {})}
    start = time.perf_counter()
    result = distill(model, None, (x, y), DistillConfig(alpha=1.0, epochs=epochs, batch_size=64, lr=3e-3,
                                                      warmup_steps=20, device="cpu"))
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(result.student.state_dict(), cache)
    training = {"epochs": epochs, "seconds": round(time.perf_counter() - start, 1),
                "final_epoch_loss": result.epoch_losses[-1]}
    record.write_text(json.dumps(training))
    return result.student.eval(), training


def part_accuracy(args: argparse.Namespace) -> dict[str, Any]:
    from trtopt.compress.qat import qat
    from trtopt.export import export_onnx
    from trtopt.models.spec import InputSpec, LoadedModel
    from trtopt.quant.calibrate import CalibrationConfig, calibrate
    from trtopt.quant.qat_export import export_qat
    from trtopt.quant.quantize import QuantizeConfig, quantize

    entry, name = (SCREEN[args.model], args.model) if args.model else (Screen(MobileNetTiny), "mobilenet_tiny")
    x_train, y_train = fashion_mnist("train", args.train_samples, entry.size)
    x_test, y_test = fashion_mnist("test", args.test_samples, entry.size)
    fp32, fp32_training = train_fp32(x_train, y_train, entry.epochs or args.fp32_epochs, Path(args.fp32_cache),
                                     entry.factory)
    inputs = (InputSpec("input", (1, entry.size, entry.size)),)
    calib = {"input": x_train[:args.calibration_samples]}
    out: dict[str, Any] = {"model": name, "fp32_training": fp32_training, "rows": []}
    work = Path(tempfile.mkdtemp(prefix="bench_qat_"))
    correct: dict[str, np.ndarray] = {}
    layouts: dict[str, dict[str, tuple[Path, Any, str]]] = {}

    def row(variant: str, path: Path, ort: Any = None, **fields: Any) -> None:
        correct[variant] = onnx_correct(path, x_test, y_test, ort)
        out["rows"].append({"variant": variant, "accuracy": float(correct[variant].mean()), **fields})
        out["paired_tests"] = mcnemar(correct, ours="fp32")
        print(json.dumps(out["rows"][-1]), flush=True)
        save(args, out)  # partial results survive an interrupted run

    fp32_onnx = work / "fp32.onnx"
    export_onnx(LoadedModel(module=copy.deepcopy(fp32), spec=f"bench:{name}", inputs=inputs), fp32_onnx, feed=calib)
    row("fp32", fp32_onnx, torch_accuracy=torch_accuracy(fp32, x_test, y_test))
    start = time.perf_counter()
    ranges = calibrate(fp32_onnx, calib, CalibrationConfig(method="auto"))
    calib_s = time.perf_counter() - start
    for target in ("onnxruntime", "tensorrt"):
        path = work / f"ptq.{target}.onnx"
        quantize(fp32_onnx, ranges, path, QuantizeConfig(target=target))
        row(f"ptq_int8_{target}", path, method=ranges.method,
            calibration_seconds=round(calib_s, 1), qdq=qdq_summary(path))
    for mode in ("qat", "qad"):
        model = copy.deepcopy(fp32)
        training = DistillConfig(epochs=args.qat_epochs, batch_size=64, lr=args.qat_lr, alpha=1.0, temperature=1.0,
                                 device="cpu")
        labels = y_train if mode == "qat" else None
        start = time.perf_counter()
        result = qat(model, (x_train, labels), QATConfig(mode=mode, calibration_samples=args.calibration_samples,
                                                         training=training))
        seconds = time.perf_counter() - start
        loaded = LoadedModel(module=result.model, spec=f"bench:{name}_{mode}", inputs=inputs)
        paths = {t: work / f"{mode}.{t}.onnx" for t in ("tensorrt", "onnxruntime")}
        export_qat(loaded, paths, calib, CalibrationConfig(method=args.qat_calibration_method))
        for target, path in paths.items():
            row(f"{mode}_int8_{target}", path, fake_quant_torch_accuracy=torch_accuracy(result.model, x_test, y_test), labels=mode == "qat",
                steps=result.training.steps, train_seconds=round(seconds, 1),
                seconds_per_step=round(seconds / max(1, result.training.steps), 4),
                first_loss=result.training.step_losses[0], last_epoch_loss=result.training.epoch_losses[-1],
                qdq=qdq_summary(path))
        layouts[mode] = ort_layout_candidates(paths, calib, work, args)
        for variant, (path, ort, how) in layouts[mode].items():
            row(f"{mode}_int8_{variant}", path, ort, candidate=how, qdq=qdq_summary(path))
    base = out["rows"][0]["accuracy"]
    for r in out["rows"]:
        r["points_vs_fp32"] = round(100 * (r["accuracy"] - base), 2)
    out["ort_speed"] = ort_layout_speed(work / "ptq.onnxruntime.onnx", work / "qat.onnxruntime.onnx", layouts["qat"],
                                        x_test, args)
    save(args, out)
    return out


def ort_layout_candidates(paths: dict[str, Path], calib: dict[str, np.ndarray], work: Path,
                          args: argparse.Namespace) -> dict[str, tuple[Path, Any, str]]:
    """The onnxruntime-layout candidates of one QAT export besides `export_qat`'s (the trained grid): variant →
    (model, `OrtConfig` or None, what it is). ``onnxruntime_learned_minmax``: uint8 on the learned ranges
    ``[max(min, -amax), min(max, amax)]`` (`export_qat`'s layout before the trained grid; scale about amax/255
    after a ReLU); ``tensorrt_ort_fused``: the tensorrt-layout Q/DQ model (symmetric int8, the trained scales)
    run by ONNX Runtime with all graph optimizations (its fused S8S8 kernels)."""
    import onnx

    from trtopt.artifacts import TensorRange
    from trtopt.backends.ort import OrtConfig
    from trtopt.export import simplify_graph
    from trtopt.quant.calibrate import CalibrationConfig, calibrate
    from trtopt.quant.qat_export import strip_qdq
    from trtopt.quant.quantize import QuantizeConfig, quantize

    stem = paths["tensorrt"].name.split(".")[0]
    fp32, learned = strip_qdq(onnx.load(str(paths["tensorrt"])))
    fp32_path = work / f"{stem}.stripped.onnx"
    onnx.save_model(simplify_graph(fp32, []), str(fp32_path))
    ranges = calibrate(fp32_path, calib, CalibrationConfig(method=args.qat_calibration_method))
    tensors = dict(ranges.tensors)
    for tensor, amax in learned.items():
        if tensor in tensors:
            r = tensors[tensor]
            high = max(min(r.max, amax), -amax)
            tensors[tensor] = TensorRange(amax=amax, min=min(max(r.min, -amax), high), max=high)
    minmax = work / f"{stem}.onnxruntime_learned_minmax.onnx"
    quantize(fp32_path, replace(ranges, tensors=tensors), minmax,
             QuantizeConfig(target="onnxruntime", smoothing=False, bias_correction=False))
    s8s8 = work / f"{stem}.onnxruntime_s8s8.onnx"
    _s8s8_trained(fp32_path, {t: r.amax for t, r in ranges.tensors.items()} | learned, s8s8, work)
    return {"onnxruntime_learned_minmax": (minmax, None, "uint8 on the learned [min, max] (scale ~amax/255 after ReLU)"),
            "onnxruntime_s8s8": (s8s8, None, "symmetric int8 activations (trained amax/127, calibrated amax elsewhere) "
                                             "on the onnxruntime op set: ONNX Runtime's quantize_static, S8S8"),
            "tensorrt_ort_fused": (paths["tensorrt"], OrtConfig(intra_op_threads=THREADS, graph_optimization_level="all"),
                                   "the tensorrt Q/DQ model on ONNX Runtime's fused S8S8 kernels")}


def _s8s8_trained(fp32: Path, amax: dict[str, float], out: Path, work: Path) -> None:
    """``fp32`` quantized by ONNX Runtime's ``quantize_static`` (QDQ, every op type it quantizes, per-channel
    int8 weights) with symmetric int8 activations whose scale is ``amax[tensor] / 127``: S8S8 on the CPU op set."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    cache = work / f"{out.stem}.ranges.json"
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, {t: (np.array(-a, np.float32), np.array(a, np.float32))
                                                             for t, a in amax.items()}), cache)
    logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" advice, through the root logger
    quantize_static(str(fp32), str(out), calibration_data_reader=None, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibration_cache_path=str(cache),
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})


def ort_layout_speed(ptq: Path, trained_grid: Path, others: dict[str, tuple[Path, Any, str]], x: np.ndarray,
                     args: argparse.Namespace) -> dict[str, Any]:
    """ONNX Runtime CPU latency of the QAT model's onnxruntime-layout candidates vs the PTQ U8S8 model, timed
    interleaved at batch 1 and 8 (``trtopt.measure.bench.bench``: medians, bootstrap speedup intervals), with a
    second session of the PTQ model as the same-model control (its speedup should be 1)."""
    from trtopt.measure.bench import bench, onnx_candidate
    from trtopt.measure.profile import TimingConfig

    specs = [("ptq_u8s8", ptq, None), ("ptq_u8s8_control", ptq, None), ("qat_trained_grid_u8s8", trained_grid, None)]
    specs += [(f"qat_{variant}", path, ort) for variant, (path, ort, _) in others.items()]
    candidates = [onnx_candidate(path, name=name, threads=THREADS, ort=ort) for name, path, ort in specs]
    try:
        timed = bench(candidates, {"input": x}, (1, 8), TimingConfig(warmup_iterations=20, iterations=args.speed_iterations),
                      repeats=args.speed_repeats)
    finally:
        for c in candidates:
            c.runner.close()
    summary = {}
    for per in timed["per_batch"]:
        summary[f"batch_{per['batch_size']}"] = {
            name: {"latency_ms_p50": round(stats["latency_ms_p50"], 4),
                   "speedup_vs_ptq_u8s8": {k: round(v, 3) for k, v in stats.get("speedup_vs_baseline", {}).items()
                                           if k in ("speedup", "speedup_ci_low", "speedup_ci_high")},
                   "quality_flags": [f["flag"] for f in stats.get("quality_flags", [])]}
            for name, stats in per["candidates"].items()}
        summary[f"batch_{per['batch_size']}"]["load_average"] = per["load_average"]
    return {"threads": THREADS, "iterations": args.speed_iterations, "repeats": args.speed_repeats,
            "summary": summary, "bench": {k: v for k, v in timed.items() if k != "per_batch"},
            "per_batch": [{k: v for k, v in per.items() if k != "samples_ms"} for per in timed["per_batch"]]}


def screen_cache(name: str, args: argparse.Namespace) -> Path:
    """Where the FP32 weights of `SCREEN` entry ``name`` are cached (the temp folder, per training set size and
    epochs); ``--part accuracy --model NAME`` reuses the screen's weights from here."""
    epochs = SCREEN[name].epochs or args.fp32_epochs
    return Path(tempfile.gettempdir()) / f"bench_qat_screen_{name}_{args.train_samples}x{epochs}.pt"


def part_screen(args: argparse.Namespace) -> dict[str, Any]:
    """Each `SCREEN` architecture trained like the accuracy part's FP32 model (its own epochs and input size),
    then trtopt's best PTQ (method auto, both layouts) on the test images: FP32 and INT8 accuracy, the INT8
    model's top-1 agreement, and McNemar's exact test of each INT8 model against FP32 on the same images
    (``paired_tests``; `bench_int8_zoo.mcnemar`). ``ptq_loses_1_point``: a loss ≥ 1 point that the test
    resolves (p < 0.05) in either layout."""
    from trtopt.export import export_onnx
    from trtopt.models.spec import InputSpec, LoadedModel
    from trtopt.quant.calibrate import CalibrationConfig, calibrate
    from trtopt.quant.quantize import QuantizeConfig, quantize

    work = Path(tempfile.mkdtemp(prefix="bench_qat_screen_"))
    data: dict[int, tuple[np.ndarray, ...]] = {}
    rows = []
    for name in args.variants or SCREEN:
        entry = SCREEN[name]
        epochs = entry.epochs or args.fp32_epochs
        if entry.size not in data:
            data[entry.size] = (*fashion_mnist("train", args.train_samples, entry.size),
                                *fashion_mnist("test", args.test_samples, entry.size))
        x_train, y_train, x_test, y_test = data[entry.size]
        calib = {"input": x_train[:args.calibration_samples]}
        model, training = train_fp32(x_train, y_train, epochs, screen_cache(name, args), entry.factory)
        fp32 = export_onnx(LoadedModel(module=copy.deepcopy(model), spec=f"bench:{name}",
                                       inputs=(InputSpec("input", (1, entry.size, entry.size)),)),
                           work / f"{name}.onnx", feed=calib).path
        reference = _logits(fp32, {"input": x_test})
        correct = {"fp32": reference.argmax(1) == y_test}
        row = {"variant": name, "epochs": epochs, "input_size": entry.size, "fp32_training": training,
               "parameters": sum(p.numel() for p in model.parameters()), "fp32_accuracy": float(correct["fp32"].mean())}
        ranges = calibrate(fp32, calib, CalibrationConfig(method="auto"))
        row["calibration_choice"] = {k: v for k, v in ranges.choice.items() if isinstance(v, (str, int, float))}
        for target in ("onnxruntime", "tensorrt"):
            path = work / f"{name}.{target}.onnx"
            quantize(fp32, ranges, path, QuantizeConfig(target=target))
            logits = _logits(path, {"input": x_test})
            correct[f"ptq_{target}"] = logits.argmax(1) == y_test
            row[f"ptq_{target}_accuracy"] = float(correct[f"ptq_{target}"].mean())
            row[f"ptq_{target}_points_vs_fp32"] = round(100 * (row[f"ptq_{target}_accuracy"] - row["fp32_accuracy"]), 2)
            row[f"ptq_{target}_top1_agreement"] = float((logits.argmax(1) == reference.argmax(1)).mean())
        row["paired_tests"] = mcnemar(correct, ours="fp32")
        row["ptq_loses_1_point"] = any(row[f"ptq_{t}_points_vs_fp32"] <= -1.0
                                       and not row["paired_tests"]["versus"][f"ptq_{t}"]["tie"]
                                       for t in ("onnxruntime", "tensorrt"))
        rows.append(row)
        print(json.dumps(row), flush=True)
        save(args, {"rows": rows})
    return {"rows": rows}


def part_placement(args: argparse.Namespace) -> dict[str, Any]:
    import onnx

    from trtopt.datasets import load_dataset
    from trtopt.export import export_onnx
    from trtopt.metrics import cosine_similarity
    from trtopt.models.load import load_model
    from trtopt.models.spec import InputSpec, LoadedModel
    from trtopt.quant.calibrate import CalibrationConfig, calibrate
    from trtopt.quant.quantize import QuantizeConfig, quantize, to_fp16

    digits_train, digits_test = load_dataset("digits", "train"), load_dataset("digits", "test")
    models = {"digits_cnn": (load_model("zoo:digits_cnn"), {"input": digits_train.inputs["input"][:args.calibration_samples]},
                             digits_test.inputs, digits_test.labels)}
    if Path(args.fp32_cache).exists():  # the Fashion-MNIST CNN the accuracy part trained (not trained here)
        x_train, y_train = fashion_mnist("train", args.train_samples)
        x_test, y_test = fashion_mnist("test", args.test_samples)
        fashion, _ = train_fp32(x_train, y_train, args.fp32_epochs, Path(args.fp32_cache))
        models["fashion_mnist_mobilenet_tiny"] = (
            LoadedModel(module=fashion, spec="bench:mobilenet_tiny", inputs=(InputSpec("input", (1, 28, 28)),)),
            {"input": x_train[:args.calibration_samples]}, {"input": x_test}, y_test)
    work = Path(tempfile.mkdtemp(prefix="bench_qat_placement_"))
    rows = []
    for name, (loaded, calib, test, labels) in models.items():
        fp32 = export_onnx(loaded, work / f"{name}.onnx", feed=calib).path
        ranges = calibrate(fp32, calib, CalibrationConfig(method="auto"))
        reference = _logits(fp32, test)
        base = {"model": name, "fp32_accuracy": float((reference.argmax(1) == labels).mean())}
        for quantizer in ("trtopt", "modelopt"):
            path = work / f"{name}.{quantizer}.onnx"
            start = time.perf_counter()
            quantize(fp32, ranges, path, QuantizeConfig(target="tensorrt", quantizer=quantizer))
            seconds = time.perf_counter() - start
            logits = _logits(path, test)
            rows.append({**base, "variant": f"int8_tensorrt_{quantizer}", "accuracy": float((logits.argmax(1) == labels).mean()),
                         "cosine_to_fp32": cosine_similarity(reference, logits), "quantize_seconds": round(seconds, 1),
                         "qdq": qdq_summary(path), "size_bytes": path.stat().st_size})
            print(json.dumps(rows[-1]), flush=True)
            save(args, {"rows": rows})
        for converter in ("onnxconverter", "autocast"):
            path = work / f"{name}.fp16.{converter}.onnx"
            start = time.perf_counter()
            to_fp16(fp32, path, converter=converter)
            seconds = time.perf_counter() - start
            logits = _logits(path, test)  # loads in ONNX Runtime (to_fp16 refuses a model that does not)
            ops = [n.op_type for n in onnx.load(str(path)).graph.node]
            rows.append({**base, "variant": f"fp16_{converter}", "accuracy": float((logits.argmax(1) == labels).mean()),
                         "cosine_to_fp32": cosine_similarity(reference, logits), "convert_seconds": round(seconds, 1),
                         "nodes": len(ops), "cast_nodes": ops.count("Cast"), "loads_in_onnxruntime": True,
                         "size_bytes": path.stat().st_size})
            print(json.dumps(rows[-1]), flush=True)
            save(args, {"rows": rows})
    return {"rows": rows}


def _logits(path: Path, feed: dict[str, np.ndarray], ort: Any = None) -> np.ndarray:
    from trtopt.measure.bench import onnx_candidate, run_all

    with onnx_candidate(path, threads=THREADS, ort=ort) as candidate:
        return next(iter(run_all(candidate, feed, 250).values()))


#: (processes, torch threads per process) compared by ``--part ddp``: 1×2 and 2×1 use the machine's two cores
#: (the comparison asked for), 1×1 is the single-core reference.
DDP_LAYOUTS = ((1, 2), (2, 1), (1, 1))


def part_ddp(args: argparse.Namespace) -> dict[str, Any]:
    """QAT seconds per step by process layout, same global batch (128) and data; the layouts are run
    interleaved, ``--ddp-rounds`` times each, so a change in the shared machine's load hits all of them alike;
    the median of the rounds is the figure, the spread is kept."""
    runs: dict[str, list[dict[str, Any]]] = {f"{p}x{t}": [] for p, t in DDP_LAYOUTS}
    for round_ in range(args.ddp_rounds):
        for procs, threads in DDP_LAYOUTS:
            with tempfile.TemporaryDirectory() as tmp:
                record = Path(tmp) / "record.json"
                cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", "--master_port=29533",
                       __file__, "--part", "ddp-worker", "--worker-out", str(record), "--train-samples",
                       str(args.train_samples), "--fp32-cache", args.fp32_cache, "--ddp-steps", str(args.ddp_steps)]
                env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
                load = os.getloadavg()[0]
                start = time.perf_counter()
                subprocess.run(cmd, check=True, env=env, cwd=Path(__file__).resolve().parents[1])
                wall = time.perf_counter() - start
                data = json.loads(record.read_text())
            runs[f"{procs}x{threads}"].append({"round": round_, "processes": procs, "threads_per_process": threads,
                                               "load_average_1min_before": round(load, 2),
                                               "wall_seconds_incl_startup": round(wall, 1), **data})
            print(json.dumps({k: v for k, v in runs[f"{procs}x{threads}"][-1].items() if k != "step_losses"}), flush=True)
    summary = {}
    reference = np.array(runs["1x2"][0]["step_losses"])
    for layout, rounds in runs.items():
        per_step = [r["seconds_per_step"] for r in rounds]
        summary[layout] = {"median_seconds_per_step": float(np.median(per_step)), "min_seconds_per_step": min(per_step),
                           "max_seconds_per_step": max(per_step),
                           "max_abs_loss_difference_vs_1x2": max(float(np.max(np.abs(np.array(r["step_losses"]) - reference)))
                                                                 for r in rounds)}
    return {"global_batch": 128, "layouts": summary, "runs": runs}


def ddp_worker(args: argparse.Namespace) -> None:
    from trtopt.compress.qat import qat

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    x, y = fashion_mnist("train", args.train_samples)
    torch.manual_seed(0)
    model = MobileNetTiny()
    cache = Path(args.fp32_cache)
    if cache.exists():
        model.load_state_dict(torch.load(cache, weights_only=True))
    training = DistillConfig(epochs=None, max_steps=args.ddp_steps, batch_size=128, lr=1e-4, alpha=1.0, device="cpu",
                             scheduler="none")
    start = time.perf_counter()
    result = qat(model, (x, y), QATConfig(calibration_samples=256, training=training))
    seconds = time.perf_counter() - start
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.worker_out).write_text(json.dumps({
            "world_size": result.training.world_size, "steps": result.training.steps,
            "training_seconds": round(result.training.seconds, 2),
            "seconds_per_step": round(result.training.seconds / result.training.steps, 4),
            "qat_call_seconds": round(seconds, 2), "step_losses": result.training.step_losses}))


def save(args: argparse.Namespace, result: dict[str, Any]) -> Path:
    record = {"benchmark": f"bench_qat.py --part {args.part}",
              "settings": {k: v for k, v in vars(args).items() if k not in ("worker_out", "out")},
              "cpu_isa": cpu_isa(), "environment": environment(), **result}
    model = f"_{args.model}" if args.model and args.part == "accuracy" else ""
    out = Path(args.out or RESULTS / f"qat_fashion_mnist_{args.part}{model}.json")
    out.write_text(json.dumps(record, indent=2) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("accuracy", "screen", "placement", "ddp", "ddp-worker"), default="accuracy")
    parser.add_argument("--variants", nargs="+", choices=tuple(SCREEN), help="--part screen: these only (default all)")
    parser.add_argument("--model", choices=tuple(SCREEN), help="--part accuracy: this screen architecture (its "
                        "epochs, input size and cached weights) instead of the benchmark's MobileNet-style CNN; "
                        "writes qat_fashion_mnist_accuracy_MODEL.json")
    parser.add_argument("--train-samples", type=int, default=20000)
    parser.add_argument("--test-samples", type=int, default=10000)
    parser.add_argument("--calibration-samples", type=int, default=512)
    parser.add_argument("--fp32-epochs", type=int, default=5)
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--qat-lr", type=float, default=1e-4)
    parser.add_argument("--ddp-steps", type=int, default=60)
    parser.add_argument("--speed-iterations", type=int, default=200,
                        help="--part accuracy: timed calls per candidate and run (ONNX Runtime layout speed)")
    parser.add_argument("--speed-repeats", type=int, default=3, help="--part accuracy: independent timing runs")
    parser.add_argument("--ddp-rounds", type=int, default=3, help="interleaved repeats of each process layout")
    parser.add_argument("--qat-calibration-method", default="auto",
                        help="trtopt calibration of the tensors QAT did not range (ONNX Runtime layout)")
    parser.add_argument("--fp32-cache", help="trained FP32 weights, reused when present (default: one file per "
                        "--train-samples × --fp32-epochs in the temp folder)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch threads for training (default 1: on a loaded 2-core machine two threads "
                             "oversubscribe it and a step took 20× longer, measured)")
    parser.add_argument("--worker-out")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.part == "ddp-worker":
        ddp_worker(args)
        return
    if args.fp32_cache is None and args.model and args.part == "accuracy":
        args.fp32_cache = str(screen_cache(args.model, args))
    elif args.fp32_cache is None:
        args.fp32_cache = str(Path(tempfile.gettempdir()) / f"bench_qat_fp32_{args.train_samples}x{args.fp32_epochs}.pt")
    torch.set_num_threads(args.torch_threads)
    result = {"accuracy": part_accuracy, "screen": part_screen, "placement": part_placement, "ddp": part_ddp}[args.part](args)
    out = save(args, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
