"""Method auto: held-out split, the INT8 simulation it scores with, the choice and its evidence."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtopt.artifacts import Ranges
from trtopt.export import export_onnx
from trtopt.models.load import load_model
from trtopt.quant.calibrate import CalibrationConfig, calibrate
from trtopt.quant.quantize import QuantizeConfig, quantize
from trtopt.quant.range_choice import (
    CANDIDATES,
    HELD_OUT_SAMPLES,
    REFINE_RUNS,
    HeldOut,
    _refinement_trials,
    simulation_model,
    sqnr_db,
)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    art = export_onnx(load_model("tests.helpers.tiny_models:tiny_cnn"), tmp_path_factory.mktemp("auto") / "cnn.onnx")
    x = np.random.default_rng(0).uniform(-1, 1, (96, 3, 32, 32)).astype(np.float32)
    return art, {"input": x}


# --- held-out split ------------------------------------------------------------------------------------

def _split_all(batch_sizes, n=80, batched=True):
    held = HeldOut(batched)
    x = np.arange(n)[:, None].astype(np.float32)
    kept, start = [], 0
    for size in batch_sizes:
        fit, m = held.split({"x": x[start:start + size]}, size, start)
        kept += list(fit["x"][:, 0]) if m else []
        start += size
    return held, kept


def test_every_eighth_sample_is_held_out_whatever_the_batching():
    one, kept_one = _split_all([80])
    many, kept_many = _split_all([3, 5, 16, 1, 55])
    expected = [k for k in range(80) if k % 8 == 7]
    for held in (one, many):
        feeds, count, held_out = held.scoring_feeds(batch_size=16)
        assert held_out and count == len(expected)
        assert list(np.concatenate([f["x"] for f in feeds])[:, 0]) == expected
    assert kept_one == kept_many == [k for k in range(80) if k % 8 != 7]


def test_at_most_the_held_out_limit_and_in_sample_scoring_for_tiny_data():
    held, kept = _split_all([400], n=400)
    assert held.held_count == HELD_OUT_SAMPLES and len(kept) == 400 - HELD_OUT_SAMPLES
    tiny, kept = _split_all([5], n=5)
    feeds, count, held_out = tiny.scoring_feeds(batch_size=16)
    assert not held_out and count == 5 and kept == [0, 1, 2, 3, 4]  # nothing held out: scored in sample


def test_a_model_with_a_fixed_batch_axis_is_split_by_calls():
    held, kept = _split_all([4] * 10, n=40, batched=False)
    feeds, count, held_out = held.scoring_feeds(batch_size=16)
    assert held_out and len(feeds) == 1 and list(feeds[0]["x"][:, 0]) == [28, 29, 30, 31]  # call 7
    assert len(kept) == 36


# --- the simulation ------------------------------------------------------------------------------------

def test_simulation_equals_the_tensorrt_layout_model_with_exact_qdq(cnn, tmp_path):
    """Same Q/DQ (symmetric int8, amax/127) on the same tensors, same per-channel weights: same outputs."""
    art, feed = cnn
    ranges = calibrate(art.path, feed, CalibrationConfig(method="minmax"))
    trt = quantize(art.path, ranges, tmp_path / "trt.onnx", QuantizeConfig(target="tensorrt"))
    sim, scales = simulation_model(onnx.load(str(art.path)), list(ranges.tensors))
    assert len(scales) == sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(trt.path)).graph.node
                              if not n.input[0].endswith("weight"))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(str(trt.path), options, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    sim_feed = {**feed, **{s: np.asarray(ranges.tensors[t].amax / 127, np.float32) for t, s in scales.items()}}
    got = ort.InferenceSession(sim.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, sim_feed)[0]
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


def test_sqnr():
    y = np.array([3.0, 4.0])
    assert sqnr_db(y, y) == 200.0
    assert sqnr_db(y, y * 0.9) == pytest.approx(20.0)  # noise 1 % of the power
    assert sqnr_db(np.zeros(2), y) == 0.0


# --- the choice ----------------------------------------------------------------------------------------

def test_auto_picks_the_best_scored_method_and_records_the_evidence(cnn, tmp_path):
    art, feed = cnn
    ranges = calibrate(art.path, feed)
    choice = ranges.choice
    assert ranges.method == "auto" and ranges.settings["method"] == "auto" and choice["scored"]
    scores = {c["method"]: c["sqnr_db"] for c in choice["candidates"]}
    assert list(scores) == list(CANDIDATES)
    assert scores[choice["model_method"]] == max(scores.values())
    assert choice["final"]["sqnr_db"] >= max(scores.values())
    assert choice["held_out"] and choice["scoring_samples"] == 12  # samples 7, 15, ..., 95
    assert choice["runs"] <= len(CANDIDATES) + REFINE_RUNS  # the cost: a handful of runs on 12 samples
    assert Ranges.load(ranges.save(tmp_path / "r.json")).choice == choice
    # the ranges themselves: the chosen method on all the data (held-out samples included)
    chosen = calibrate(art.path, feed, CalibrationConfig(method=choice["model_method"]))
    changed = {c["tensor"] for c in choice["per_tensor"]}
    assert {k: v for k, v in ranges.tensors.items() if k not in changed} == \
        {k: v for k, v in chosen.tensors.items() if k not in changed}
    assert ranges.samples == chosen.samples == 96 and ranges.data_sha256 == chosen.data_sha256


def test_auto_does_not_depend_on_the_batch_size(cnn):
    art, feed = cnn
    five, default = calibrate(art.path, feed, CalibrationConfig(batch_size=5)), calibrate(art.path, feed)
    assert five.tensors == default.tensors and five.choice == default.choice


def test_a_model_auto_cannot_score_still_calibrates_and_says_why(tmp_path, caplog):
    """Opset 9 has no QuantizeLinear: every tensor gets the first candidate, with the reason recorded."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "old",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [w])
    path = tmp_path / "old.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)]), str(path))
    with caplog.at_level("WARNING", logger="trtopt.quant.range_choice"):
        ranges = calibrate(path, {"x": np.random.default_rng(1).standard_normal((32, 4)).astype(np.float32)})
    assert ranges.choice["scored"] is False and "opset 9" in ranges.choice["reason"]
    assert ranges.choice["model_method"] == CANDIDATES[0] and "could not score" in caplog.text


def test_refinement_tries_the_tensors_whose_methods_disagree_most_first():
    amax = {"mse": {"a": 1.0, "b": 1.0, "c": 1.0}, "entropy": {"a": 1.1, "b": 4.0, "c": 1.0},
            "percentile": {"a": 1.0, "b": 2.0, "c": 1.01}, "minmax": {"a": 2.0, "b": 8.0, "c": 1.0}}
    assert _refinement_trials(amax, "mse") == [("b", "minmax"), ("b", "entropy"), ("b", "percentile"),
                                               ("a", "minmax"), ("a", "entropy")]
