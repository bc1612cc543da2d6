"""Range methods that cannot degenerate: every method on every kind of distribution, and the fallbacks.

The kind of failure (issue 13): a tensor whose values never come near zero made the entropy method
return an amax at the data's minimum, so every value saturated to one INT8 code.
"""

from __future__ import annotations

import numpy as np
import pytest

from trtopt.quant.histogram import (
    FALLBACKS,
    MAX_SATURATED_FRACTION,
    METHODS,
    StreamingHistogram,
    amax_mse,
    choose_amax,
    implausibility,
    method_amax,
    mse_errors,
    saturated_fraction,
)

N = 200_000


def _distributions() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "gaussian": rng.standard_normal(N),
        "relu_gaussian": np.maximum(rng.standard_normal(N), 0.0),
        "away_from_zero_uniform_1_2": rng.uniform(1.0, 2.0, N),
        "away_from_zero_normal_5": rng.normal(5.0, 0.1, N),
        "pooled_features": rng.uniform(0.0388, 0.06, N),
        "one_sided_exponential": rng.exponential(size=N),
        "bimodal_plus_minus_3": np.concatenate([rng.normal(-3, 0.1, N // 2), rng.normal(3, 0.1, N // 2)]),
        "heavy_tailed_student_t2": rng.standard_t(2, N),
        "heavy_tailed_cauchy": rng.standard_cauchy(N),
        "lognormal": rng.lognormal(0.0, 1.0, N),
        "constant": np.full(N, 0.7),
        "all_negative": -rng.uniform(1.0, 2.0, N),
        "gaussian_with_outliers": np.concatenate([rng.standard_normal(N), np.full(20, 50.0)]),
    }


DISTRIBUTIONS = _distributions()


def _hist(values: np.ndarray) -> StreamingHistogram:
    h = StreamingHistogram(2048)
    h.update(values.astype(np.float32))
    return h


def _empirical_saturation(values: np.ndarray, amax: float) -> float:
    return float(np.mean(np.abs(values) > amax * (1 + 1 / 127)))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", list(DISTRIBUTIONS))
def test_no_method_saturates_more_than_the_limit_on_any_distribution(kind, method):
    values = DISTRIBUTIONS[kind]
    h = _hist(values)
    choice = choose_amax(h, method)
    allowed = MAX_SATURATED_FRACTION + (0.0001 if choice.method == "percentile" else 0.0)
    assert 0.0 < choice.amax <= h.absmax
    assert _empirical_saturation(values.astype(np.float32), choice.amax) <= allowed
    # the answer used is the method's own, or the first plausible one in its fallback chain
    assert choice.method in (method, *FALLBACKS[method])
    assert [r["method"] for r in choice.rejected] == [method, *FALLBACKS[method]][:len(choice.rejected)]


def test_entropy_collapses_on_data_away_from_zero_and_falls_back():
    """The bug report's input: 256 rows × 8 features uniform in [1, 2]."""
    values = np.random.default_rng(0).uniform(1.0, 2.0, (256, 8)).astype(np.float32)
    h = _hist(values)
    raw = method_amax(h, "entropy")
    assert raw == pytest.approx(1.001, abs=0.001)  # the data's minimum: TensorRT/ModelOpt's KL has its zero there
    assert saturated_fraction(h.counts, h.bin_width, raw) > 0.95
    reason = implausibility(h, "entropy", raw)
    assert "saturates" in reason and "never come nearer to 0 than 1" in reason
    choice = choose_amax(h, "entropy")
    assert choice.method == "mse" and choice.amax == pytest.approx(2.0, rel=0.01)
    assert choice.rejected[0]["method"] == "entropy" and choice.rejected[0]["amax"] == raw


@pytest.mark.parametrize("kind", ["pooled_features", "bimodal_plus_minus_3", "away_from_zero_normal_5", "all_negative"])
def test_entropy_answer_on_distributions_away_from_zero_is_rejected(kind):
    h = _hist(DISTRIBUTIONS[kind])
    assert implausibility(h, "entropy", method_amax(h, "entropy")) is not None
    assert choose_amax(h, "entropy").method != "entropy"


@pytest.mark.parametrize("kind", ["gaussian", "relu_gaussian", "heavy_tailed_student_t2", "gaussian_with_outliers"])
def test_plausible_answers_are_kept_as_they_are(kind):
    """Clipping outliers is what entropy is for: no fallback there, and the same amax as before."""
    h = _hist(DISTRIBUTIONS[kind])
    for method in METHODS:
        choice = choose_amax(h, method)
        assert choice.method == method and not choice.rejected
        assert choice.amax == method_amax(h, method)
    if kind == "gaussian_with_outliers":
        assert choose_amax(h, "entropy").amax < 10  # the 20 outliers at 50 are clipped


def test_percentile_may_clip_what_it_was_asked_to_clip():
    h = _hist(DISTRIBUTIONS["gaussian"])
    amax = method_amax(h, "percentile", percentile=98.0)
    assert implausibility(h, "percentile", amax, percentile=98.0) is None  # 2 % by request
    assert implausibility(h, "entropy", amax) is not None  # the same cut from another method is implausible


def test_zero_amax_for_a_non_zero_tensor_is_implausible():
    h = _hist(DISTRIBUTIONS["gaussian"])
    assert "amax is 0" in implausibility(h, "mse", 0.0)
    assert implausibility(h, "mse", float("nan")) is not None


def test_all_zero_tensor_gets_a_zero_range_without_a_fallback():
    h = _hist(np.zeros(1000))
    for method in METHODS:
        choice = choose_amax(h, method)
        assert choice.amax == 0.0 and not choice.rejected


def test_saturated_fraction_counts_values_beyond_one_step_above_amax():
    values = np.linspace(0.0, 1.0, 100_001)
    h = _hist(values)
    assert saturated_fraction(h.counts, h.bin_width, 0.5) == pytest.approx(_empirical_saturation(values, 0.5), abs=1e-3)
    assert saturated_fraction(h.counts, h.bin_width, 1.0) == 0.0
    assert saturated_fraction(h.counts, h.bin_width, 1.0 / (1 + 1 / 127)) == 0.0  # within one step: not saturated


@pytest.mark.parametrize("seed", range(6))
def test_coarse_to_fine_mse_search_is_within_a_fraction_of_a_percent_of_exhaustive(seed):
    rng = np.random.default_rng(seed)
    values = [rng.standard_normal(N), rng.laplace(size=N), rng.standard_t(3, N), np.maximum(rng.standard_normal(N), 0),
              rng.uniform(1, 2, N), rng.lognormal(0, 1, N)][seed] * rng.uniform(0.1, 10)
    h = _hist(values)
    cand, err = mse_errors(h.counts, h.bin_width)
    got = amax_mse(h.counts, h.bin_width)
    got_err = err[list(cand).index(round(got / h.bin_width))]
    assert got_err <= err.min() * 1.005
