"""Tests for trtopt.metrics: the seed article's worked examples and the error cases."""

from __future__ import annotations

import numpy as np
import pytest

from trtopt.errors import TrtoptError
from trtopt.metrics import (
    compression_ratio,
    error_summary,
    pruning_rate_percent,
    quantization_error,
    speedup_ratio,
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
