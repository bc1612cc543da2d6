"""Tests for trtopt.metrics: the seed article's worked examples, the accuracy measures, edge and error cases."""

from __future__ import annotations

import numpy as np
import pytest

from trtopt import metrics
from trtopt.errors import TrtoptError
from trtopt.metrics import (
    compression_ratio,
    cosine_per_sample,
    cosine_similarity,
    error_summary,
    pruning_rate_percent,
    quantization_error,
    speedup_ratio,
    top1_agreement,
    topk_accuracy,
)

MB = 1_000_000


def test_compression_ratio_seed_example():
    assert compression_ratio(200 * MB, 50 * MB) == pytest.approx(4.0)


@pytest.mark.parametrize("original, compressed", [(0, 10), (10, 0), (-1, 10), (10, float("nan"))])
def test_compression_ratio_rejects_non_positive_sizes(original, compressed):
    with pytest.raises(TrtoptError, match="bytes"):
        compression_ratio(original, compressed)


def test_speedup_ratio():
    assert speedup_ratio(12.0, 3.0) == pytest.approx(4.0)
    assert speedup_ratio(3.0, 12.0) == pytest.approx(0.25)


@pytest.mark.parametrize("original, compressed", [(0.0, 1.0), (1.0, -2.0), (float("inf"), 1.0)])
def test_speedup_ratio_rejects_non_positive_times(original, compressed):
    with pytest.raises(TrtoptError, match="time"):
        speedup_ratio(original, compressed)


def test_pruning_rate_seed_example():
    assert pruning_rate_percent(3_000_000, 10_000_000) == pytest.approx(30.0)
    assert pruning_rate_percent(0, 10) == 0.0
    assert pruning_rate_percent(10, 10) == 100.0


@pytest.mark.parametrize("pruned, total", [(1, 0), (0, -5), (-1, 10), (11, 10)])
def test_pruning_rate_rejects_impossible_counts(pruned, total):
    with pytest.raises(TrtoptError):
        pruning_rate_percent(pruned, total)


def test_quantization_error_seed_example():
    error = quantization_error(np.array([0.823]), np.array([0.820]))
    assert error.dtype == np.float64
    assert error.shape == (1,)
    assert error[0] == pytest.approx(0.003)


def test_quantization_error_is_elementwise_absolute():
    original = np.array([[1.0, -2.0], [0.5, 0.0]], dtype=np.float32)
    quantized = np.array([[1.5, -1.0], [0.5, -0.25]], dtype=np.float16)
    np.testing.assert_allclose(quantization_error(original, quantized), [[0.5, 1.0], [0.0, 0.25]])


def test_quantization_error_shape_mismatch_names_both_shapes():
    with pytest.raises(TrtoptError, match=r"\(2, 3\).*\(3, 2\)"):
        quantization_error(np.zeros((2, 3)), np.zeros((3, 2)))


def test_error_summary_values():
    summary = error_summary(np.arange(1, 101, dtype=np.float64))
    assert set(summary) == {"mean", "max", "p50", "p90", "p99"}
    assert summary["mean"] == pytest.approx(50.5)
    assert summary["max"] == 100.0
    assert summary["p50"] == pytest.approx(50.5)
    assert summary["p90"] == pytest.approx(90.1)
    assert summary["p99"] == pytest.approx(99.01)
    assert all(isinstance(value, float) for value in summary.values())


def test_error_summary_rejects_empty():
    with pytest.raises(TrtoptError, match="empty"):
        error_summary(np.array([]))


# Cosine similarity: per sample over its flattened output, then the mean over samples.

def test_cosine_per_sample_hand_computed():
    reference = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
    candidate = np.array([[2.0, 0.0], [1.0, 1.0], [-3.0, -4.0]])  # same direction, 45 degrees, opposite
    np.testing.assert_allclose(cosine_per_sample(reference, candidate), [1.0, 1 / np.sqrt(2), -1.0])
    assert cosine_similarity(reference, candidate) == pytest.approx((1.0 + 1 / np.sqrt(2) - 1.0) / 3)


def test_cosine_is_the_mean_of_samples_not_of_everything_flattened():
    # sample 0 is loud and exact, sample 1 is quiet and orthogonal: flattened, the loud one hides it
    reference = np.array([[100.0, 0.0], [0.0, 1.0]])
    candidate = np.array([[100.0, 0.0], [1.0, 0.0]])
    flattened = reference.ravel() @ candidate.ravel() / np.linalg.norm(reference) / np.linalg.norm(candidate)
    assert flattened == pytest.approx(0.99990, abs=1e-5)
    assert cosine_similarity(reference, candidate) == pytest.approx(0.5)


def test_cosine_flattens_each_sample_over_every_non_batch_axis():
    # (N, T, D): one cosine per sample over T*D elements, not one per token along the last axis
    reference = np.array([[[1.0, 0.0], [0.0, 2.0]]])
    candidate = np.array([[[1.0, 0.0], [2.0, 0.0]]])
    # per-token mean would be (1 + 0) / 2 = 0.5; the sample's vectors [1, 0, 0, 2] and [1, 0, 2, 0]: 1/5
    assert cosine_similarity(reference, candidate) == pytest.approx(1 / 5)


def test_cosine_of_one_sample_equals_the_flattened_cosine():
    rng = np.random.default_rng(0)
    reference, candidate = rng.standard_normal((1, 3, 4)), rng.standard_normal((1, 3, 4))
    flattened = reference.ravel() @ candidate.ravel() / np.linalg.norm(reference) / np.linalg.norm(candidate)
    assert cosine_similarity(reference, candidate) == pytest.approx(flattened)


def test_cosine_of_a_vector_is_one_sample():
    assert cosine_similarity(np.array([1.0, 0.0, 0.0]), np.array([1.0, 0.5, 0.5])) == pytest.approx(1 / np.sqrt(1.5))
    assert cosine_similarity(np.float32(3.0), np.float32(-2.0)) == -1.0


def test_cosine_zero_vectors():
    reference = np.array([[0.0, 0.0], [1.0, 2.0], [0.0, 0.0]])
    candidate = np.array([[0.0, 0.0], [1.0, 2.0], [1e-7, 0.0]])
    per_sample = cosine_per_sample(reference, candidate)
    assert per_sample[0] == 1.0 and per_sample[1] == pytest.approx(1.0) and np.isnan(per_sample[2])
    assert cosine_similarity(reference, candidate) == pytest.approx(1.0)  # the undefined sample is left out
    assert cosine_similarity(np.zeros((2, 3)), np.ones((2, 3))) is None  # no sample has an angle
    assert cosine_similarity(np.zeros((0, 3)), np.zeros((0, 3))) is None  # no samples
    assert cosine_similarity(np.zeros((2, 0)), np.zeros((2, 0))) is None  # empty samples have no angle


def test_cosine_leaves_non_finite_elements_out_on_both_sides():
    reference = np.array([[1.0, 2.0, np.nan], [1.0, 0.0, 5.0]])
    candidate = np.array([[1.0, 2.0, 7.0], [1.0, np.inf, 5.0]])
    np.testing.assert_allclose(cosine_per_sample(reference, candidate), [1.0, 1.0])
    assert cosine_similarity(np.array([[np.nan, 1.0]]), np.array([[1.0, np.nan]])) is None  # nothing left
    assert cosine_similarity(np.array([[1.0, 2.0]]), np.full((1, 2), np.nan)) is None  # not 1.0: NaN is no match


def test_cosine_does_not_overflow_on_huge_values():
    reference = np.array([[1e300, 1e300]])
    assert cosine_similarity(reference, reference * 0.5) == pytest.approx(1.0)
    assert cosine_similarity(reference, np.array([[1e300, -1e300]])) == pytest.approx(0.0, abs=1e-12)


def test_cosine_stays_within_minus_one_and_one():
    rng = np.random.default_rng(1)
    values = rng.standard_normal((64, 17)).astype(np.float32)
    assert np.all(cosine_per_sample(values, values) <= 1.0)
    assert np.all(cosine_per_sample(values, -values) >= -1.0)


def test_cosine_shape_mismatch_names_both_shapes():
    with pytest.raises(TrtoptError, match=r"\(2, 3\).*\(3, 2\)"):
        cosine_similarity(np.zeros((2, 3)), np.zeros((3, 2)))


# Top-1 agreement and top-k accuracy.

def test_top1_agreement_hand_computed():
    reference = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.6, 0.4, 0.0]])
    candidate = np.array([[0.1, 0.9, 0.0], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [0.4, 0.6, 0.0]])
    assert top1_agreement(reference, candidate) == 0.5


def test_top1_agreement_counts_every_position_and_breaks_ties_low():
    reference = np.array([[[0.0, 1.0], [1.0, 0.0]], [[0.5, 0.5], [0.0, 1.0]]])  # (N=2, T=2, C=2)
    candidate = np.array([[[0.0, 1.0], [0.0, 1.0]], [[0.9, 0.1], [0.0, 1.0]]])  # tie [0.5, 0.5] is class 0
    assert top1_agreement(reference, candidate) == 0.75


@pytest.mark.parametrize("reference, candidate, message", [
    (np.zeros((2, 3)), np.zeros((2, 4)), r"\(2, 3\).*\(2, 4\)"),
    (np.zeros(3), np.zeros(3), "shape"),
    (np.zeros((0, 3)), np.zeros((0, 3)), "N >= 1"),
    (np.zeros((2, 0)), np.zeros((2, 0)), "C >= 1"),
])
def test_top1_agreement_rejects_bad_input(reference, candidate, message):
    with pytest.raises(TrtoptError, match=message):
        top1_agreement(reference, candidate)


def test_topk_accuracy_examples():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = np.array([1, 1, 2, 2])
    assert topk_accuracy(scores, labels) == 0.5
    assert topk_accuracy(scores, labels, k=2) == 0.75
    assert topk_accuracy(scores, labels, k=3) == 1.0


def test_topk_accuracy_per_position_and_ties_like_argmax():
    scores = np.array([[[0.5, 0.5], [0.2, 0.8]]])  # (N=1, T=2, C=2); the tie counts as class 0
    assert topk_accuracy(scores, np.array([[0, 1]])) == 1.0
    assert topk_accuracy(scores, np.array([[1, 1]])) == 0.5
    assert topk_accuracy(scores, np.array([[1, 1]])) == top1_agreement(scores, np.array([[[0.0, 1.0], [0.0, 1.0]]]))


@pytest.mark.parametrize("scores, labels, k, message", [
    (np.zeros(3), np.zeros(3, np.int64), 1, "shape"),
    (np.zeros((0, 3)), np.zeros(0, np.int64), 1, "N >= 1"),
    (np.zeros((2, 3)), np.zeros(3, np.int64), 1, "labels of shape"),
    (np.zeros((2, 3)), np.zeros(2, np.float32), 1, "integer"),
    (np.zeros((2, 3)), np.array([0, 3]), 1, "lie in"),
    (np.zeros((2, 3)), np.array([0, 1]), 4, "k must"),
    (np.zeros((2, 3)), np.array([0, 1]), 0, "k must"),
])
def test_topk_accuracy_rejects_bad_input(scores, labels, k, message):
    with pytest.raises(TrtoptError, match=message):
        topk_accuracy(scores, labels, k)


# One number everywhere: compare, sensitivity and distillation call the formulas above.

def test_compare_sensitivity_and_distill_report_the_same_numbers(monkeypatch):
    import torch

    from trtopt.compress import distill
    from trtopt.measure.compare import Tolerances, compare_output
    from trtopt.quant import sensitivity

    rng = np.random.default_rng(2)
    reference = rng.standard_normal((6, 5)).astype(np.float32)
    reference[0] *= 100.0  # a loud sample: a flattened cosine would differ from the per-sample mean
    candidate = (reference + 2 * rng.standard_normal((6, 5)) * np.abs(reference).mean(1, keepdims=True)).astype(np.float32)
    expected_cosine = float(np.mean([r @ c / np.linalg.norm(r) / np.linalg.norm(c)
                                     for r, c in zip(reference.astype(np.float64), candidate.astype(np.float64))]))
    expected_agreement = float(np.mean(reference.argmax(1) == candidate.argmax(1)))
    assert 0.0 < expected_agreement < 1.0

    compared = compare_output("y", reference, candidate, Tolerances())
    monkeypatch.setattr(sensitivity, "model_outputs", lambda path, feed, threads: candidate)
    student, teacher = torch.from_numpy(candidate), torch.from_numpy(reference)

    cosines = [compared["cosine"], sensitivity.cosine_scorer({}, reference)("model.onnx"),
               distill.cosine_metric(student, teacher, None)]
    assert cosines == [pytest.approx(expected_cosine, rel=1e-12)] * 3
    assert len(set(cosines)) == 1
    agreements = [compared["top1_agreement"], sensitivity.agreement_scorer({}, reference)("model.onnx"),
                  distill.agreement_metric(student, teacher, None)]
    assert agreements == [expected_agreement] * 3
    labels = rng.integers(0, 5, 6)
    assert sensitivity.accuracy_scorer({}, labels)("model.onnx") == distill.accuracy_metric(
        student, teacher, torch.from_numpy(labels)) == float(np.mean(candidate.argmax(1) == labels))


def test_rankers_score_an_output_without_any_angle_as_zero(monkeypatch):
    import torch

    from trtopt.compress import distill
    from trtopt.quant import sensitivity

    reference = np.ones((3, 4), np.float32)
    collapsed = np.zeros((3, 4), np.float32)
    monkeypatch.setattr(sensitivity, "model_outputs", lambda path, feed, threads: collapsed)
    assert sensitivity.cosine_scorer({}, reference)("model.onnx") == 0.0
    assert distill.cosine_metric(torch.from_numpy(collapsed), torch.from_numpy(reference), None) == 0.0


# --- task metrics by output kind ---------------------------------------------------------------------------

def test_output_kind_by_name_then_shape():
    rng = np.random.default_rng(0)
    unit = rng.normal(size=(6, 8))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    assert metrics.output_kind("output", rng.normal(size=(6, 10))) == "classification"
    assert metrics.output_kind("output", unit) == "embedding"  # unit rows: a normalized embedding
    assert metrics.output_kind("sentence_embedding", rng.normal(size=(6, 384))) == "embedding"
    assert metrics.output_kind("boxes", rng.normal(size=(6, 4))) == "regression"
    assert metrics.output_kind("landmarks", rng.normal(size=(6, 10))) == "regression"
    assert metrics.output_kind("out", rng.normal(size=(2, 21, 8, 8))) == "dense"
    assert metrics.output_kind("out", rng.normal(size=(6, 1))) == "regression"


def test_neighbour_agreement_and_mean_iou_by_hand():
    ref = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert metrics.neighbour_agreement(ref, ref) == 1.0
    swapped = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])  # samples 1 and 2 trade places
    assert metrics.neighbour_agreement(ref, swapped) == pytest.approx(0.0)
    assert metrics.neighbour_agreement(ref[:2], ref[:2]) is None
    assert metrics.mean_iou(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_task_metrics_fit_the_output_kind():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(20, 10))
    noisy = logits + rng.normal(scale=0.01, size=logits.shape)
    cls = metrics.task_metrics("logits", logits, noisy)
    assert cls["output_kind"] == "classification" and cls["top1_agreement"] > 0.9 and cls["top5_agreement"] == 1.0
    boxes = metrics.task_metrics("boxes", rng.normal(size=(20, 4)), rng.normal(size=(20, 4)))
    assert boxes == {"output_kind": "regression"}  # no argmax agreement on box coordinates
    emb = metrics.task_metrics("embedding", logits, noisy)
    assert emb["output_kind"] == "embedding" and emb["neighbour_agreement"] == 1.0 and "top1_agreement" not in emb
    seg = rng.normal(size=(2, 3, 4, 4))
    dense = metrics.task_metrics("out", seg, seg)
    assert dense == {"output_kind": "dense", "pixel_agreement": 1.0, "mean_iou": 1.0}
    flipped = metrics.task_metrics("out", seg, -seg)
    assert flipped["pixel_agreement"] < 0.5 and flipped["mean_iou"] < 0.5
