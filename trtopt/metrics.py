"""Every formula a trtopt report carries, each defined once, as plain numpy functions.

The seed article's numbers made precise (see DESIGN.md, "The numbers every report carries"): compression
ratio, speedup ratio, pruning rate and quantization error; and the accuracy measures that judge a
compressed model against its original: cosine similarity, top-1 agreement and top-k accuracy. Output
comparison (`trtopt.measure.compare`), INT8 sensitivity (`trtopt.quant.sensitivity`), distillation's eval
metrics (`trtopt.compress.distill`), the pipeline's task accuracy and the benchmarks all call these, so a
"cosine" or an "agreement" means the same number everywhere.

Each function checks its inputs and raises :class:`~trtopt.errors.TrtoptError` on values that would make
the number meaningless (a zero size, a negative time, mismatched shapes), so a report never shows ``inf``
or a silently wrong ratio. Nothing here knows about torch, ONNX or a backend: callers measure sizes, times
and outputs, and pass the numbers in (torch tensors as ``tensor.detach().cpu().numpy()``).
"""

from __future__ import annotations

import math
from typing import Any

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


def paired_arrays(first: ArrayLike, second: ArrayLike, problem: str, fix: str) -> tuple[np.ndarray, np.ndarray]:
    """``first`` and ``second`` as float64 arrays of one shape (the operands of an element-wise comparison).

    Raises:
        TrtoptError: the shapes differ; ``problem`` is formatted with the two shapes (``{0}``, ``{1}``).
    """
    first_array = np.asarray(first, dtype=np.float64)
    second_array = np.asarray(second, dtype=np.float64)
    if first_array.shape != second_array.shape:
        raise TrtoptError(problem.format(first_array.shape, second_array.shape), fix)
    return first_array, second_array


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
    original_array, quantized_array = paired_arrays(
        original, quantized, "quantization error needs arrays of one shape, got original {0} and quantized {1}",
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


def _sample_vectors(reference: ArrayLike, candidate: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays as float64 ``(N, D)``: one row per sample (axis 0), the sample's elements flattened.

    Arrays of 0 or 1 dimensions are one sample. Raises TrtoptError if the shapes differ.
    """
    reference_array, candidate_array = paired_arrays(
        reference, candidate, "cosine similarity needs arrays of one shape, got reference {0} and candidate {1}",
        "compare the outputs of the same inputs, in the same order and batch size")
    if reference_array.ndim <= 1:
        return reference_array.reshape(1, -1), candidate_array.reshape(1, -1)
    shape = (reference_array.shape[0], math.prod(reference_array.shape[1:]))  # -1 is ambiguous with 0 samples
    return reference_array.reshape(shape), candidate_array.reshape(shape)


def cosine_per_sample(reference: ArrayLike, candidate: ArrayLike) -> np.ndarray:
    """Cosine similarity of each sample's output vector to the reference's, as a float64 ``(N,)`` array.

    ``cos(r, c) = r · c / (‖r‖ ‖c‖)`` per sample, in [-1, 1]: 1 when the two point the same way whatever
    their lengths, 0 when orthogonal.

    Args:
        reference: the trusted output, shape ``(N, ...)``: axis 0 is the sample (batch) axis and the
            rest of each sample is flattened into one vector. A 0-D or 1-D array is one sample (a
            per-sample cosine of scalars would only compare signs). Any numeric dtype.
        candidate: the output under test, of the same shape.

    Edge cases:
        - Elements that are NaN or infinite in either array are left out of that sample's vectors (on
          both sides); count them separately (`trtopt.measure.compare` reports and fails on them). A
          sample with no element finite in both (or no elements) has no angle: NaN.
        - A sample whose two vectors are both zero is identical: 1.0.
        - A sample where exactly one vector is zero has no angle: NaN. Its difference is an element-wise
          matter (an all-zero ReLU output against FP16 noise of 1e-7 should pass on an absolute
          tolerance, not fail on a cosine of 0).

    Each vector is divided by its largest magnitude first, so that squaring values above about 1e154
    (a diverged model's output) cannot overflow float64.

    Raises:
        TrtoptError: if the shapes differ.
    """
    reference_rows, candidate_rows = _sample_vectors(reference, candidate)
    finite = np.isfinite(reference_rows) & np.isfinite(candidate_rows)
    reference_rows = np.where(finite, reference_rows, 0.0)
    candidate_rows = np.where(finite, candidate_rows, 0.0)
    reference_peak = np.abs(reference_rows).max(axis=1, initial=0.0)
    candidate_peak = np.abs(candidate_rows).max(axis=1, initial=0.0)
    cosines = np.full(reference_rows.shape[0], np.nan)
    cosines[(reference_peak == 0.0) & (candidate_peak == 0.0) & finite.any(axis=1)] = 1.0
    defined = (reference_peak > 0.0) & (candidate_peak > 0.0)
    reference_unit = reference_rows[defined] / reference_peak[defined, None]
    candidate_unit = candidate_rows[defined] / candidate_peak[defined, None]
    dot = np.einsum("ij,ij->i", reference_unit, candidate_unit)
    norms = np.linalg.norm(reference_unit, axis=1) * np.linalg.norm(candidate_unit, axis=1)
    cosines[defined] = np.clip(dot / norms, -1.0, 1.0)  # rounding can step just past +-1
    return cosines


def cosine_similarity(reference: ArrayLike, candidate: ArrayLike) -> float | None:
    """Mean over samples of the per-sample cosine similarity (:func:`cosine_per_sample`), in [-1, 1].

    Why per sample, then the mean, rather than one cosine of everything flattened: every sample weighs
    the same whatever the magnitude of its output (a flattened cosine is dominated by the samples with the
    largest outputs, so one sample that quantization broke can hide among loud ones); a sample's score does
    not depend on which other samples share its batch; and it is the number embedding users rank by
    (the cosine between the two models' embeddings of one input), which distillation with
    ``output_loss="cosine"`` trains for. For a single sample it equals the flattened cosine.

    Samples without an angle (exactly one zero vector, see :func:`cosine_per_sample`) are left out of the
    mean. Example: reference ``[[1, 0], [0, 1]]``, candidate ``[[1, 0], [1, 1]]`` gives
    (1 + 1/√2) / 2 ≈ 0.8536.

    Returns:
        The mean as a float, or None if no sample has a defined cosine (there are no samples, or every
        sample pairs a zero vector with a non-zero one or has no finite elements). A caller that must
        rank models by it scores None as 0.0 (no similarity).

    Raises:
        TrtoptError: if the shapes differ.
    """
    cosines = cosine_per_sample(reference, candidate)
    defined = cosines[~np.isnan(cosines)]
    return float(defined.mean()) if defined.size else None


def _class_scores(name: str, scores: np.ndarray) -> None:
    """Raise unless ``scores`` is ``(N, ..., C)`` with at least one sample and one class."""
    if scores.ndim < 2 or scores.shape[0] == 0 or scores.shape[-1] == 0:
        raise TrtoptError(f"{name} needs class scores of shape (N, C) or (N, ..., C) with N >= 1 and C >= 1, "
                          f"got {scores.shape}", "pass the classifier's (batch, classes) output")


def top1_agreement(reference: ArrayLike, candidate: ArrayLike) -> float:
    """Fraction of predictions whose top-1 class is the same in both outputs, in [0, 1] (no labels needed).

    ``mean(argmax(reference, -1) == argmax(candidate, -1))`` over every sample (and every position, for
    ``(N, ..., C)`` outputs such as per-token logits). Ties go to the lowest class index, as in
    ``numpy.argmax``. Example: reference ``[[0.1, 0.9], [0.8, 0.2]]``, candidate ``[[0.2, 0.8], [0.4, 0.6]]``
    agree on the first row only: 0.5.

    Args:
        reference: ``(N, C)`` or ``(N, ..., C)`` scores (logits or probabilities) of the trusted model.
        candidate: the scores of the model under test, same shape.

    Raises:
        TrtoptError: if the shapes differ, or are not ``(N, ..., C)`` with N >= 1 and C >= 1.
    """
    reference_scores = np.asarray(reference)
    candidate_scores = np.asarray(candidate)
    if reference_scores.shape != candidate_scores.shape:
        raise TrtoptError(f"top-1 agreement needs scores of one shape, got reference {reference_scores.shape} "
                          f"and candidate {candidate_scores.shape}", "compare the outputs of the same inputs")
    _class_scores("top-1 agreement", reference_scores)
    return float(np.mean(np.argmax(reference_scores, axis=-1) == np.argmax(candidate_scores, axis=-1)))


def topk_accuracy(logits: ArrayLike, labels: ArrayLike, k: int = 1) -> float:
    """Fraction of predictions whose true label is among the ``k`` highest scores, in [0, 1].

    Top-1 accuracy is ``k=1``. Ties among equal scores go to the lowest class index (a stable sort), so
    ``k=1`` picks the same class as :func:`top1_agreement`. Example: scores ``[[0.1, 0.7, 0.2],
    [0.5, 0.3, 0.2]]`` with labels ``[1, 1]``: top-1 0.5, top-2 1.0.

    Args:
        logits: ``(N, C)`` scores (logits or probabilities) for N samples and C classes, or
            ``(N, ..., C)`` with one label per position (per-token classification).
        labels: integer class indices in ``[0, C)``, of shape ``logits.shape[:-1]``.
        k: how many top classes count as a hit, 1 <= k <= C.

    Raises:
        TrtoptError: on wrong shapes, an empty batch, non-integer or out-of-range labels, or a bad k.
    """
    scores = np.asarray(logits)
    targets = np.asarray(labels)
    _class_scores("top-k accuracy", scores)
    if targets.shape != scores.shape[:-1]:
        raise TrtoptError(f"labels of shape {targets.shape} do not fit logits of shape {scores.shape}",
                          f"pass one integer label per prediction, shape {scores.shape[:-1]}")
    if not np.issubdtype(targets.dtype, np.integer):
        raise TrtoptError(f"labels must be integer class indices, got dtype {targets.dtype}",
                          "convert the labels to integers, e.g. labels.astype(np.int64)")
    classes = scores.shape[-1]
    if np.any(targets < 0) or np.any(targets >= classes):
        raise TrtoptError(f"labels must lie in [0, {classes}), got values from {targets.min()} to "
                          f"{targets.max()}", "check that labels and logits use the same class indexing")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= classes:
        raise TrtoptError(f"k must be an integer from 1 to the number of classes ({classes}), got {k!r}",
                          "use k=1 or k=5 on a model with at least that many classes")
    top = np.argsort(-scores.astype(np.float64), axis=-1, kind="stable")[..., :k]
    return float(np.mean(np.any(top == targets[..., None], axis=-1)))


#: Kinds of model output :func:`output_kind` tells apart, each judged by its own measures (:func:`task_metrics`).
OUTPUT_KINDS = ("classification", "embedding", "dense", "regression")

#: Keys :func:`task_metrics` may return (besides ``output_kind``), in report order.
TASK_METRIC_KEYS = ("output_kind", "top5_agreement", "neighbour_agreement", "pixel_agreement", "mean_iou",
                    "abs_error_p50", "abs_error_p99")

_NAME_HINTS = (("embedding", ("embed", "sentence", "pooler", "pooled", "feature", "descriptor")),
               ("regression", ("box", "bbox", "landmark", "coord", "regress", "depth", "offset", "keypoint")),
               ("classification", ("logit", "prob", "class", "cls", "score")))


def output_kind(name: str, reference: ArrayLike) -> str:
    """Which kind of output ``reference`` (the FP32 model's output named ``name``) is, one of :data:`OUTPUT_KINDS`.

    First by name (``*embed*``/``*pooler*`` → embedding; ``*box*``/``*landmark*``/``*depth*`` → regression;
    ``*logit*``/``*prob*``/``*class*`` → classification), then by shape: ``(N, C, H, W)`` or larger →
    dense (a per-pixel map: segmentation logits when C > 1); ``(N, T, D)`` → embedding (per token);
    ``(N, D)`` whose rows have unit L2 norm → embedding; ``(N, C)`` with C >= 2 → classification;
    anything else (``(N,)``, ``(N, 1)``) → regression. A recipe's ``metric`` overrides what the report
    headlines; this only decides which measures are computed.
    """
    lowered = name.lower()
    for kind, hints in _NAME_HINTS:
        if any(h in lowered for h in hints):
            return kind
    array = np.asarray(reference)
    if array.ndim >= 4:
        return "dense"
    if array.ndim == 3:
        return "embedding"
    if array.ndim == 2 and array.shape[1] >= 2:
        norms = np.linalg.norm(array.astype(np.float64), axis=1)
        if norms.size and np.allclose(norms, 1.0, atol=1e-3):
            return "embedding"
        return "classification"
    return "regression"


def neighbour_agreement(reference: ArrayLike, candidate: ArrayLike) -> float | None:
    """Retrieval agreement of two embeddings of the same N samples, in [0, 1]; None for N < 3.

    For each sample, its nearest other sample by cosine similarity among the N (a retrieval of the
    nearest neighbour) is found in both embedding spaces; the result is the fraction of samples whose
    neighbour is the same. 1.0: the compressed model retrieves exactly what the original does.
    Example: four points where the candidate swaps which of two close points is nearest → 0.5.
    """
    ref, cand = (np.asarray(a, dtype=np.float64).reshape(len(np.asarray(a)), -1) for a in (reference, candidate))
    if ref.shape[0] < 3:
        return None

    def nearest(x: np.ndarray) -> np.ndarray:
        unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(np.float64).tiny)
        sim = unit @ unit.T
        np.fill_diagonal(sim, -np.inf)
        return np.argmax(sim, axis=1)

    return float(np.mean(nearest(ref) == nearest(cand)))


def mean_iou(reference_labels: ArrayLike, candidate_labels: ArrayLike) -> float:
    """Mean intersection-over-union of two label maps over the classes either uses (the mIoU of
    semantic segmentation, with the reference's map as ground truth), in [0, 1].

    IoU of class c = |ref == c ∧ cand == c| / |ref == c ∨ cand == c|; the mean is over every class present
    in either map (Everingham et al., PASCAL VOC). Example: ``[0, 0, 1, 1]`` vs ``[0, 1, 1, 1]``:
    class 0 1/2, class 1 2/3, mean 0.583.
    """
    ref, cand = np.asarray(reference_labels), np.asarray(candidate_labels)
    ious = []
    for c in np.union1d(np.unique(ref), np.unique(cand)):
        r, k = ref == c, cand == c
        ious.append(np.count_nonzero(r & k) / np.count_nonzero(r | k))
    return float(np.mean(ious))


def task_metrics(name: str, reference: ArrayLike, candidate: ArrayLike) -> dict[str, Any]:
    """The measures that fit the kind of output (:func:`output_kind`), candidate vs reference (no labels).

    - classification ``(N, C)``: ``top1_agreement`` (:func:`top1_agreement`), and ``top5_agreement`` when
      C > 5: the fraction of samples whose reference top-1 class is among the candidate's 5 highest.
    - embedding: ``neighbour_agreement`` (:func:`neighbour_agreement`); cosine is computed for every output.
    - dense ``(N, C, H, W)`` with C > 1: ``pixel_agreement`` (the fraction of pixels whose argmax class
      over axis 1 is the same) and ``mean_iou`` (:func:`mean_iou` of the two argmax maps); with C == 1 as
      regression.
    - regression: nothing more here; `trtopt.measure.compare.compare_output` carries the error quantiles
      (``abs_error_p50`` / ``abs_error_p99``, in the output's units) of every output.

    Returns ``{"output_kind": kind, ...}`` with the keys that apply (a subset of :data:`TASK_METRIC_KEYS`
    plus ``top1_agreement``).

    Raises:
        TrtoptError: if the shapes differ.
    """
    ref, cand = paired_arrays(reference, candidate, "task metrics need outputs of one shape, got {0} and {1}",
                              "compare the outputs of the same inputs")
    kind = output_kind(name, ref)
    out: dict[str, Any] = {"output_kind": kind}
    if kind == "classification" and ref.ndim >= 2 and ref.shape[0] and ref.shape[-1] > 1:
        out["top1_agreement"] = top1_agreement(ref, cand)
        if ref.shape[-1] > 5:
            top5 = np.argsort(-cand, axis=-1, kind="stable")[..., :5]
            out["top5_agreement"] = float(np.mean(np.any(top5 == np.argmax(ref, axis=-1)[..., None], axis=-1)))
    elif kind == "embedding":
        out["neighbour_agreement"] = neighbour_agreement(ref, cand)
    elif kind == "dense" and ref.shape[1] > 1:
        ref_map, cand_map = np.argmax(ref, axis=1), np.argmax(cand, axis=1)
        out["pixel_agreement"] = float(np.mean(ref_map == cand_map))
        out["mean_iou"] = mean_iou(ref_map, cand_map)
    elif kind == "dense":
        out["output_kind"] = "regression"  # a one-channel map (depth, saliency): judged by its errors
    return out
