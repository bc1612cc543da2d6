"""Tests for trtopt.measure.compare: output comparison, matching, messages and task metrics."""

from __future__ import annotations

import numpy as np
import pytest

from trtopt.errors import TrtoptError
from trtopt.measure.compare import Tolerances, compare_output, compare_outputs, concat_batches, failed_outputs_message


@pytest.fixture
def logits():
    return np.random.default_rng(0).standard_normal((8, 10)).astype(np.float32)


def test_tolerances_defaults_and_to_dict():
    assert Tolerances().to_dict() == {"atol": 1e-4, "rtol": 1e-3, "min_cosine": 0.999}


@pytest.mark.parametrize("field, value", [
    ("atol", -1e-3), ("rtol", float("nan")), ("min_cosine", 1.5), ("min_cosine", -2.0), ("atol", "1"),
])
def test_tolerances_validation_names_the_field(field, value):
    with pytest.raises(TrtoptError, match=field):
        Tolerances(**{field: value})


def test_identical_outputs_pass_with_cosine_one(logits):
    result = compare_output("logits", logits, logits.copy(), Tolerances())
    assert result["passed"] is True
    assert result["cosine"] == pytest.approx(1.0)
    assert result["max_abs_error"] == 0.0
    assert result["max_rel_error"] == 0.0
    assert result["mismatched_elements"] == 0
    assert result["nan_count"] == 0
    assert result["top1_agreement"] == 1.0
    assert result["shape"] == [8, 10]
    assert result["output"] == "logits"


def test_small_noise_within_tolerance_passes(logits):
    noise = np.random.default_rng(1).uniform(-5e-5, 5e-5, logits.shape)
    result = compare_output("logits", logits, logits + noise, Tolerances())
    assert result["passed"] is True
    assert 0 < result["max_abs_error"] <= 5e-5
    assert result["abs_error_p50"] <= result["abs_error_p90"] <= result["abs_error_p99"] \
        <= result["max_abs_error"]


def test_one_perturbed_element_fails_and_is_counted(logits):
    candidate = logits.copy()
    candidate[3, 4] += 0.5
    result = compare_output("logits", logits, candidate, Tolerances())
    assert result["passed"] is False
    assert result["mismatched_elements"] == 1
    assert result["max_abs_error"] == pytest.approx(0.5, rel=1e-6)
    assert result["max_rel_error"] == pytest.approx(0.5 / max(abs(float(logits[3, 4])), 1e-4), rel=1e-5)


def test_relative_tolerance_scales_with_reference():
    reference = np.array([1000.0, 1.0])
    candidate = np.array([1000.5, 1.0])  # 0.5 <= 1e-4 + 1e-3 * 1000
    assert compare_output("y", reference, candidate, Tolerances())["mismatched_elements"] == 0


def test_uniform_drift_fails_on_cosine_even_with_loose_element_tolerance():
    reference = np.array([1.0, 0.0, 0.0])
    candidate = np.array([1.0, 0.5, 0.5])
    result = compare_output("y", reference, candidate, Tolerances(atol=1.0, rtol=0.0, min_cosine=0.99))
    assert result["mismatched_elements"] == 0
    assert result["cosine"] == pytest.approx(1 / np.sqrt(1.5))
    assert result["passed"] is False


def test_zero_reference_uses_atol_floor_and_skips_undefined_cosine():
    result = compare_output("relu", np.zeros(3), np.array([1e-5, 0.0, -2e-5]), Tolerances(atol=1e-4))
    assert result["max_rel_error"] == pytest.approx(0.2)
    assert result["cosine"] is None
    assert result["passed"] is True


def test_zero_candidate_for_non_zero_reference_fails_on_elements():
    result = compare_output("y", np.array([1.0, 2.0]), np.zeros(2), Tolerances())
    assert result["cosine"] is None
    assert result["mismatched_elements"] == 2
    assert result["passed"] is False
    message = failed_outputs_message(compare_outputs({"y": np.array([1.0, 2.0])}, {"y": np.zeros(2)},
                                                     Tolerances()))
    assert "cosine n/a" in message


def test_shape_mismatch_names_output_and_shapes():
    with pytest.raises(TrtoptError, match=r"'probs'.*\(2, 5\).*\(2, 4\)"):
        compare_output("probs", np.zeros((2, 4)), np.zeros((2, 5)), Tolerances())


def test_nan_in_candidate_fails(logits):
    candidate = logits.copy()
    candidate[0, 0] = np.nan
    candidate[1, 1] = np.inf
    result = compare_output("logits", logits, candidate, Tolerances())
    assert result["passed"] is False
    assert result["nan_count"] == 2
    assert result["mismatched_elements"] == 2
    assert np.isfinite(result["max_abs_error"])


def test_nan_where_reference_is_nan_matches():
    reference = np.array([1.0, np.nan])
    result = compare_output("y", reference, reference.copy(), Tolerances())
    assert result["passed"] is True
    assert result["nan_count"] == 1
    assert result["reference_nan_count"] == 1


def test_all_zero_outputs_have_cosine_one():
    result = compare_output("y", np.zeros(4), np.zeros(4), Tolerances())
    assert result["cosine"] == 1.0
    assert result["passed"] is True


def test_top1_agreement_on_crafted_logits():
    reference = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.6, 0.4, 0.0]])
    candidate = np.array([[0.1, 0.9, 0.0], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [0.4, 0.6, 0.0]])
    assert compare_output("y", reference, candidate, Tolerances())["top1_agreement"] == 0.5


@pytest.mark.parametrize("shape", [(10,), (4, 1), (2, 3, 4)])
def test_top1_agreement_only_for_two_dimensional_class_scores(shape):
    values = np.ones(shape)
    assert compare_output("y", values, values, Tolerances())["top1_agreement"] is None


def test_compare_outputs_by_name(logits):
    reference = {"logits": logits, "features": np.ones((8, 4))}
    candidate = {"features": np.ones((8, 4)), "logits": logits}
    result = compare_outputs(reference, candidate, Tolerances())
    assert result["passed"] is True
    assert result["matched_by"] == "name"
    assert result["tolerances"] == Tolerances().to_dict()
    assert [entry["output"] for entry in result["outputs"]] == ["logits", "features"]
    assert [entry["candidate_output"] for entry in result["outputs"]] == ["logits", "features"]


def test_compare_outputs_by_position_when_names_differ(logits):
    result = compare_outputs({"logits": logits}, {"output_0": logits}, Tolerances())
    assert result["matched_by"] == "position"
    assert result["outputs"][0]["output"] == "logits"
    assert result["outputs"][0]["candidate_output"] == "output_0"
    assert result["passed"] is True


def test_compare_outputs_count_mismatch_names_missing(logits):
    with pytest.raises(TrtoptError, match="'features'"):
        compare_outputs({"logits": logits, "features": logits}, {"logits": logits}, Tolerances())


def test_compare_outputs_rejects_no_outputs():
    with pytest.raises(TrtoptError, match="no outputs"):
        compare_outputs({}, {}, Tolerances())


def test_failed_outputs_message_names_only_failing_outputs(logits):
    bad = logits.copy()
    bad[0, 0] = np.nan
    result = compare_outputs({"logits": logits, "ok": np.ones(3)}, {"logits": bad, "ok": np.ones(3)},
                             Tolerances())
    assert result["passed"] is False
    message = failed_outputs_message(result)
    assert "\n" not in message
    assert "'logits'" in message and "'ok'" not in message
    for part in ("max_abs_error", "max_rel_error", "cosine", "atol 0.0001", "rtol 0.001", "min 0.999",
                 "1/80 elements mismatched", "1 NaN/inf"):
        assert part in message


def test_failed_outputs_message_when_all_pass(logits):
    result = compare_outputs({"logits": logits}, {"logits": logits}, Tolerances())
    assert failed_outputs_message(result) == "all outputs are within tolerances"


def test_concat_batches():
    batches = [{"logits": np.zeros((2, 3)), "ids": np.array([0, 1])},
               {"ids": np.array([2]), "logits": np.ones((1, 3))}]
    joined = concat_batches(batches)
    assert list(joined) == ["logits", "ids"]
    assert joined["logits"].shape == (3, 3)
    np.testing.assert_array_equal(joined["ids"], [0, 1, 2])
    np.testing.assert_array_equal(joined["logits"][2], [1, 1, 1])


@pytest.mark.parametrize("batches, message", [
    ([], "no batches"),
    ([{"a": np.zeros(2)}, {"b": np.zeros(2)}], "batch 1"),
    ([{"a": np.zeros((2, 3))}, {"a": np.zeros((2, 4))}], "'a'"),
    ([{"a": np.float32(1.0)}], "'a'"),
])
def test_concat_batches_rejects_bad_input(batches, message):
    with pytest.raises(TrtoptError, match=message):
        concat_batches(batches)
