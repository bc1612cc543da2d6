"""Calibration covers what Q/DQ quantizes, and nothing it can't range: issue 14's calibration reproductions.

- a -inf attention-mask path (padded batches) is not calibrated, because no layout quantizes it;
- Constant outputs and initializers passed through Identity that a layout quantizes are calibrated, so
  ``quantize`` on either target finds every range it asks for;
- a tensor that is 0 on every sample gets a tiny positive range (never amax -0.0) that the TensorRT cache
  takes; absurd ranges are flagged by name;
- ``trtopt calibrate`` leaves no output behind when it fails.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.helpers.cli import assert_one_line_error, run_here
from trtopt.artifacts import Ranges, TensorRange
from trtopt.errors import TrtoptError
from trtopt.quant.calibrate import CalibrationConfig, calibrate, calibration_tensors, outlier_ranges
from trtopt.quant.histogram import ZERO_TENSOR_AMAX, StreamingHistogram
from trtopt.quant.quantize import QuantizeConfig, quantize, quantized_tensors
from trtopt.trt.calibration_cache import ranges_to_cache, write_cache

MINMAX = CalibrationConfig(method="minmax")


def _save(path, nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _attention(tmp_path):
    """One attention head with an additive mask made as HF BERT's TorchScript export does: Where(mask == 0, -inf,
    0) added to the scores before Softmax. Inputs x (n, 4, 8) and mask (n, 4) float."""
    rng = np.random.default_rng(0)
    w = [helper.make_tensor(f"w{k}", TensorProto.FLOAT, [8, 8], rng.normal(0, 0.3, 64).astype(np.float32).tolist())
         for k in "qkv"]
    consts = [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
              helper.make_tensor("ninf", TensorProto.FLOAT, [], [-math.inf]),
              helper.make_tensor("axes", TensorProto.INT64, [1], [1])]
    nodes = [helper.make_node("MatMul", ["x", f"w{k}"], [k], name=f"proj_{k}") for k in "qkv"]
    nodes += [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
              helper.make_node("MatMul", ["q", "kt"], ["scores"], name="scores_mm"),
              helper.make_node("Equal", ["mask", "zero"], ["pad"]),
              helper.make_node("Where", ["pad", "ninf", "zero"], ["additive"], name="mask_where"),
              helper.make_node("Unsqueeze", ["additive", "axes"], ["bias"]),
              helper.make_node("Add", ["scores", "bias"], ["masked"], name="mask_add"),
              helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
              helper.make_node("MatMul", ["probs", "v"], ["out"], name="context_mm")]
    return _save(tmp_path / "attention.onnx", nodes,
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8]),
                  helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["n", 4])],
                 [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 4, 8])], [*w, *consts])


def _padded(n=6):
    rng = np.random.default_rng(1)
    mask = np.ones((n, 4), np.float32)
    for i in range(n):
        mask[i, 2 + i % 2:] = 0.0  # padded: the last one or two positions of each sample
    return {"x": rng.normal(size=(n, 4, 8)).astype(np.float32), "mask": mask}


def test_minus_inf_mask_path_is_not_calibrated_and_quantize_works_on_both_targets(tmp_path):
    path = _attention(tmp_path)
    ranges = calibrate(path, _padded(), MINMAX)
    assert "additive" not in ranges.tensors and "masked" not in ranges.tensors and "bias" not in ranges.tensors
    for name in ("x", "q", "kt", "probs", "v"):  # what enters the MatMuls
        assert name in ranges.tensors
    assert all(math.isfinite(r.amax) and r.amax > 0 for r in ranges.tensors.values())
    ranges_to_cache(ranges)  # the TensorRT cache takes every range
    for target in ("onnxruntime", "tensorrt"):
        art = quantize(path, ranges, tmp_path / f"{target}.onnx", QuantizeConfig(target=target))
        assert art.path.exists()


def test_a_layout_that_quantizes_the_minus_inf_tensor_names_the_node_and_the_exclusion_fixes_it(tmp_path):
    path = _attention(tmp_path)
    layout = QuantizeConfig(target="onnxruntime", op_types=("MatMul", "Add"))
    with pytest.raises(TrtoptError, match=r"'(bias|masked)' becomes NaN or inf.*node mask_add.*--exclude mask_add"):
        calibrate(path, _padded(), MINMAX, layouts=(layout,))
    fixed = QuantizeConfig(target="onnxruntime", op_types=("MatMul", "Add"), exclude_nodes=("mask_add",))
    ranges = calibrate(path, _padded(), MINMAX, layouts=(fixed,))
    assert quantize(path, ranges, tmp_path / "q.onnx", fixed).path.exists()


def test_quantized_tensors_per_target(tmp_path):
    model = onnx.load(str(_attention(tmp_path)))
    trt = quantized_tensors(model, QuantizeConfig(target="tensorrt"))
    assert set(trt) == {"x", "q", "kt", "probs", "v"}  # inputs of the MatMuls only, weights left out
    assert trt["probs"] == "context_mm"
    ort = quantized_tensors(model, QuantizeConfig(target="onnxruntime"))  # a transformer: MatMul inputs only
    assert set(ort) == set(trt)
    everything = quantized_tensors(model, QuantizeConfig(target="onnxruntime", op_types=("MatMul", "Add")))
    assert {"scores", "bias", "masked", "out"} <= set(everything)


def _constant_fed(tmp_path):
    """Conv whose bias comes through Identity (as TorchScript exports deduplicated initializers), then a Mul by a
    Constant node's output and a Relu: ONNX Runtime's U8S8 layout quantizes Mul's Constant input too."""
    rng = np.random.default_rng(0)
    init = [helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], rng.normal(0, 0.3, 108).astype(np.float32).tolist()),
            helper.make_tensor("b", TensorProto.FLOAT, [4], [0.1, -0.2, 0.3, 0.0])]
    nodes = [helper.make_node("Identity", ["b"], ["b_dedup"]),
             helper.make_node("Conv", ["input", "w", "b_dedup"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Constant", [], ["Constant_7_output_0"],
                              value=helper.make_tensor("c", TensorProto.FLOAT, [], [0.5])),
             helper.make_node("Mul", ["conv", "Constant_7_output_0"], ["scaled"], name="mul"),
             helper.make_node("Relu", ["scaled"], ["output"])]
    return _save(tmp_path / "constfed.onnx", nodes,
                 [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 8, 8])],
                 [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 4, 8, 8])], init)


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_ranges_from_calibrate_are_sufficient_for_quantize_with_constant_fed_inputs(tmp_path, capsys, target):
    path = _constant_fed(tmp_path)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(4, 3, 8, 8)).astype(np.float32))
    ranges_file = tmp_path / "r.json"
    assert run_here(["calibrate", path, "--data", tmp_path / "x.npy", "-o", ranges_file, "--method", "minmax"],
                    capsys).returncode == 0
    assert "Constant_7_output_0" in Ranges.load(ranges_file).tensors
    result = run_here(["quantize", path, "--ranges", ranges_file, "-o", tmp_path / "q.onnx", "--target", target], capsys)
    assert result.returncode == 0, result.stderr
    assert onnx.load(str(tmp_path / "q.onnx")).graph.node


def _zero_branch(tmp_path):
    """input → Conv → Mul by 0 (a BatchNorm whose gamma is 0, folded) → Add (the residual) → Conv → output."""
    rng = np.random.default_rng(0)
    init = [helper.make_tensor(f"w{k}", TensorProto.FLOAT, [3, 3, 1, 1], rng.normal(0, 0.5, 9).astype(np.float32).tolist())
            for k in (1, 2)] + [helper.make_tensor("gamma", TensorProto.FLOAT, [1, 3, 1, 1], [0.0, 0.0, 0.0])]
    nodes = [helper.make_node("Conv", ["input", "w1"], ["branch"], name="conv1"),
             helper.make_node("Mul", ["branch", "gamma"], ["zeroed"], name="bn_zero_gamma"),
             helper.make_node("Conv", ["zeroed", "w2"], ["branch2"], name="conv_after_zero"),
             helper.make_node("Add", ["branch2", "input"], ["output"], name="residual")]
    return _save(tmp_path / "zero.onnx", nodes,
                 [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 4, 4])],
                 [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 3, 4, 4])], init)


def test_all_zero_tensors_get_a_tiny_positive_range_and_a_note(tmp_path, caplog):
    path = _zero_branch(tmp_path)
    feed = {"input": np.random.default_rng(0).normal(size=(5, 3, 4, 4)).astype(np.float32)}
    with caplog.at_level("WARNING"):
        ranges = calibrate(path, feed, MINMAX)
    zero = ranges.tensors["zeroed"]
    assert (zero.amax, zero.min, zero.max) == (ZERO_TENSOR_AMAX, 0.0, 0.0)
    assert math.copysign(1.0, zero.min) == 1.0  # never -0.0
    assert ZERO_TENSOR_AMAX / 127 == 2.0 ** -14 and np.float16(ZERO_TENSOR_AMAX / 127) > 0
    assert "zeroed" in ranges.choice["zero_tensors"] and "'zeroed'" in caplog.text
    saved = ranges.save(tmp_path / "r.json")
    assert all(math.copysign(1.0, t["amax"]) == 1.0 for t in json.loads(saved.read_text())["tensors"].values())
    cache = ranges_to_cache(ranges)  # refused before: "recalibrate with more data"
    assert cache.scales["zeroed"] == pytest.approx(2.0 ** -14)
    write_cache(cache, tmp_path / "c.cache")
    for target in ("onnxruntime", "tensorrt"):
        assert quantize(path, ranges, tmp_path / f"{target}.onnx", QuantizeConfig(target=target)).path.exists()


def test_histogram_absmax_of_zeros_is_positive_zero():
    h = StreamingHistogram(256)
    h.update(np.zeros(8, np.float32))
    assert h.absmax == 0.0 and math.copysign(1.0, h.absmax) == 1.0


def test_outlier_ranges_are_flagged_by_name():
    tensors = {"a": TensorRange(1.0, -1.0, 1.0), "b": TensorRange(2.0, 0.0, 2.0), "c": TensorRange(3.0, -3.0, 0.0),
               "mask": TensorRange(3.4e38, -3.4e38, 0.0), "edge": TensorRange(2.0e4, 0.0, 2.0e4),
               "zero": TensorRange(ZERO_TENSOR_AMAX, 0.0, 0.0)}
    found = outlier_ranges(tensors)  # the median of 1, 2, 3, 2e4, 3.4e38 (the zero tensor left out) is 3
    assert [f["tensor"] for f in found] == ["mask"]
    assert found[0]["times_median"] == pytest.approx(3.4e38 / 3.0)
    assert [f["tensor"] for f in outlier_ranges(tensors, ratio=6000)] == ["mask", "edge"]
    assert outlier_ranges({}) == []


def test_calibration_warns_about_an_absurd_range(tmp_path, caplog):
    """A quantized tensor scaled by finfo.min (older HF masks: (1 - mask) * finfo.min) has amax 3.4e38: named."""
    big = helper.make_tensor("big", TensorProto.FLOAT, [], [float(np.finfo(np.float32).min)])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel().tolist())
    nodes = [helper.make_node("Mul", ["m", "big"], ["huge"]),
             helper.make_node("MatMul", ["huge", "w"], ["y"], name="mm"),
             helper.make_node("MatMul", ["x", "w"], ["z"], name="mm2")]
    path = _save(tmp_path / "huge.onnx", nodes,
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
                  helper.make_tensor_value_info("m", TensorProto.FLOAT, ["n", 4])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4]),
                  helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 4])], [big, w])
    feed = {"x": np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32), "m": np.ones((3, 4), np.float32)}
    with caplog.at_level("WARNING"):
        ranges = calibrate(path, feed, MINMAX)
    assert {o["tensor"] for o in ranges.choice["outliers"]} == {"huge", "y"}
    assert "'huge': amax 3.403e+38" in caplog.text


def test_calibration_tensors_follow_the_layouts(tmp_path):
    path = _constant_fed(tmp_path)
    both = calibration_tensors(path)
    assert both == ["input", "b_dedup", "conv", "Constant_7_output_0", "scaled", "output"]
    assert calibration_tensors(path, (QuantizeConfig(target="tensorrt"),)) == ["input", "b_dedup"]


# --- nothing left behind -------------------------------------------------------------------------------------


def test_failed_calibrate_leaves_no_output(tmp_path, capsys):
    path = _zero_branch(tmp_path)
    out, cache = tmp_path / "r.json", tmp_path / "c.cache"
    result = run_here(["calibrate", path, "-o", out, "--cache", cache, "--trt-version", "11.0", "--samples", "2"],
                      capsys)
    assert_one_line_error(result, "TensorRT 11.0.0 removed INT8 calibrators")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zero.onnx"]


def test_calibrate_with_zero_tensors_writes_ranges_manifest_and_cache(tmp_path, capsys):
    """Before: the cache writer refused the zero tensor and calibrate exited 2 after writing ranges.json."""
    path = _zero_branch(tmp_path)
    out, cache = tmp_path / "r.json", tmp_path / "c.cache"
    result = run_here(["calibrate", path, "-o", out, "--cache", cache, "--samples", "3", "--method", "minmax"], capsys)
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["tensors"]["zeroed"]["amax"] == ZERO_TENSOR_AMAX
    assert cache.read_text().count(":") >= 4 and (tmp_path / "r.data.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


# --- real models (slow: seconds each) -------------------------------------------------------------------------


@pytest.mark.slow
def test_hf_bert_exported_by_torchscript_calibrates_on_padded_batches(tmp_path):
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32)
    bert = transformers.BertModel(config).eval()

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.randint(0, 100, (2, 16))
    path = tmp_path / "bert.onnx"
    torch.onnx.export(Encoder().eval(), (ids, torch.ones(2, 16, dtype=torch.long)), str(path),
                      input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                      dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}}, dynamo=False,
                      opset_version=17)
    rng = np.random.default_rng(0)
    mask = np.ones((8, 16), np.int64)
    for i in range(8):
        mask[i, 8 + i:] = 0  # padded batches: the mask path holds -inf or finfo.min
    feed = {"input_ids": rng.integers(0, 100, (8, 16)), "attention_mask": mask}
    ranges = calibrate(path, feed, MINMAX)  # refused the whole model before
    assert all(math.isfinite(r.amax) and 0 < r.amax < 1e4 for r in ranges.tensors.values())
    assert not ranges.choice["outliers"]
    ranges_to_cache(ranges)
    for target in ("onnxruntime", "tensorrt"):
        assert quantize(path, ranges, tmp_path / f"{target}.onnx", QuantizeConfig(target=target)).path.exists()


@pytest.mark.slow
def test_timm_resnet_random_init_zero_gammas_calibrate_and_cache(tmp_path):
    timm = pytest.importorskip("timm")
    import torch

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=10).eval()  # zero_init_last: gamma 0
    path = tmp_path / "resnet10t.onnx"
    torch.onnx.export(model, torch.randn(1, 3, 64, 64), str(path), input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}}, dynamo=False)
    feed = {"input": np.random.default_rng(0).normal(size=(4, 3, 64, 64)).astype(np.float32)}
    ranges = calibrate(path, feed, MINMAX)
    assert ranges.choice["zero_tensors"]  # the zeroed residual branches
    assert all(r.amax > 0 for r in ranges.tensors.values())
    write_cache(ranges_to_cache(ranges), tmp_path / "c.cache")
    for target in ("onnxruntime", "tensorrt"):
        assert quantize(path, ranges, tmp_path / f"{target}.onnx", QuantizeConfig(target=target)).path.exists()
