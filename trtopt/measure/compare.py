"""Accuracy of a candidate's outputs against a reference's: element tolerances, cosine, top-1 agreement.

A compressed model (pruned, INT8, FP16, a TensorRT engine) is only useful if its outputs stay close to
the original's. This module compares output arrays element by element and as whole vectors:

- the element rule is numpy's ``allclose``: an element passes if
  ``|candidate - reference| <= atol + rtol * |reference|`` (NaN matches only NaN, inf only the same inf);
- cosine similarity (`trtopt.metrics.cosine_similarity`: per sample, then the mean over samples)
  catches a uniform drift that per-element tolerances let through (and forgives a few outliers that
  they do not);
- the error distribution (mean, p50, p90, p99, max) tells a rare outlier from a general shift;
- for ``(batch, classes)`` outputs, top-1 agreement (`trtopt.metrics.top1_agreement`) says how often
  the predicted class is unchanged.

Everything is numpy on host arrays; backends deliver the outputs, this module only judges them. The
formulas live in `trtopt.metrics`, so these numbers are the ones sensitivity and distillation report.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from trtopt import metrics
from trtopt._config import check_number
from trtopt.errors import TrtoptError

#: Percentiles of the absolute error reported by :func:`compare_output`, as (key, percent) pairs.
_ERROR_PERCENTILES = (("abs_error_p50", 50.0), ("abs_error_p90", 90.0), ("abs_error_p99", 99.0))


@dataclass(frozen=True)
class Tolerances:
    """When a candidate output counts as equal to the reference output.

    Attributes:
        atol: absolute tolerance per element, in the output's own unit.
        rtol: relative tolerance per element, as a fraction of ``|reference|``.
        min_cosine: lowest acceptable cosine similarity (`trtopt.metrics.cosine_similarity`: the
            mean over samples of each sample's cosine), in [-1, 1].

    An output passes if every element satisfies ``|candidate - reference| <= atol + rtol * |reference|``
    and the cosine similarity is at least ``min_cosine``.
    """

    atol: float = 1e-4
    rtol: float = 1e-3
    min_cosine: float = 0.999

    def __post_init__(self) -> None:
        check_number("atol", self.atol, 0)
        check_number("rtol", self.rtol, 0)
        check_number("min_cosine", self.min_cosine, -1, 1)

    def to_dict(self) -> dict[str, float]:
        """The tolerances as a JSON-ready dict (field name -> value)."""
        return dataclasses.asdict(self)


def compare_output(name: str, reference: ArrayLike, candidate: ArrayLike, tol: Tolerances,
                   ) -> dict[str, Any]:
    """Compare one candidate output with the reference output of the same name.

    Args:
        name: output name, used in the result and in errors.
        reference: the trusted output (e.g. FP32 PyTorch), any shape and numeric dtype.
        candidate: the output under test; must have the reference's shape.
        tol: element and cosine tolerances.

    Returns:
        A dict with:
        ``output`` (name), ``shape`` (list of ints);
        ``max_abs_error``, ``mean_abs_error``, ``abs_error_p50``, ``abs_error_p90``, ``abs_error_p99``
        (of ``|candidate - reference|`` in the output's unit) and ``max_rel_error``
        (of ``|candidate - reference| / max(|reference|, atol)``; the ``atol`` floor keeps near-zero
        reference values from blowing the ratio up, down to the smallest positive float if atol is 0),
        all over the elements finite in both arrays, or None if there are none;
        ``cosine`` (`trtopt.metrics.cosine_similarity`: the mean over samples, axis 0, of each
        sample's cosine over its elements finite in both (a 0-D or 1-D output is one sample); 1.0 for
        samples zero in both, samples zero in only one left out since their angle is undefined; None if
        no sample is left);
        ``mismatched_elements`` (elements failing the allclose rule, non-finite mismatches included);
        ``nan_count`` (NaN or infinite elements in the candidate);
        ``output_kind`` and the measures that fit it (`trtopt.metrics.task_metrics`): ``top1_agreement``
        (classification outputs only, else None), ``top5_agreement``, ``neighbour_agreement`` (embeddings),
        ``pixel_agreement`` and ``mean_iou`` (dense maps);
        ``passed`` (no mismatched element and cosine >= ``tol.min_cosine``, the latter skipped when
        cosine is None).

    Raises:
        TrtoptError: if the shapes differ.
    """
    reference_array, candidate_array = metrics.paired_arrays(
        reference, candidate,
        f"output '{name.replace('{', '{{').replace('}', '}}')}' has shape {{1}} in the candidate but {{0}} in the reference",
        "compare the models on the same inputs and batch size, and check the export's output order")
    close = np.isclose(candidate_array, reference_array, rtol=tol.rtol, atol=tol.atol, equal_nan=True)
    both_finite = np.isfinite(reference_array) & np.isfinite(candidate_array)
    reference_finite = reference_array[both_finite]
    candidate_finite = candidate_array[both_finite]
    abs_error = np.abs(candidate_finite - reference_finite)
    cosine = metrics.cosine_similarity(reference_array, candidate_array)
    mismatched = int(close.size - np.count_nonzero(close))

    result: dict[str, Any] = {"output": name, "shape": [int(size) for size in reference_array.shape]}
    if abs_error.size:
        floor = max(tol.atol, np.finfo(np.float64).tiny)
        result["max_abs_error"] = float(abs_error.max())
        result["mean_abs_error"] = float(abs_error.mean())
        percentiles = np.percentile(abs_error, [percent for _, percent in _ERROR_PERCENTILES])
        result.update({key: float(value)
                       for (key, _), value in zip(_ERROR_PERCENTILES, percentiles, strict=True)})
        result["max_rel_error"] = float((abs_error / np.maximum(np.abs(reference_finite), floor)).max())
    else:
        result.update(dict.fromkeys(
            ["max_abs_error", "mean_abs_error", *(key for key, _ in _ERROR_PERCENTILES), "max_rel_error"]))
    task = metrics.task_metrics(name, reference_array, candidate_array) if reference_array.size else {}
    result.update({
        "cosine": cosine,
        "mismatched_elements": mismatched,
        "nan_count": int(candidate_array.size - np.count_nonzero(np.isfinite(candidate_array))),
        # NaN/inf where the reference has the same count as equal (np.isclose equal_nan): the candidate is
        # faithful, but the reference itself is broken on these inputs, which callers must say.
        "reference_nan_count": int(reference_array.size - np.count_nonzero(np.isfinite(reference_array))),
        "top1_agreement": task.pop("top1_agreement", None),
        **task,
        "passed": mismatched == 0 and (cosine is None or cosine >= tol.min_cosine),
    })
    return result


def compare_outputs(reference: Mapping[str, ArrayLike], candidate: Mapping[str, ArrayLike],
                    tol: Tolerances, per_output: Mapping[str, Tolerances] | None = None) -> dict[str, Any]:
    """Compare every output of a candidate with the reference's.

    Outputs are matched by name when both sides have the same names. Exporters and engine builders
    sometimes rename outputs (``output`` vs ``logits``, ``output_0``), so when the names differ but the
    counts agree, outputs are matched by position (mapping order) instead, and the result says so.

    Args:
        reference: output name -> array of the trusted model.
        candidate: output name -> array of the model under test.
        tol: tolerances applied to every output without its own entry in ``per_output``.
        per_output: reference output name -> tolerances for that output (Polygraphy-style: a logits
            output may allow more error than a box-coordinates output).

    Returns:
        ``{"passed": bool, "matched_by": "name" | "position", "tolerances": tol.to_dict(),
        "outputs": [...]}`` where each entry of ``outputs`` is :func:`compare_output` (named after the
        reference output) plus ``candidate_output``, the candidate's name for it; ``passed`` is True if
        every output passed.

    Raises:
        TrtoptError: if there are no outputs, the counts differ, or an output's shapes differ.
    """
    if not reference:
        raise TrtoptError("the reference has no outputs to compare",
                          "run the reference model and pass its outputs (name -> array)")
    if set(reference) == set(candidate):
        matched_by = "name"
        pairs = [(name, name) for name in reference]
    elif len(reference) == len(candidate):
        matched_by = "position"
        pairs = list(zip(reference, candidate, strict=True))
    else:
        missing = sorted(set(reference) - set(candidate))
        extra = sorted(set(candidate) - set(reference))
        raise TrtoptError(
            f"the candidate has {len(candidate)} outputs and the reference {len(reference)}: "
            f"missing from the candidate {missing}, not in the reference {extra}",
            "compare models with the same outputs, or select the shared outputs before comparing")
    outputs = []
    for reference_name, candidate_name in pairs:
        entry = compare_output(reference_name, reference[reference_name], candidate[candidate_name],
                               (per_output or {}).get(reference_name, tol))
        entry["candidate_output"] = candidate_name
        outputs.append(entry)
    return {"passed": all(entry["passed"] for entry in outputs), "matched_by": matched_by,
            "tolerances": tol.to_dict(), "outputs": outputs,
            **({"per_output_tolerances": {k: v.to_dict() for k, v in per_output.items()}} if per_output else {})}


def failed_outputs_message(result: Mapping[str, Any]) -> str:
    """One line naming each failed output of a :func:`compare_outputs` result and how far off it is.

    For use in error messages: for every failed output, its max_abs_error against atol, max_rel_error
    against rtol, cosine against min_cosine, and the mismatched (and non-finite) element counts.
    """
    parts = []
    for entry in result["outputs"]:
        if entry["passed"]:
            continue
        tol = result.get("per_output_tolerances", {}).get(entry["output"], result["tolerances"])
        total = math.prod(entry["shape"])
        text = (f"output '{entry['output']}': max_abs_error {measured(entry['max_abs_error'])} "
                f"(atol {tol['atol']:g}), max_rel_error {measured(entry['max_rel_error'])} "
                f"(rtol {tol['rtol']:g}), cosine {measured(entry['cosine'], 6)} (min {tol['min_cosine']:g}), "
                f"{entry['mismatched_elements']}/{total} elements mismatched")
        if entry["nan_count"]:
            text += f", {entry['nan_count']} NaN/inf in the candidate"
        parts.append(text)
    return "; ".join(parts) if parts else "all outputs are within tolerances"


def measured(value: float | None, digits: int = 3, kind: str = "g") -> str:
    """A measured value rendered for messages with ``digits`` in format ``kind`` ("g", "e"), or 'n/a' when there
    was nothing to measure (an error statistic of an output that is NaN or inf everywhere is None)."""
    return "n/a" if value is None else f"{value:.{digits}{kind}}"


def concat_batches(batches: Sequence[Mapping[str, ArrayLike]]) -> dict[str, np.ndarray]:
    """Join outputs collected batch by batch into one array per output, along axis 0 (the batch axis).

    Args:
        batches: one dict per batch, output name -> array of shape ``(batch, ...)``; every batch must
            have the same output names and the same trailing dimensions per output.

    Returns:
        Output name -> array of shape ``(sum of batch sizes, ...)``, in the first batch's name order.

    Raises:
        TrtoptError: if there are no batches, the names differ between batches, or shapes do not join.
    """
    if not batches:
        raise TrtoptError("no batches to concatenate", "collect outputs of at least one batch")
    names = list(batches[0])
    for index, batch in enumerate(batches):
        if set(batch) != set(names):
            raise TrtoptError(f"batch {index} has outputs {sorted(batch)} but batch 0 has {sorted(names)}",
                              "collect the same outputs from every batch")
    joined = {}
    for name in names:
        arrays = [np.asarray(batch[name]) for batch in batches]
        if any(array.ndim == 0 for array in arrays) or len({array.shape[1:] for array in arrays}) > 1:
            raise TrtoptError(
                f"output '{name}' cannot be joined along the batch axis: shapes "
                f"{sorted({array.shape for array in arrays})}",
                "give every batch the same trailing dimensions and a leading batch axis")
        joined[name] = np.concatenate(arrays, axis=0)
    return joined
