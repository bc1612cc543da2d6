"""The calibration stage: an FP32 ONNX model's activations over calibration data → per-tensor INT8 ranges.

The FP32 model runs in ONNX Runtime on the calibration data, one batch at a time, with the tensors to
calibrate added as extra graph outputs. Each tensor's values update a
:class:`~trtopt.quant.histogram.StreamingHistogram` and are then dropped, so memory is bounded by one
batch of activations plus ``num_bins`` counters per tensor, whatever the number of samples. (ONNX
Runtime's own Entropy/Percentile calibrators keep every activation of every sample until the end.)
The range method (`CalibrationConfig.method`) then picks each tensor's ``amax`` from its histogram.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trtopt.artifacts import OnnxArtifact, Ranges, TensorInfo, TensorRange, inspect_onnx
from trtopt.errors import TrtoptError

if TYPE_CHECKING:
    from trtopt.backends.ort import OrtConfig
from trtopt.quant import histogram
from trtopt.quant.histogram import (
    ENTROPY_START_BIN,
    MAX_SATURATED_FRACTION,
    ChannelStatistics,
    StreamingHistogram,
    _positive_int,
    choose_amax,
)
from trtopt.quant.range_choice import HeldOut, choose_methods
from trtopt.quant.recovery import recoverable_inputs

_log = logging.getLogger(__name__)

METHODS = (*histogram.METHODS, "auto")

_FLOAT32 = 1  # onnx.TensorProto.FLOAT (onnx is imported where it is used)

Feed = dict[str, np.ndarray]

ProgressCallback = Callable[[int, int], None]

@dataclass(frozen=True)
class CalibrationConfig:
    """How activation ranges are computed.

    Attributes:
        method: "auto" (default: every method below scored by the model's output fidelity on held-out
            calibration samples, chosen per model and per tensor where it pays; see
            `trtopt.quant.range_choice`), "entropy" (TensorRT's EntropyCalibration2, KL divergence),
            "minmax", "percentile" or "mse". Any method's answer that would saturate a tensor falls back
            for that tensor (`trtopt.quant.histogram.choose_amax`); the ranges record which and why.
        percentile: for ``method="percentile"``: the percentile of |x| kept, in percent (0, 100].
        num_bins: histogram bins per tensor (2048 as in TensorRT); memory is 8 bytes per bin per tensor.
        batch_size: samples per ONNX Runtime run; bounds peak memory (one batch of activations) and
            does not change the ranges.
        max_samples: stop after this many samples (None: use all the data).
    """

    method: str = "auto"
    percentile: float = 99.99
    num_bins: int = 2048
    batch_size: int = 16
    max_samples: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise TrtoptError(f"calibration.method {self.method!r} is not a calibration method",
                              f"use one of {', '.join(METHODS)}")
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)) \
                or not 0.0 < self.percentile <= 100.0:
            raise TrtoptError(f"calibration.percentile {self.percentile!r} is not in (0, 100]",
                              "give a percentage such as 99.99")
        if not _positive_int(self.num_bins) or self.num_bins < 2 * ENTROPY_START_BIN:
            raise TrtoptError(f"calibration.num_bins {self.num_bins!r} is too small or not an integer",
                              f"use an integer >= {2 * ENTROPY_START_BIN} (2048 is TensorRT's choice)")
        if not _positive_int(self.batch_size):
            raise TrtoptError(f"calibration.batch_size {self.batch_size!r} is not a positive integer",
                              "use e.g. 16")
        if self.max_samples is not None and not _positive_int(self.max_samples):
            raise TrtoptError(f"calibration.max_samples {self.max_samples!r} is not a positive integer",
                              "give a sample count, or None for all the data")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tensor_range(stats: StreamingHistogram, amax: float) -> TensorRange:
    """The range of one tensor at ``amax``; min/max are the extremes clipped to ±amax.

    A tensor that was zero on every sample gets amax 0.0 (quantizers must treat it as a constant).
    """
    lo = min(max(stats.min, -amax), amax) if stats.count else 0.0
    hi = min(max(stats.max, -amax), amax) if stats.count else 0.0
    return TensorRange(float(amax), float(lo), float(hi))


def tensor_ranges(stats: Mapping[str, StreamingHistogram], methods: Mapping[str, str],
                  percentile: float = 99.99) -> tuple[dict[str, TensorRange], list[dict[str, Any]]]:
    """Each tensor's range under its method, and a record of every tensor whose method's answer fell back.

    Returns (ranges in the order of ``stats``, fallbacks): each fallback names the tensor, the method
    asked for, its amax and why it was rejected, and the method and amax used instead.
    """
    ranges, fallbacks = {}, []
    for name, hist in stats.items():
        choice = choose_amax(hist, methods[name], percentile)
        ranges[name] = tensor_range(hist, choice.amax)
        if choice.rejected:
            first = choice.rejected[0]
            fallbacks.append({"tensor": name, "method": first["method"], "amax": first["amax"],
                              "reason": first["reason"], "used": choice.method, "amax_used": choice.amax})
    return ranges, fallbacks


def _warn_fallbacks(fallbacks: Sequence[Mapping[str, Any]], model_name: str) -> None:
    if not fallbacks:
        return
    shown = "; ".join(f"{f['tensor']!r}: {f['method']} {f['reason']}, using {f['used']} (amax {f['amax_used']:.4g})"
                      for f in fallbacks[:3])
    more = f" (and {len(fallbacks) - 3} more, listed in the ranges JSON under choice.fallbacks)" if len(fallbacks) > 3 else ""
    _log.warning(f"{len(fallbacks)} tensor range(s) of {model_name} fell back to another method: {shown}{more}")


def _float_elem_types() -> dict[int, str]:
    from onnx import TensorProto

    return {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.DOUBLE: "float64"}

def _typed_model(path: Path) -> Any:
    """The ModelProto (external data not loaded) with shape inference applied where it works."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:  # custom domains or inconsistent shapes: fall back to the declared types
        return model

def _elem_types(model: Any) -> dict[str, int]:
    types: dict[str, int] = {}
    for vi in (*model.graph.value_info, *model.graph.output, *model.graph.input):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types

def calibration_tensors(onnx_path: str | os.PathLike | OnnxArtifact) -> list[str]:
    """The tensors :func:`calibrate` calibrates by default, in graph order.

    Every float (fp32/fp16/fp64) tensor that is an input or output of a top-level node, graph inputs
    included; initializers (weights) and outputs of Constant nodes are not activations and are left
    out. Tensors inside subgraphs (If/Loop bodies) cannot be observed and are not listed.
    """
    path = Path(getattr(onnx_path, "path", onnx_path))
    inspect_onnx(path)
    return _default_tensors(_typed_model(path))

def _default_tensors(model: Any) -> list[str]:
    floats = _float_elem_types()
    types = _elem_types(model)
    constants = {t.name for t in model.graph.initializer}
    constants.update(o for node in model.graph.node if node.op_type == "Constant" for o in node.output)
    names: dict[str, None] = {}
    for node in model.graph.node:
        for name in (*node.input, *node.output):
            if name and name not in constants and types.get(name) in floats:
                names[name] = None
    return list(names)

def _check_requested(model: Any, path: Path, tensors: Sequence[str]) -> list[str]:
    floats = _float_elem_types()
    types = _elem_types(model)
    initializers = {t.name for t in model.graph.initializer}
    known = {n for node in model.graph.node for n in (*node.input, *node.output) if n}
    known.update(vi.name for vi in model.graph.input)
    out: dict[str, None] = {}
    for name in tensors:
        if not isinstance(name, str) or name not in known:
            raise TrtoptError(f"tensor {name!r} is not in {path.name}",
                              "name tensors of the top-level graph (see trtopt.quant.calibrate.calibration_tensors)")
        if name in initializers:
            raise TrtoptError(f"tensor {name!r} of {path.name} is an initializer (a weight), not an activation",
                              "calibrate activations; weights are quantized from their values")
        if name in types and types[name] not in floats:
            import onnx

            type_name = onnx.helper.tensor_dtype_to_np_dtype(types[name]).name
            raise TrtoptError(f"tensor {name!r} of {path.name} is {type_name}, not a float tensor",
                              "calibrate float (fp32/fp16) tensors only")
        out[name] = None
    if not out:
        raise TrtoptError("no tensors to calibrate were given", "pass tensors=None to calibrate every float activation")
    return list(out)

def write_with_outputs(model: Any, source: Path, outputs: Sequence[str], folder: Path) -> Path:
    """Save ``model`` with exactly ``outputs`` as graph outputs into ``folder``; returns the path.

    ``model`` (a ModelProto loaded without its external data) has its graph outputs replaced in place.

    External data stays where it is referenced: the side files are hard-linked into ``folder`` (ONNX
    Runtime refuses side files outside the model's folder, symlinks included), copied when linking
    is not possible (another filesystem).
    """
    import onnx

    from trtopt.artifacts import external_data_files

    types = _elem_types(model)
    del model.graph.output[:]
    for name in outputs:
        if name in types:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
        else:  # untyped: ONNX Runtime takes the type the producing node infers
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    target = folder / "calibration_augmented.onnx"
    onnx.save(model, str(target))
    for side in external_data_files(model, source.parent):
        link = folder / side.relative_to(source.parent)
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(side, link)
        except OSError:
            shutil.copyfile(side, link)
    return target

class _InputChecker:
    """Checks calibration batches against the model's ONNX signature and fingerprints them."""

    def __init__(self, inputs: Sequence[TensorInfo], model_name: str):
        self.inputs = list(inputs)
        self.model_name = model_name
        self.hashers = {t.name: hashlib.sha256() for t in inputs}
        self.shapes: dict[str, list[list[Any]]] = {t.name: [] for t in inputs}  # run-length per-sample shapes
        self.samples = 0

    def to_feed(self, item: Any, where: str) -> Feed:
        """One batch as a feed (dict name → array); arrays are accepted for single-input models."""
        if isinstance(item, Mapping):
            return {str(k): _to_numpy(v) for k, v in item.items()}
        if len(self.inputs) == 1 and (isinstance(item, np.ndarray) or hasattr(item, "__array__")):
            return {self.inputs[0].name: _to_numpy(item)}
        names = ", ".join(t.name for t in self.inputs)
        raise TrtoptError(f"{where} is a {type(item).__name__}, not a dict of arrays",
                          f"yield dicts mapping {names} to arrays (axis 0 = samples)")

    def check(self, feed: Feed, where: str) -> tuple[Feed, int]:
        """Validate names, dtypes, shapes, sample counts and finiteness; returns (cast feed, samples)."""
        names = [t.name for t in self.inputs]
        missing = [n for n in names if n not in feed]
        if missing:
            have = ", ".join(feed) or "none"
            raise TrtoptError(f"{where} lack input {missing[0]!r} of {self.model_name} (have {have})",
                              f"provide arrays named {', '.join(names)}")
        extra = [k for k in feed if k not in names]
        if extra:
            raise TrtoptError(f"{where} have input {extra[0]!r}, which {self.model_name} does not take",
                              f"the model's inputs are {', '.join(names)}")
        out: Feed = {}
        counts, fixed_counts = set(), set()
        for info in self.inputs:
            arr = _cast(feed[info.name], info, self.model_name)
            _check_shape(arr, info, self.model_name)
            arr = np.ascontiguousarray(arr)  # ONNX Runtime and the fingerprint read raw memory
            # Axis 0 is the sample axis where it is symbolic. A fixed or absent axis 0 (a static model,
            # a 0-d scalar, a shape tensor beside a batched input) is part of one model call.
            batched = bool(info.shape) and not isinstance(info.shape[0], int)
            (counts if batched else fixed_counts).add(arr.shape[0] if arr.ndim else 1)
            out[info.name] = arr
        if len(counts) > 1:
            raise TrtoptError(f"{where} have different sample counts per input {sorted(counts)}",
                              "give every input the same number of samples")
        # A fully static model: one call per batch, unless every input agrees on its axis-0 length.
        n = counts.pop() if counts else (fixed_counts.pop() if len(fixed_counts) == 1 else 1)
        for info in self.inputs:
            arr = out[info.name]
            if arr.dtype.kind == "f":
                rows = arr.shape[0] if arr.ndim else 1  # per sample along axis 0 (a scalar is one)
                finite = np.isfinite(arr).reshape(rows, -1).all(axis=1) if arr.size else np.ones(0, bool)
                if not finite.all():
                    first = self.samples + int(np.argmin(finite))
                    raise TrtoptError(f"calibration input {info.name!r} contains NaN or inf (sample {first})",
                                      "clean or drop those samples")
        return out, n

    def fingerprint_(self, feed: Feed, n: int) -> None:
        """Add a checked batch to the running fingerprint (independent of how the data is batched)."""
        for name, arr in feed.items():
            self.hashers[name].update(np.ascontiguousarray(arr).data)
            runs = self.shapes[name]
            sample_shape = list(arr.shape[1:])
            if runs and runs[-1][0] == sample_shape:
                runs[-1][1] += n
            else:
                runs.append([sample_shape, n])
        self.samples += n

    def digest(self) -> str:
        record = [{"name": t.name, "dtype": t.dtype, "shapes": self.shapes[t.name],
                   "sha256": self.hashers[t.name].hexdigest()} for t in self.inputs]
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()

def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)

def _cast(arr: np.ndarray, info: TensorInfo, model_name: str) -> np.ndarray:
    """Cast to the input's dtype when the kind matches (float64 → float32, int32 → int64), else fail."""
    if info.dtype == "unknown" or arr.dtype.name == info.dtype:
        return arr
    expected = np.dtype(info.dtype)
    same_kind = (arr.dtype.kind == "f" and expected.kind == "f") or (arr.dtype.kind in "iu" and expected.kind in "iu")
    if not same_kind:
        raise TrtoptError(f"calibration input {info.name!r} has dtype {arr.dtype.name}, "
                          f"{model_name} expects {info.dtype}",
                          f"convert the data to {info.dtype} (e.g. array.astype('{info.dtype}'))")
    return arr.astype(expected)

def _check_shape(arr: np.ndarray, info: TensorInfo, model_name: str) -> None:
    expected = info.shape
    def fits(dims: Sequence[int | str], got: Sequence[int]) -> bool:
        return all(not isinstance(e, int) or e == a for e, a in zip(dims, got, strict=True))

    if arr.ndim == len(expected) and fits(expected, arr.shape):
        return
    shown = f"({', '.join(str(e) for e in expected)})"
    fix = "pass arrays of the model's input shape, samples on axis 0"
    if arr.ndim == len(expected) and isinstance(expected[0], int) and expected[0] != arr.shape[0] \
            and fits(expected[1:], arr.shape[1:]):
        fix = f"the model's batch axis is fixed at {expected[0]}: set calibration batch_size={expected[0]}"
    raise TrtoptError(f"calibration input {info.name!r} has shape {tuple(arr.shape)}, {model_name} expects {shown}",
                      fix)

def _batches(data: Any, checker: _InputChecker, config: CalibrationConfig) -> tuple[Iterator[Feed], int]:
    """Split ``data`` into feeds of at most ``batch_size`` samples; returns (batches, total or -1)."""
    if isinstance(data, (str, bytes, os.PathLike)):
        raise TrtoptError(f"calibration data {data!r} is a path, calibrate takes arrays",
                          "load it first with trtopt.data.load_feed (files, image folders, skimage:photos)")
    if isinstance(data, Mapping) or isinstance(data, np.ndarray) or hasattr(data, "detach"):
        feed = checker.to_feed(data, "calibration data")
        counts = {len(v) if v.ndim else 0 for v in feed.values()}
        total = max(counts) if counts else 0
        if config.max_samples is not None:
            total = min(total, config.max_samples)
        return _split([feed], config), total
    if not isinstance(data, Iterable):
        raise TrtoptError(f"calibration data is a {type(data).__name__}",
                          "pass a dict of arrays (axis 0 = samples) or an iterable of such batches")
    items = (checker.to_feed(item, f"calibration batch {k}") for k, item in enumerate(data))
    return _split(items, config), -1

def _split(items: Iterable[Feed], config: CalibrationConfig) -> Iterator[Feed]:
    for feed in items:
        lengths = [len(v) if np.ndim(v) else 0 for v in feed.values()]
        n = max(lengths) if lengths else 0
        if n <= config.batch_size or len(set(lengths)) > 1:
            yield feed  # a malformed batch is yielded whole; the checker reports it
            continue
        for start in range(0, n, config.batch_size):
            yield {k: v[start:start + config.batch_size] for k, v in feed.items()}

def calibrate(onnx_path: str | os.PathLike | OnnxArtifact, data: Any, config: CalibrationConfig = CalibrationConfig(),
              tensors: Sequence[str] | None = None, on_progress: ProgressCallback | None = None,
              ort: OrtConfig | None = None) -> Ranges:
    """Run the FP32 model on ``data`` in ONNX Runtime and compute per-tensor INT8 ranges in one pass.

    Args:
        onnx_path: the FP32 ONNX model (a path or an :class:`OnnxArtifact`); side files are used in place.
        data: a feed (dict input name → array, samples on axis 0; an array for a single-input model),
            batched by ``config.batch_size``; or an iterable of such batches, consumed lazily (never
            held whole; batches larger than ``batch_size`` are split). Float data of another float
            dtype (float64) is cast to the model's dtype, likewise integers.
        config: method and its parameters, batch size, sample limit.
        tensors: names of the tensors to calibrate; default: every float activation of the graph
            (see :func:`calibration_tensors`), graph inputs included. Quantizers pick what they need.
        on_progress: called after each batch with (samples done, total samples or -1 when unknown).
        ort: an :class:`trtopt.backends.ort.OrtConfig` for the ONNX Runtime session (default: CPU, all cores).

    Returns:
        Ranges: tensor → (amax, min, max) in graph order, the method, samples seen, a sha256
        fingerprint of the exact arrays the model was fed (independent of batching), the model's
        sha256, the settings, and ``choice``: every tensor whose method's answer was implausible and
        fell back (``fallbacks``, also logged as a warning) and, for ``auto``, the candidates' scores,
        the method chosen for the model, the per-tensor changes and the accuracy-recovery steps kept
        (`trtopt.quant.range_choice`); and ``channels``, per-channel statistics of the inputs of
        GEMM-like layers (`trtopt.quant.recovery`). Deterministic: the same data gives the same ranges.

    Raises:
        TrtoptError: a missing or corrupt model; no float tensors to calibrate; unknown, non-float or
        weight tensors requested; no samples; an input missing, unexpected, of the wrong dtype or
        shape (named, expected vs got), or containing NaN/inf; a tensor that becomes NaN/inf.
        Nothing is written outside a temporary folder, which is removed.
    """
    from trtopt.backends.ort import OrtConfig, OrtRunner

    artifact = onnx_path if isinstance(onnx_path, OnnxArtifact) else inspect_onnx(onnx_path)
    path = Path(artifact.path)
    model = _typed_model(path)
    if tensors is None:
        names = _default_tensors(model)
        if not names:
            raise TrtoptError(f"{path.name} has no float tensors to calibrate",
                              "INT8 calibration applies to models with float (fp32/fp16) activations")
    else:
        names = _check_requested(model, path, list(tensors))
    input_names = {t.name for t in artifact.inputs}
    types = _elem_types(model)
    auto = config.method == "auto"
    # auto compares the model's float outputs with FP32 on held-out samples: fetch them too
    outputs = [o.name for o in model.graph.output if types.get(o.name) in _float_elem_types()
               and o.name not in input_names] if auto else []
    fetched = [n for n in names if n not in input_names]  # graph inputs come from the feed itself
    fetched += [o for o in outputs if o not in fetched]
    stats = {n: StreamingHistogram(config.num_bins) for n in names}
    # per-channel statistics of the GEMM inputs, for accuracy recovery (trtopt.quant.recovery)
    channels = {n: ChannelStatistics(axis) for n, axis in recoverable_inputs(model).items() if n in stats}
    checker = _InputChecker(artifact.inputs, path.name)
    batches, total = _batches(data, checker, config)
    progress = on_progress or (lambda _done, _total: None)
    held = HeldOut(batched=all(t.shape and not isinstance(t.shape[0], int) for t in artifact.inputs)) if auto else None
    choice = None

    workers = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="trtopt-calibrate-") as tmp, \
            ThreadPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        runner = None
        if fetched:
            augmented = write_with_outputs(model, path, fetched, Path(tmp))
            try:
                runner = OrtRunner(augmented, ort or OrtConfig())
            except TrtoptError as e:  # name the user's model, not the temporary augmented copy
                raise TrtoptError(e.problem.replace(str(augmented), str(path)), e.fix) from e
            runner.path = path  # likewise for run errors
        del model

        def observe(feed: Feed) -> dict[str, np.ndarray]:
            """Run one checked batch and add its tensors to the histograms; returns the fetched outputs."""
            fetched_values = runner.infer(feed) if runner is not None else {}
            jobs = [(stats[name], feed[name], name) for name in names if name in input_names]
            jobs += [(stats[name], value, name) for name, value in fetched_values.items() if name in stats]
            values = {**feed, **fetched_values}
            jobs += [(channels[name], values[name], name) for name in channels]
            # One tensor per task: numpy releases the GIL, so the cores ONNX Runtime just used bin in
            # parallel; each histogram is updated by one task per batch, so results do not depend on it.
            for _ in (pool.map(_update_job, jobs) if pool is not None else map(_update_job, jobs)):
                pass
            return fetched_values

        for k, feed in enumerate(batches):
            remaining = None if config.max_samples is None else config.max_samples - checker.samples
            if remaining is not None and remaining <= 0:
                break
            if remaining is not None:  # samples past max_samples are neither checked nor used
                feed = {key: v[:remaining] if np.ndim(v) else v for key, v in feed.items()}
            feed, n = checker.check(feed, f"calibration batch {k}")
            if n == 0:
                continue
            checker.fingerprint_(feed, n)
            if held is not None:  # auto: held-out samples join the histograms after scoring
                feed, n = held.split(feed, n, checker.samples - n)
            if n:
                observe(feed)
            progress(checker.samples, total)
            if config.max_samples is not None and checker.samples >= config.max_samples:
                break
        if held is not None and checker.samples:
            fit = {name: h.copy() for name, h in stats.items()}
            fit_channels = {name: c.to_dict() for name, c in channels.items()}
            feeds, scored, held_out = held.scoring_feeds(config.batch_size)
            reference = [observe(f) if held_out else runner.infer(f) if runner is not None else {} for f in feeds]
            choice = choose_methods(path, fit, [n for n in names if types.get(n) == _FLOAT32], feeds, reference,
                                    outputs, config.percentile, Path(tmp), (ort or OrtConfig()).intra_op_threads,
                                    {k: v for k, v in fit_channels.items() if v is not None})
            choice.evidence.update({"scoring_samples": scored, "held_out": held_out})
        if runner is not None:
            runner.close()
    if checker.samples == 0:
        raise TrtoptError("the calibration data hold no samples", "provide at least one sample (hundreds are typical)")
    methods = choice.methods if choice is not None else dict.fromkeys(names, config.method)
    ranges, fallbacks = tensor_ranges(stats, methods, config.percentile)
    _warn_fallbacks(fallbacks, path.name)
    return Ranges(
        tensors=ranges,
        method=config.method,
        samples=checker.samples,
        data_sha256=checker.digest(),
        model_sha256=artifact.sha256,
        settings={**config.to_dict(), "histogram": "|x|, power-of-two bin width",
                  "entropy_start_bin": ENTROPY_START_BIN, "entropy_zero_bin_as_neighbor": True,
                  "max_saturated_fraction": MAX_SATURATED_FRACTION},
        choice={**(choice.evidence if choice is not None else {}), "fallbacks": fallbacks},
        channels={name: d for name, c in channels.items() if (d := c.to_dict()) is not None},
    )

def _update_job(job: tuple[StreamingHistogram | ChannelStatistics, Any, str]) -> None:
    _update(*job)

def _update(stats: StreamingHistogram | ChannelStatistics, value: Any, name: str) -> None:
    arr = np.asarray(value)
    if arr.dtype.kind != "f":
        raise TrtoptError(f"tensor {name!r} is {arr.dtype.name}, not a float tensor",
                          "calibrate float (fp32/fp16) tensors only")
    try:
        stats.update(arr)
    except ValueError as e:
        raise TrtoptError(f"tensor {name!r} becomes NaN or inf on the calibration data",
                          "check the model and the data (an overflow or a division by zero upstream)") from e
