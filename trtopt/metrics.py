"""The headline numbers every trtopt report carries, as plain formulas.

These are the seed article's definitions made precise (see DESIGN.md, "The numbers every report
carries"): compression ratio, speedup ratio, pruning rate and quantization error. Each function checks its
inputs and raises :class:`~trtopt.errors.TrtoptError` on values that would make the number meaningless
(a zero size, a negative time), so a report never shows ``inf`` or a silently wrong ratio. Nothing here
knows about torch, ONNX or a backend: callers measure sizes, times and tensors, and pass the numbers in.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from trtopt.errors import TrtoptError

#: Percentiles reported by :func:`error_summary`, as (key, percent) pairs.
_SUMMARY_PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0))


def _require_positive(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise if it is not a finite number above zero."""
    number = float(value)
    if not math.isfinite(number) or number <= 0.0:
        raise TrtoptError(f"{name} must be a finite number above zero, got {value!r}",
                          f"pass the measured {name} of a non-empty model")
    return number


def compression_ratio(original_bytes: float, compressed_bytes: float) -> float:
    """How many times smaller the compressed model is: ``original_bytes / compressed_bytes``.

    Both sizes are in bytes (of the deployable artifact, or of the parameters alone; the same kind on
    both sides). A ratio above 1 means the compressed model is smaller; 200 MB -> 50 MB gives 4.0.

    Raises:
        TrtoptError: if either size is not a finite number above zero.
    """
    return _require_positive("original_bytes", original_bytes) / _require_positive(
        "compressed_bytes", compressed_bytes)


def speedup_ratio(original_time: float, compressed_time: float) -> float:
    """How many times faster the compressed model is: ``original_time / compressed_time``.

    Both times must be in the same unit (e.g. median latency in milliseconds, timed in the same run with
    the same batch and input); the ratio itself is unitless. Above 1 means the compressed model is faster.

    Raises:
        TrtoptError: if either time is not a finite number above zero.
    """
    return _require_positive("original_time", original_time) / _require_positive(
        "compressed_time", compressed_time)


def pruning_rate_percent(pruned_params: int, total_params: int) -> float:
    """Share of parameters removed, in percent: ``pruned_params / total_params * 100``.

    Counted in parameters (scalar weights), not channels: removing half of a conv's output channels and
    half of the next conv's input channels removes about 75 % of the second conv's weights. 3,000,000
    pruned of 10,000,000 gives 30.0.

    Raises:
        TrtoptError: if ``total_params <= 0``, ``pruned_params < 0`` or ``pruned_params > total_params``.
    """
    if total_params <= 0:
        raise TrtoptError(f"total_params must be above zero, got {total_params}",
                          "count the parameters of the original, unpruned model")
    if pruned_params < 0 or pruned_params > total_params:
        raise TrtoptError(
            f"pruned_params must be between 0 and total_params ({total_params}), got {pruned_params}",
            "pass the number of parameters removed, counted in the same model as total_params")
    return pruned_params / total_params * 100.0


def quantization_error(original: ArrayLike, quantized: ArrayLike) -> np.ndarray:
    """Elementwise absolute error ``|original - quantized|`` as a float64 array of the common shape.

    Computed in float64 so that the error of an FP16 or INT8-dequantized tensor is not itself rounded;
    |0.823 - 0.820| gives 0.003. Summarize the result with :func:`error_summary` (a distribution, not one
    number, is what tells a rare outlier from a uniform shift).

    Raises:
        TrtoptError: if the two arrays differ in shape (broadcasting would hide a layout mistake).
    """
    original_array = np.asarray(original, dtype=np.float64)
    quantized_array = np.asarray(quantized, dtype=np.float64)
    if original_array.shape != quantized_array.shape:
        raise TrtoptError(
            f"quantization error needs arrays of one shape, got original {original_array.shape} "
            f"and quantized {quantized_array.shape}",
            "compare the same tensor before and after quantization")
    return np.abs(original_array - quantized_array)


def error_summary(errors: ArrayLike) -> dict[str, float]:
    """Distribution of an error array (any shape, flattened): ``mean``, ``max``, ``p50``, ``p90``, ``p99``.

    Values are floats in the unit of ``errors`` (for :func:`quantization_error`, the tensor's own unit).
    Percentiles use numpy's default linear interpolation.

    Raises:
        TrtoptError: if ``errors`` is empty.
    """
    values = np.asarray(errors, dtype=np.float64).ravel()
    if values.size == 0:
        raise TrtoptError("cannot summarize an empty error array",
                          "pass the errors of at least one element")
    summary = {"mean": float(values.mean()), "max": float(values.max())}
    percentiles = np.percentile(values, [percent for _, percent in _SUMMARY_PERCENTILES])
    summary.update({key: float(value)
                    for (key, _), value in zip(_SUMMARY_PERCENTILES, percentiles, strict=True)})
    return summary
