"""Streaming INT8 calibration: activation statistics of an FP32 ONNX model → per-tensor ranges.

The FP32 model runs in ONNX Runtime on the calibration data, one batch at a time, with the tensors to
calibrate added as extra graph outputs. Each tensor's values update a :class:`StreamingHistogram` (its
signed extremes and a fixed-size histogram of |x|) and are then dropped, so memory is bounded by one
batch of activations plus ``num_bins`` counters per tensor, whatever the number of samples. (ONNX
Runtime's own Entropy/Percentile calibrators keep every activation of every sample until the end.)

From each histogram one method picks the symmetric range ``amax`` (int8 scale = amax / 127):

- ``minmax``: the largest |x| seen.
- ``entropy``: TensorRT's EntropyCalibration2 (the "8-bit Inference with TensorRT" algorithm, GTC 2017):
  the threshold whose 128-level quantized distribution is closest in KL divergence to the observed one.
- ``percentile``: the given percentile of |x| (99.99 by default).
- ``mse``: the threshold minimizing the expected int8 quantization error (rounding plus clipping).

The histograms use bin widths that are powers of two and grow by merging adjacent bins, so the final
histogram is exactly the one-shot histogram of all the data: every method gives the same ranges
whatever the batch size or batch order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
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
    from trtopt.config import OrtConfig

METHODS = ("minmax", "entropy", "percentile", "mse")
ENTROPY_START_BIN = 128  # first candidate threshold, in bins (TensorRT's EntropyCalibration2)
INT8_LEVELS = 128  # |x| is quantized to the levels 0..127 of symmetric int8
_FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # smallest normal float32: |x| below it counts as 0
_CHUNK_ELEMENTS = 1 << 18  # values binned per numpy call: ~3 MB of reused temporaries stay in the CPU cache

Feed = dict[str, np.ndarray]
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class CalibrationConfig:
    """How activation ranges are computed.

    Attributes:
        method: "entropy" (TensorRT's default, KL divergence), "minmax", "percentile" or "mse".
        percentile: for ``method="percentile"``: the percentile of |x| kept, in percent (0, 100].
        num_bins: histogram bins per tensor (2048 as in TensorRT); memory is 8 bytes per bin per tensor.
        batch_size: samples per ONNX Runtime run; bounds peak memory (one batch of activations) and
            does not change the ranges.
        max_samples: stop after this many samples (None: use all the data).
    """

    method: str = "entropy"
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


def _positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


class StreamingHistogram:
    """Running statistics of one tensor in fixed memory: signed min/max and a histogram of |x|.

    Bin ``j`` counts the values with ``j * bin_width <= |x| < (j + 1) * bin_width``. The bin width is a
    power of two, chosen as the smallest that puts the largest |x| seen so far into the last bin or
    below; when a batch exceeds the range, the width doubles as often as needed and adjacent bins are
    merged. Because scaling by a power of two is exact in floating point, a value's bin under the new
    width is exactly its old bin divided by the growth factor, so merged counts equal what one-shot
    binning of all the data at the final width gives: the histogram does not depend on how the data
    was batched. At least half of the bins are in use after any growth.

    Attributes:
        num_bins: number of bins (fixed).
        counts: int64 counts per bin.
        exponent: bin width = 2 ** exponent; None until a non-zero value has been seen.
        min / max: signed extremes seen (+inf / -inf before any value).
        count: number of values seen.
    """

    def __init__(self, num_bins: int = 2048):
        if not _positive_int(num_bins):
            raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}")
        self.num_bins = int(num_bins)
        self.counts = np.zeros(self.num_bins, dtype=np.int64)
        self.exponent: int | None = None
        self.min = math.inf
        self.max = -math.inf
        self.count = 0

    @property
    def bin_width(self) -> float:
        """Width of one bin in the tensor's units (0.0 while every value seen was zero)."""
        return 0.0 if self.exponent is None else math.ldexp(1.0, self.exponent)

    @property
    def absmax(self) -> float:
        """Largest |x| seen (0.0 before any value)."""
        return max(-self.min, self.max, 0.0) if self.count else 0.0

    @property
    def nbytes(self) -> int:
        """Memory held by the histogram itself, in bytes (independent of the number of values seen)."""
        return int(self.counts.nbytes)

    def update(self, values: Any) -> None:
        """Add ``values`` (any shape, float) to the statistics.

        Raises:
            ValueError: the values contain NaN or inf (the caller names the tensor).
        """
        x = np.asarray(values)
        if x.size == 0:
            return
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float32)
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("values contain NaN or inf")
        amax = max(-lo, hi)
        if amax >= _FLOAT32_TINY:  # below it (float64 denormals) a tensor is zero at any int8 scale
            needed = self._exponent_for(amax)
            if self.exponent is None:
                self.exponent = needed
            elif needed > self.exponent:
                self._merge(needed - self.exponent)
                self.exponent = needed
        if self.exponent is None:  # every value so far is 0: bin 0 at any width
            self.counts[0] += x.size
        else:
            self._bin(x.reshape(-1), nonnegative=lo >= 0.0)
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        self.count += int(x.size)

    def _exponent_for(self, amax: float) -> int:
        """Smallest e with amax * 2**-e < num_bins (exact: power-of-two scaling does not round)."""
        _, e = math.frexp(amax / self.num_bins)
        while math.ldexp(amax, -e) >= self.num_bins:
            e += 1
        while math.ldexp(amax, -(e - 1)) < self.num_bins:
            e -= 1
        return e if self.exponent is None else max(e, self.exponent)

    def _merge(self, doublings: int) -> None:
        """Widen bins by 2**doublings, summing each run of adjacent bins into one (exact)."""
        factor = 1 << min(doublings, 62)
        if factor >= self.num_bins:
            merged = np.zeros_like(self.counts)
            merged[0] = self.counts.sum()
        else:
            starts = np.arange(0, self.num_bins, factor)
            merged = np.zeros_like(self.counts)
            merged[:len(starts)] = np.add.reduceat(self.counts, starts)
        self.counts = merged

    def _bin(self, flat: np.ndarray, nonnegative: bool) -> None:
        assert self.exponent is not None
        # float32 holds 2**-e exactly for |e| <= 126; beyond that (absurd ranges) bin in float64.
        dtype = flat.dtype if abs(self.exponent) <= 100 else np.dtype(np.float64)
        scale = dtype.type(math.ldexp(1.0, -self.exponent))
        # Cache-sized chunks into reused buffers: about 2x faster than whole-tensor temporaries.
        size = min(flat.size, _CHUNK_ELEMENTS)
        scaled_buf = np.empty(size, dtype)
        index_buf = np.empty(size, np.intp)  # what bincount counts natively (no cast inside it)
        for start in range(0, flat.size, size):
            part = flat[start:start + size]
            scaled, index = scaled_buf[:part.size], index_buf[:part.size]
            np.multiply(part, scale, out=scaled)  # exact: a power of two
            if not nonnegative:  # ReLU outputs skip this pass
                np.abs(scaled, out=scaled)
            np.copyto(index, scaled, casting="unsafe")  # truncation == floor for values >= 0
            self.counts += np.bincount(index, minlength=self.num_bins)


# ---------------------------------------------------------------------------------------------------
# Methods: histogram of |x| (counts per bin, bin j = [j*w, (j+1)*w)) → amax in the tensor's units.
# ``absmax``, when given, is the exact largest |x| seen: results never exceed it.
# ---------------------------------------------------------------------------------------------------

def _as_hist(hist: Any) -> np.ndarray:
    h = np.asarray(hist)
    if h.ndim != 1 or (h.size and h.min() < 0):
        raise ValueError("hist must be a 1-D array of non-negative counts")
    return h.astype(np.float64)


def _used_bins(h: np.ndarray) -> int:
    nonzero = np.flatnonzero(h)
    return int(nonzero[-1]) + 1 if nonzero.size else 0


def _clamp(amax: float, absmax: float | None) -> float:
    return float(amax if absmax is None else min(amax, absmax))


def amax_minmax(hist: Any, bin_width: float, *, absmax: float | None = None) -> float:
    """The largest |x|: ``absmax`` when known, else the upper edge of the last non-empty bin."""
    if absmax is not None:
        return float(absmax)
    return float(_used_bins(_as_hist(hist)) * bin_width)


def amax_percentile(hist: Any, bin_width: float, percentile: float = 99.99, *,
                    absmax: float | None = None) -> float:
    """The ``percentile`` (in percent) of |x|, interpolated linearly inside its bin.

    Values are taken as uniform within a bin, so a uniform |x| on [0, M) gives p/100 * M.
    (ONNX Runtime returns the lower edge of the bin instead, which is up to one bin lower.)
    """
    h = _as_hist(hist)
    total = h.sum()
    if total == 0:
        return 0.0
    target = percentile / 100.0 * total
    cum = np.cumsum(h)
    j = min(int(np.searchsorted(cum, target, side="left")), h.size - 1)
    below = cum[j - 1] if j > 0 else 0.0
    frac = (target - below) / h[j] if h[j] > 0 else 1.0
    return _clamp((j + min(max(frac, 0.0), 1.0)) * bin_width, absmax)


def entropy_divergences(hist: Any, start_bin: int = ENTROPY_START_BIN, levels: int = INT8_LEVELS,
                        zero_bin_as_neighbor: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """KL(P‖Q) for every candidate threshold ``i`` (in bins) from ``start_bin`` to the last used bin.

    TensorRT's EntropyCalibration2 candidate ``i`` keeps bins [0, i): P is those bins with the count
    of every higher bin (the outliers) added to bin i-1; Q quantizes bins [0, i) into ``levels``
    equal groups of bins and spreads each group's total evenly over its non-empty bins (empty bins
    stay empty). Both are normalized. Q is 0 where P is not (bin i-1 empty but outliers present)
    gives an infinite divergence.

    ``zero_bin_as_neighbor`` first replaces the count of bin 0 by that of bin 1, as NVIDIA's
    reference implementation (pytorch-quantization, ModelOpt) does: after a ReLU about half of all
    values are exactly 0, and that spike, smeared over its group by Q, would otherwise pull the
    threshold down to the first candidate (measured: N(0, 1) after ReLU gets 2.0 instead of ~4.5).
    Zeros are exact in int8 at any threshold, so they should not steer it.

    Vectorized over candidates and groups with cumulative sums: O(candidates × levels), no Python
    loop over bins. Per group c of bins [s, e) with total S, N non-empty bins and sum of b·log b L,
    Σ_j b_j log(b_j / q_j) = L − S·log(S/N); the outliers change only bin i-1's term.

    Returns:
        (candidates, divergences): candidate thresholds in bins, and KL(P‖Q) in nats for each.
    """
    h = _as_hist(hist)
    if zero_bin_as_neighbor and h.size > 1:
        h = h.copy()
        h[0] = h[1]
    n = _used_bins(h)
    if n < start_bin:
        return np.arange(0), np.zeros(0)
    total = h.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        blogb = np.where(h > 0, h * np.log(np.where(h > 0, h, 1.0)), 0.0)
    zero = np.zeros(1)
    cum = np.concatenate([zero, np.cumsum(h)])
    cum_nz = np.concatenate([zero, np.cumsum(h > 0)])
    cum_blogb = np.concatenate([zero, np.cumsum(blogb)])

    cand = np.arange(start_bin, n + 1)  # (C,)
    groups = np.arange(levels + 1)  # (L+1,)
    # group c of candidate i holds bins j with c*i/levels <= j < (c+1)*i/levels (np.digitize on the
    # linspace edges in the published reference): boundary ceil(c*i/levels), exact in integers.
    bounds = -((-groups[None, :] * cand[:, None]) // levels)  # (C, L+1)
    s, e = bounds[:, :-1], bounds[:, 1:]
    S = cum[e] - cum[s]
    N = cum_nz[e] - cum_nz[s]
    L = cum_blogb[e] - cum_blogb[s]
    with np.errstate(divide="ignore", invalid="ignore"):
        per_group = np.where(S > 0, L - S * np.log(S / np.maximum(N, 1)), 0.0)
        kept = cum[cand]  # Σ bins [0, i)
        outliers = total - kept
        last = h[cand - 1]
        q_last = S[:, -1] / np.maximum(N[:, -1], 1)  # Q count of bin i-1 when it is non-empty
        corr = np.where(
            outliers > 0,
            np.where(last > 0,
                     (last + outliers) * np.log(np.maximum(last + outliers, 1.0)) - blogb[cand - 1]
                     - outliers * np.log(np.where(q_last > 0, q_last, 1.0)),
                     np.inf),
            0.0)
        div = (per_group.sum(axis=1) + corr) / total + np.log(kept / total)
    div = np.where(kept > 0, div, np.inf)
    return cand, np.maximum(div, 0.0)  # KL >= 0; clears -1e-16 rounding noise


def amax_entropy(hist: Any, bin_width: float, *, absmax: float | None = None, start_bin: int = ENTROPY_START_BIN,
                 levels: int = INT8_LEVELS, zero_bin_as_neighbor: bool = True) -> float:
    """Threshold of minimum KL divergence (TensorRT's EntropyCalibration2), see :func:`entropy_divergences`.

    The threshold of candidate ``i`` is the upper edge of the kept bins, ``i * bin_width``; among
    equal divergences the largest threshold wins (as in NVIDIA's pytorch-quantization/ModelOpt).
    Candidates run up to the last non-empty bin; a tensor using fewer than ``start_bin`` bins gets
    its full range.
    """
    cand, div = entropy_divergences(hist, start_bin, levels, zero_bin_as_neighbor)
    if cand.size == 0 or not np.isfinite(div).any():
        return amax_minmax(hist, bin_width, absmax=absmax)
    best = cand.size - 1 - int(np.argmin(div[::-1]))
    return _clamp(int(cand[best]) * bin_width, absmax)


def _sawtooth_integral(u: np.ndarray) -> np.ndarray:
    """∫_0^u (t − round(t))² dt for u >= 0: whole periods give 1/12 each, the rest f³/3."""
    r = np.floor(u + 0.5)
    f = u - r
    return r / 12.0 + f ** 3 / 3.0


def mse_errors(hist: Any, bin_width: float, start_bin: int = ENTROPY_START_BIN,
               levels: int = INT8_LEVELS - 1, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Expected squared int8 error E[(x − q(x))²] for each candidate threshold ``i`` (in bins).

    For amax = i * bin_width, scale s = amax / ``levels`` (127); |x| <= amax is rounded to a multiple
    of s, |x| > amax is clipped to amax. Values are taken as uniform within each bin, so the error of
    bin [l, r) is the exact mean of the rounding sawtooth over it, s³·(H(r/s) − H(l/s)) / w, or of the
    clipping error (x − amax)² (closed form via moment sums). Candidates start at ``start_bin`` (as
    the entropy method) and end at the last used bin.

    Returns:
        (candidates, mse): candidate thresholds in bins, and the mean squared error in the tensor's
        units squared.
    """
    h = _as_hist(hist)
    n = _used_bins(h)
    if n == 0:
        return np.arange(0), np.zeros(0)
    w = float(bin_width)
    total = h.sum()
    cand = np.arange(min(start_bin, n), n + 1)
    j = np.arange(n, dtype=np.float64)
    hn = h[:n]
    # Clipped bins j >= i: mean of (x − a)² over the bin is w²·(k² + k + 1/3) with k = j − i.
    m0 = np.concatenate([np.cumsum(hn[::-1])[::-1], [0.0]])
    m1 = np.concatenate([np.cumsum((hn * j)[::-1])[::-1], [0.0]])
    m2 = np.concatenate([np.cumsum((hn * j * j)[::-1])[::-1], [0.0]])
    i_f = cand.astype(np.float64)
    k2 = m2[cand] - 2 * i_f * m1[cand] + i_f * i_f * m0[cand]
    k1 = m1[cand] - i_f * m0[cand]
    clip = w * w * (k2 + k1 + m0[cand] / 3.0)
    # Rounded bins j < i: (s³/w)·(H((j+1)/s') − H(j/s')) with bin edges in units of s.
    rounding = np.zeros(cand.size)
    for b0 in range(0, cand.size, block):
        ib = i_f[b0:b0 + block, None]  # (B, 1)
        hi_bin = int(cand[b0:b0 + block].max())
        edges = np.arange(hi_bin + 1, dtype=np.float64)[None, :] * (levels / ib)  # edge/s, (B, hi+1)
        H = _sawtooth_integral(edges)
        per_bin = (H[:, 1:] - H[:, :-1]) * hn[None, :hi_bin]
        per_bin[np.arange(hi_bin)[None, :] >= ib] = 0.0
        s = ib[:, 0] * w / levels
        rounding[b0:b0 + block] = per_bin.sum(axis=1) * s ** 3 / w
    return cand, (rounding + clip) / total


def amax_mse(hist: Any, bin_width: float, *, absmax: float | None = None, start_bin: int = ENTROPY_START_BIN) -> float:
    """Threshold of minimum expected int8 quantization MSE (rounding + clipping), see :func:`mse_errors`."""
    cand, err = mse_errors(hist, bin_width, start_bin)
    if cand.size == 0:
        return 0.0
    return _clamp(int(cand[int(np.argmin(err))]) * bin_width, absmax)


def tensor_range(stats: StreamingHistogram, config: CalibrationConfig) -> TensorRange:
    """The range of one tensor under ``config.method``; min/max are the extremes clipped to ±amax.

    A tensor that was zero on every sample gets amax 0.0 (quantizers must treat it as a constant).
    """
    hist, width, absmax = stats.counts, stats.bin_width, stats.absmax
    if config.method == "minmax" or width == 0.0:
        amax = absmax
    elif config.method == "entropy":
        amax = amax_entropy(hist, width, absmax=absmax)
    elif config.method == "percentile":
        amax = amax_percentile(hist, width, config.percentile, absmax=absmax)
    else:
        amax = amax_mse(hist, width, absmax=absmax)
    lo = min(max(stats.min, -amax), amax) if stats.count else 0.0
    hi = min(max(stats.max, -amax), amax) if stats.count else 0.0
    return TensorRange(float(amax), float(lo), float(hi))


# ---------------------------------------------------------------------------------------------------
# The model side: which tensors, the augmented copy, and checking the data against the signature.
# ---------------------------------------------------------------------------------------------------

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
                              "name tensors of the top-level graph (see trtopt.calibrate.calibration_tensors)")
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


# ---------------------------------------------------------------------------------------------------
# The stage.
# ---------------------------------------------------------------------------------------------------

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
        ort: an :class:`trtopt.config.OrtConfig` for the ONNX Runtime session (default: CPU, all cores).

    Returns:
        Ranges: tensor → (amax, min, max) in graph order, the method, samples seen, a sha256
        fingerprint of the exact arrays the model was fed (independent of batching), the model's
        sha256 and the settings. Deterministic: the same data gives the same ranges.

    Raises:
        TrtoptError: a missing or corrupt model; no float tensors to calibrate; unknown, non-float or
        weight tensors requested; no samples; an input missing, unexpected, of the wrong dtype or
        shape (named, expected vs got), or containing NaN/inf; a tensor that becomes NaN/inf.
        Nothing is written outside a temporary folder, which is removed.
    """
    from trtopt.backends.ort import OrtRunner
    from trtopt.config import OrtConfig

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
    fetched = [n for n in names if n not in input_names]  # graph inputs come from the feed itself
    stats = {n: StreamingHistogram(config.num_bins) for n in names}
    checker = _InputChecker(artifact.inputs, path.name)
    batches, total = _batches(data, checker, config)
    progress = on_progress or (lambda _done, _total: None)

    workers = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="trtopt-calibrate-") as tmp, \
            ThreadPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        runner = None
        if fetched:
            augmented = write_with_outputs(model, path, fetched, Path(tmp))
            runner = OrtRunner(augmented, ort or OrtConfig())
        del model
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
            jobs = [(stats[name], feed[name], name) for name in names if name in input_names]
            if runner is not None:
                jobs += [(stats[name], value, name) for name, value in runner.infer(feed).items() if name in stats]
            # One tensor per task: numpy releases the GIL, so the cores ONNX Runtime just used bin in
            # parallel; each histogram is updated by one task per batch, so results do not depend on it.
            for _ in (pool.map(_update_job, jobs) if pool is not None else map(_update_job, jobs)):
                pass
            progress(checker.samples, total)
            if config.max_samples is not None and checker.samples >= config.max_samples:
                break
        if runner is not None:
            runner.close()
    if checker.samples == 0:
        raise TrtoptError("the calibration data hold no samples", "provide at least one sample (hundreds are typical)")
    return Ranges(
        tensors={name: tensor_range(stats[name], config) for name in names},
        method=config.method,
        samples=checker.samples,
        data_sha256=checker.digest(),
        model_sha256=artifact.sha256,
        settings={**config.to_dict(), "histogram": "|x|, power-of-two bin width",
                  "entropy_start_bin": ENTROPY_START_BIN, "entropy_zero_bin_as_neighbor": True},
    )


def _update_job(job: tuple[StreamingHistogram, Any, str]) -> None:
    _update(*job)


def _update(stats: StreamingHistogram, value: Any, name: str) -> None:
    arr = np.asarray(value)
    if arr.dtype.kind != "f":
        raise TrtoptError(f"tensor {name!r} is {arr.dtype.name}, not a float tensor",
                          "calibrate float (fp32/fp16) tensors only")
    try:
        stats.update(arr)
    except ValueError as e:
        raise TrtoptError(f"tensor {name!r} becomes NaN or inf on the calibration data",
                          "check the model and the data (an overflow or a division by zero upstream)") from e
