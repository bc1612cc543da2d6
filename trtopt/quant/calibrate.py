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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trtopt._config import check_choice, check_int, check_number
from trtopt.artifacts import OnnxArtifact, Ranges, TensorRange, inspect_onnx
from trtopt.errors import TrtoptError
from trtopt.feeds import CheckedFeed, Feed, as_feed, check_feed
from trtopt.files import temp_dir
from trtopt.models.spec import InputSpec
from trtopt.progress import ProgressCallback

if TYPE_CHECKING:
    from trtopt.backends.ort import OrtConfig
from trtopt.quant import histogram
from trtopt.quant.histogram import (
    ENTROPY_START_BIN,
    MAX_SATURATED_FRACTION,
    ZERO_TENSOR_AMAX,
    ChannelStatistics,
    StreamingHistogram,
    choose_amax,
)
from trtopt.quant.quantize import TARGETS, QuantizeConfig, quantized_tensors, require_float_model
from trtopt.quant.range_choice import HeldOut, choose_methods
from trtopt.quant.recovery import recoverable_inputs

_log = logging.getLogger(__name__)

METHODS = (*histogram.METHODS, "auto")

_FLOAT32 = 1  # onnx.TensorProto.FLOAT (onnx is imported where it is used)
#: The layouts calibration covers by default: each target's default Q/DQ placement, so the ranges serve
#: ``quantize`` of the same model on either target.
DEFAULT_LAYOUTS = tuple(QuantizeConfig(target=t) for t in TARGETS)
#: An amax this many times the median amax of the model's tensors (or more) is flagged as absurd.
OUTLIER_RATIO = 1e4


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
        check_choice("method", self.method, METHODS)
        check_number("percentile", self.percentile, 0, 100, low_open=True, fix="give a percentage such as 99.99")
        check_int("num_bins", self.num_bins, minimum=2 * ENTROPY_START_BIN,
                  fix="use e.g. 2048 (TensorRT's choice); the entropy search needs at least "
                      f"{2 * ENTROPY_START_BIN} bins")
        check_int("batch_size", self.batch_size, fix="use e.g. 16")
        check_int("max_samples", self.max_samples, optional=True, fix="give a sample count, or None for all the data")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tensor_range(stats: StreamingHistogram, amax: float) -> TensorRange:
    """The range of one tensor at ``amax``; min/max are the extremes clipped to ±amax.

    A tensor that was zero on every sample gets amax :data:`~trtopt.quant.histogram.ZERO_TENSOR_AMAX`
    with min = max = 0: zero stays exactly representable, and every scale derived from it is positive
    (TensorRT caches and symmetric Q/DQ refuse or break on a zero scale).
    """
    if stats.absmax == 0.0:
        return TensorRange(ZERO_TENSOR_AMAX, 0.0, 0.0)
    lo = min(max(stats.min, -amax), amax)
    hi = min(max(stats.max, -amax), amax)
    return TensorRange(float(amax), float(lo), float(hi))


def outlier_ranges(ranges: Mapping[str, TensorRange], ratio: float = OUTLIER_RATIO) -> list[dict[str, Any]]:
    """Tensors whose amax is at least ``ratio`` times the median amax of ``ranges`` (zero tensors left out).

    Such a range (e.g. 3.4e38 from a ``finfo.min`` mask value) leaves all but one or two int8 codes
    unused for the real values. Returns ``{"tensor", "amax", "times_median"}`` per tensor, largest first.
    """
    amaxes = [r.amax for r in ranges.values() if r.amax > ZERO_TENSOR_AMAX]
    if not amaxes:
        return []
    median = float(np.median(amaxes))
    found = [{"tensor": name, "amax": r.amax, "times_median": r.amax / median}
             for name, r in ranges.items() if r.amax >= ratio * median]
    return sorted(found, key=lambda f: -f["amax"])


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

def calibration_tensors(onnx_path: str | os.PathLike | OnnxArtifact,
                        layouts: Sequence[QuantizeConfig] = DEFAULT_LAYOUTS) -> list[str]:
    """The tensors :func:`calibrate` calibrates by default, in graph order.

    Every float (fp32/fp16/fp64) or untyped tensor that one of ``layouts`` can quantize
    (`trtopt.quant.quantize.quantized_tensors`: the non-initializer inputs, and outputs where the layout
    quantizes them, of the nodes that take Q/DQ), graph inputs included. Tensors no layout quantizes (an
    attention mask's -inf path, shape arithmetic) are left out, and so are tensors inside subgraphs
    (If/Loop bodies), which cannot be observed.
    """
    path = Path(getattr(onnx_path, "path", onnx_path))
    inspect_onnx(path)
    return list(_default_tensors(_typed_model(path), layouts))

def _default_tensors(model: Any, layouts: Sequence[QuantizeConfig]) -> dict[str, str]:
    """Tensor → the node whose Q/DQ needs its range, for the float or untyped tensors ``layouts`` quantize."""
    floats = _float_elem_types()
    types = _elem_types(model)
    found: dict[str, str] = {}
    for layout in layouts:
        for name, node in quantized_tensors(model, layout).items():
            if name not in types or types[name] in floats:  # untyped: kept if it turns out to be float
                found.setdefault(name, f"{node} ({layout.target})")
    produced = [*(vi.name for vi in model.graph.input), *(o for node in model.graph.node for o in node.output)]
    order = {name: k for k, name in reversed(list(enumerate(produced)))}  # graph order: where each is made
    return dict(sorted(found.items(), key=lambda item: order.get(item[0], -1)))

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
    is not possible (another filesystem). Their names come from the model, so `external_data_files`
    refuses any that is absolute or climbs out with ``..``: every link lands inside ``folder``.

    Raises:
        TrtoptError: an external-data location outside the model's folder.
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

class _Fingerprint:
    """A sha256 of the exact arrays the model was fed, per input, independent of how the data is batched."""

    def __init__(self, inputs: Sequence[InputSpec]):
        self.inputs = tuple(inputs)
        self.hashers = {s.name: hashlib.sha256() for s in inputs}
        self.shapes: dict[str, list[list[Any]]] = {s.name: [] for s in inputs}  # run-length per-sample shapes
        self.samples = 0

    def update_(self, feed: CheckedFeed) -> None:
        """Add a checked batch (C-contiguous arrays, ``feed.samples`` samples)."""
        for name, arr in feed.items():
            self.hashers[name].update(arr.data)
            runs = self.shapes[name]
            sample_shape = list(arr.shape[1:])
            if runs and runs[-1][0] == sample_shape:
                runs[-1][1] += feed.samples
            else:
                runs.append([sample_shape, feed.samples])
        self.samples += feed.samples

    def digest(self) -> str:
        record = [{"name": s.name, "dtype": s.dtype, "shapes": self.shapes[s.name],
                   "sha256": self.hashers[s.name].hexdigest()} for s in self.inputs]
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()

def _batches(data: Any, inputs: Sequence[InputSpec], model: str,
             config: CalibrationConfig) -> tuple[Iterator[Feed], int]:
    """Split ``data`` into feeds of at most ``batch_size`` samples; returns (batches, total or -1)."""
    if isinstance(data, (str, bytes, os.PathLike)):
        raise TrtoptError(f"calibration data {data!r} is a path, calibrate takes arrays",
                          "load it first with trtopt.data.load_feed (files, image folders, skimage:photos)")
    if isinstance(data, Mapping) or isinstance(data, np.ndarray) or hasattr(data, "detach"):
        feed = as_feed(data, inputs, "calibration data", model)
        counts = {len(v) if v.ndim else 0 for v in feed.values()}
        total = max(counts) if counts else 0
        if config.max_samples is not None:
            total = min(total, config.max_samples)
        return _split([feed], config), total
    if not isinstance(data, Iterable):
        raise TrtoptError(f"calibration data is a {type(data).__name__}",
                          "pass a dict of arrays (axis 0 = samples) or an iterable of such batches")
    items = (as_feed(item, inputs, f"calibration batch {k}", model) for k, item in enumerate(data))
    return _split(items, config), -1

def _split(items: Iterable[Feed], config: CalibrationConfig) -> Iterator[Feed]:
    for feed in items:
        lengths = [len(v) if np.ndim(v) else 0 for v in feed.values()]
        n = max(lengths) if lengths else 0
        if n <= config.batch_size or len(set(lengths)) > 1:
            yield feed  # a malformed batch is yielded whole; the feed check reports it
            continue
        for start in range(0, n, config.batch_size):
            yield {k: v[start:start + config.batch_size] for k, v in feed.items()}

def calibrate(onnx_path: str | os.PathLike | OnnxArtifact, data: Any, config: CalibrationConfig = CalibrationConfig(),
              tensors: Sequence[str] | None = None, on_progress: ProgressCallback | None = None,
              ort: OrtConfig | None = None, layouts: Sequence[QuantizeConfig] = DEFAULT_LAYOUTS) -> Ranges:
    """Run the FP32 model on ``data`` in ONNX Runtime and compute per-tensor INT8 ranges in one pass.

    Args:
        onnx_path: the FP32 ONNX model (a path or an :class:`OnnxArtifact`); side files are used in place.
        data: a feed (dict input name → array, samples on axis 0; an array for a single-input model),
            batched by ``config.batch_size``; or an iterable of such batches, consumed lazily (never
            held whole; batches larger than ``batch_size`` are split). Float data of another float
            dtype (float64) is cast to the model's dtype, likewise integers.
        config: method and its parameters, batch size, sample limit.
        tensors: names of the tensors to calibrate; default: every float tensor one of ``layouts``
            quantizes (see :func:`calibration_tensors`), graph inputs included.
        on_progress: called after each batch as ``("calibration", samples done, total samples or -1 when
            unknown)``.
        ort: an :class:`trtopt.backends.ort.OrtConfig` for the ONNX Runtime session (default: CPU, all cores).
        layouts: the Q/DQ layouts the ranges must serve when ``tensors`` is None (default: both targets'
            default layouts, so `trtopt.quant.quantize.quantize` of this model works on either).

    Returns:
        Ranges: tensor → (amax, min, max) in graph order, the method, samples seen, a sha256
        fingerprint of the exact arrays the model was fed (independent of batching), the model's
        sha256, the settings, and ``choice``: every tensor whose method's answer was implausible and
        fell back (``fallbacks``, also logged as a warning) and, for ``auto``, the candidates' scores,
        the method chosen for the model, the per-tensor changes and the accuracy-recovery steps kept
        (`trtopt.quant.range_choice`), the tensors that were zero on every sample (``zero_tensors``:
        they get amax :data:`~trtopt.quant.histogram.ZERO_TENSOR_AMAX`) and those whose amax is absurd
        (``outliers``, :func:`outlier_ranges`; both logged as warnings); and ``channels``, per-channel
        statistics of the inputs of GEMM-like layers (`trtopt.quant.recovery`). Deterministic: the same
        data gives the same ranges.

    Raises:
        TrtoptError: a missing or corrupt model; no float tensors to calibrate; unknown, non-float or
        weight tensors requested; no samples; an input missing, unexpected, of the wrong dtype or
        shape (named, expected vs got), or containing NaN/inf; a calibrated tensor that becomes NaN/inf
        (naming the node whose Q/DQ needs it, and how to keep that node in FP32).
        Nothing is written outside a temporary folder, which is removed.
    """
    from trtopt.backends.ort import OrtConfig, OrtRunner

    artifact = onnx_path if isinstance(onnx_path, OnnxArtifact) else inspect_onnx(onnx_path)
    require_float_model(artifact, "be calibrated (its activations are already quantized)")
    path = Path(artifact.path)
    model = _typed_model(path)
    if tensors is None:
        askers = _default_tensors(model, layouts)
        names = list(askers)
        if not names:
            raise TrtoptError(f"{path.name} has no float tensors to calibrate: the "
                              f"{', '.join(sorted({layout.target for layout in layouts}))} Q/DQ layouts quantize none "
                              "of its nodes",
                              "INT8 calibration applies to models with float Conv/MatMul/Gemm layers; keep this one "
                              "in FP32/FP16")
    else:
        names = _check_requested(model, path, list(tensors))
        askers = {}
    input_names = {t.name for t in artifact.inputs}
    types = _elem_types(model)
    untyped = {n for n in askers if n not in types}  # kept only if ONNX Runtime gives them a float type
    dropped: set[str] = set()
    auto = config.method == "auto"
    # auto compares the model's float outputs with FP32 on held-out samples: fetch them too
    outputs = [o.name for o in model.graph.output if types.get(o.name) in _float_elem_types()
               and o.name not in input_names] if auto else []
    fetched = [n for n in names if n not in input_names]  # graph inputs come from the feed itself
    fetched += [o for o in outputs if o not in fetched]
    stats = {n: StreamingHistogram(config.num_bins) for n in names}
    # per-channel statistics of the GEMM inputs, for accuracy recovery (trtopt.quant.recovery)
    channels = {n: ChannelStatistics(axis) for n, axis in recoverable_inputs(model).items() if n in stats}
    inputs = tuple(InputSpec.from_dims(t.name, t.shape, t.dtype) for t in artifact.inputs)
    fingerprint = _Fingerprint(inputs)
    batches, total = _batches(data, inputs, path.name, config)
    progress = on_progress or (lambda _label, _done, _total: None)
    held = HeldOut(batched=all(t.shape and not isinstance(t.shape[0], int) for t in artifact.inputs)) if auto else None
    choice = None

    workers = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    with temp_dir("calibrate") as tmp, \
            ThreadPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool, \
            contextlib.ExitStack() as stack:  # closes the runner before its folder goes
        runner = None
        if fetched:
            augmented = write_with_outputs(model, path, fetched, Path(tmp))
            try:
                runner = stack.enter_context(OrtRunner(augmented, ort or OrtConfig()))
            except TrtoptError as e:  # name the user's model, not the temporary augmented copy
                raise TrtoptError(e.problem.replace(str(augmented), str(path)), e.fix) from e
            runner.path = path  # likewise for run errors
        del model

        def observe(feed: Feed) -> dict[str, np.ndarray]:
            """Run one checked batch and add its tensors to the histograms; returns the fetched outputs."""
            fetched_values = runner.infer(feed) if runner is not None else {}
            for name in untyped & fetched_values.keys():
                if np.asarray(fetched_values[name]).dtype.kind != "f":
                    dropped.add(name)
            jobs = [(stats[name], feed[name], name, askers.get(name)) for name in names if name in input_names]
            jobs += [(stats[name], value, name, askers.get(name)) for name, value in fetched_values.items()
                     if name in stats and name not in dropped]
            values = {**feed, **fetched_values}
            jobs += [(channels[name], values[name], name, askers.get(name)) for name in channels]
            # One tensor per task: numpy releases the GIL, so the cores ONNX Runtime just used bin in
            # parallel; each histogram is updated by one task per batch, so results do not depend on it.
            for _ in (pool.map(_update_job, jobs) if pool is not None else map(_update_job, jobs)):
                pass
            return fetched_values

        for k, feed in enumerate(batches):
            remaining = None if config.max_samples is None else config.max_samples - fingerprint.samples
            if remaining is not None and remaining <= 0:
                break
            if remaining is not None:  # samples past max_samples are neither checked nor used
                feed = {key: v[:remaining] if np.ndim(v) else v for key, v in feed.items()}
            feed = check_feed(feed, inputs, model=path.name, source=f"calibration batch {k}",
                              first_sample=fingerprint.samples)
            n = feed.samples
            fingerprint.update_(feed)
            if held is not None:  # auto: held-out samples join the histograms after scoring
                feed, n = held.split(feed, n, fingerprint.samples - n)
            if n:
                observe(feed)
            progress("calibration", fingerprint.samples, total)
            if config.max_samples is not None and fingerprint.samples >= config.max_samples:
                break
        if held is not None and fingerprint.samples:
            fit = {name: h.copy() for name, h in stats.items()}
            fit_channels = {name: c.to_dict() for name, c in channels.items()}
            feeds, scored, held_out = held.scoring_feeds(config.batch_size)
            reference = [observe(f) if held_out else runner.infer(f) if runner is not None else {} for f in feeds]
            choice = choose_methods(path, fit, [n for n in names if types.get(n) == _FLOAT32], feeds, reference,
                                    outputs, config.percentile, Path(tmp), (ort or OrtConfig()).intra_op_threads,
                                    {k: v for k, v in fit_channels.items() if v is not None})
            choice.evidence.update({"scoring_samples": scored, "held_out": held_out})
    if fingerprint.samples == 0:
        raise TrtoptError("the calibration data hold no samples", "provide at least one sample (hundreds are typical)")
    for name in dropped:  # untyped tensors that turned out not to be float: nothing to quantize
        del stats[name]
    methods = choice.methods if choice is not None else dict.fromkeys(names, config.method)
    ranges, fallbacks = tensor_ranges(stats, methods, config.percentile)
    _warn_fallbacks(fallbacks, path.name)
    zeros = [name for name, hist in stats.items() if hist.absmax == 0.0]
    outliers = outlier_ranges(ranges)
    _warn_zeros_and_outliers(zeros, outliers, path.name)
    return Ranges(
        tensors=ranges,
        method=config.method,
        samples=fingerprint.samples,
        data_sha256=fingerprint.digest(),
        model_sha256=artifact.sha256,
        settings={**config.to_dict(), "histogram": "|x|, power-of-two bin width",
                  "layouts": None if tensors is not None else [_layout_name(layout) for layout in layouts],
                  "zero_tensor_amax": ZERO_TENSOR_AMAX, "outlier_ratio": OUTLIER_RATIO,
                  "entropy_start_bin": ENTROPY_START_BIN, "entropy_zero_bin_as_neighbor": True,
                  "max_saturated_fraction": MAX_SATURATED_FRACTION},
        choice={**(choice.evidence if choice is not None else {}), "fallbacks": fallbacks, "zero_tensors": zeros,
                "outliers": outliers},
        channels={name: d for name, c in channels.items() if (d := c.to_dict()) is not None},
    )

def _layout_name(layout: QuantizeConfig) -> str:
    return layout.target + (f" ({','.join(layout.op_types)})" if layout.op_types else "")


def _warn_zeros_and_outliers(zeros: Sequence[str], outliers: Sequence[Mapping[str, Any]], model_name: str) -> None:
    if zeros:
        shown = ", ".join(repr(z) for z in zeros[:3]) + (f" (and {len(zeros) - 3} more)" if len(zeros) > 3 else "")
        _log.warning(f"{len(zeros)} tensor(s) of {model_name} were exactly 0 on every calibration sample: {shown}; "
                     f"they get the tiny range amax {ZERO_TENSOR_AMAX:.4g} (listed under choice.zero_tensors)")
    if outliers:
        shown = "; ".join(f"{o['tensor']!r}: amax {o['amax']:.4g} ({o['times_median']:.3g}× the median)"
                          for o in outliers[:3])
        _log.warning(f"{len(outliers)} tensor range(s) of {model_name} are absurdly wide (≥ {OUTLIER_RATIO:g}× the "
                     f"median amax; int8 keeps almost no resolution there): {shown} (listed under choice.outliers; "
                     "keep the nodes they feed in FP32 with quantize --exclude)")


def _update_job(job: tuple[StreamingHistogram | ChannelStatistics, Any, str, str | None]) -> None:
    _update(*job)

def _update(stats: StreamingHistogram | ChannelStatistics, value: Any, name: str, asker: str | None = None) -> None:
    """Add one tensor's batch to its statistics; ``asker`` is the node (and layout) whose Q/DQ needs the range."""
    arr = np.asarray(value)
    if arr.dtype.kind != "f":
        raise TrtoptError(f"tensor {name!r} is {arr.dtype.name}, not a float tensor",
                          "calibrate float (fp32/fp16) tensors only")
    try:
        stats.update(arr)
    except ValueError as e:
        if asker is None:
            raise TrtoptError(f"tensor {name!r} becomes NaN or inf on the calibration data",
                              "check the model and the data (an overflow or a division by zero upstream)") from e
        node = asker.rsplit(" (", 1)[0]
        raise TrtoptError(f"tensor {name!r} becomes NaN or inf on the calibration data, and node {asker} "
                          "quantizes it", "check the model and the data (an overflow or a division by zero upstream), "
                          f"or keep that node in FP32: trtopt quantize --exclude {node} --data ...") from e
