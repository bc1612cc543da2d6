"""Accuracy recovery: per-channel statistics, SmoothQuant-style smoothing, bias correction, and their use."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtopt.artifacts import Ranges
from trtopt.errors import TrtoptError
from trtopt.quant.calibrate import CalibrationConfig, calibrate
from trtopt.quant.histogram import ChannelStatistics
from trtopt.quant.quantize import QuantizeConfig, quantize, recovery_steps
from trtopt.quant.recovery import SMOOTH_ALPHA, correct_biases, recoverable_inputs, smooth, weight_roundtrip


def _run(model, feed):
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feed)


def _gemm_graph(rng, outlier=50.0):
    """x (N, 8) → MatMul W (8, 4) → y, and x → ReduceSum → r (a second, non-GEMM reader of x)."""
    w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("ReduceSum", ["x"], ["r"], keepdims=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4]),
                               helper.make_tensor_value_info("r", TensorProto.FLOAT, [])], [w])
    x = rng.standard_normal((64, 8)).astype(np.float32)
    x[:, 0] *= outlier
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), x


def _stats(x, axis):
    c = ChannelStatistics(axis)
    for part in np.array_split(x, 5):
        c.update(part)
    return c.to_dict()


def test_channel_statistics_stream_to_the_one_shot_values():
    x = np.random.default_rng(0).standard_normal((10, 3, 4, 5)).astype(np.float32)
    got = _stats(x, 1)
    np.testing.assert_allclose(got["absmax"], np.abs(x).max(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(got["mean"], x.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-6)
    bad = ChannelStatistics(1)
    bad.update(x)
    bad.update(x[:, :2])
    assert bad.to_dict() is None  # the channel count changed: no statistics rather than wrong ones


def test_smoothing_keeps_fp32_outputs_and_moves_the_outlier_into_the_weights():
    rng = np.random.default_rng(0)
    model, x = _gemm_graph(rng)
    before = _run(model, {"x": x})
    w = numpy_helper.to_array(model.graph.initializer[0])
    stats = {"x": _stats(x, -1)}
    smoothed_model, smoothed = smooth(model, stats)
    after = _run(smoothed_model, {"x": x})
    np.testing.assert_allclose(after[0], before[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(after[1], before[1])  # the ReduceSum still reads the unscaled x
    info = smoothed["x_smoothed"]
    absmax = np.abs(x).max(axis=0)
    expected = np.sqrt(absmax) / np.sqrt(np.abs(w).max(axis=1))  # alpha 0.5: max|X_j|^a / max|W_j|^(1-a)
    assert SMOOTH_ALPHA == 0.5
    np.testing.assert_allclose(info["scales"], expected, rtol=1e-4)
    assert info["amax"] == pytest.approx(np.max(absmax / expected), rel=1e-4)
    assert info["amax"] < absmax.max() / 3  # the outlier channel no longer sets the range alone
    matmul = next(n for n in smoothed_model.graph.node if n.op_type == "MatMul")
    assert matmul.input[0] == "x_smoothed"


def test_no_outlier_channels_no_smoothing():
    model, x = _gemm_graph(np.random.default_rng(0), outlier=1.0)
    _, smoothed = smooth(model, {"x": _stats(x, -1)})
    assert smoothed == {}


@pytest.mark.parametrize("bits", [8, 7])
def test_bias_correction_cancels_the_mean_shift_of_int8_weights(bits):
    """Gemm and depthwise Conv: with INT8 weights and corrected biases, each output channel's mean is FP32's."""
    rng = np.random.default_rng(1)
    c = 6
    dw = numpy_helper.from_array(rng.standard_normal((c, 1, 3, 3)).astype(np.float32), "dw")
    dwb = numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "dwb")
    fc = numpy_helper.from_array(rng.standard_normal((5, c)).astype(np.float32), "fc")
    fcb = numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "fcb")
    nodes = [helper.make_node("Conv", ["x", "dw", "dwb"], ["d"], group=c),
             helper.make_node("GlobalAveragePool", ["d"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5]),
                               helper.make_tensor_value_info("d", TensorProto.FLOAT, None)], [dw, dwb, fc, fcb])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.graph.output.append(helper.make_tensor_value_info("f", TensorProto.FLOAT, None))
    x = (0.1 * rng.standard_normal((32, c, 8, 8)) + rng.uniform(1, 3, (1, c, 1, 1))).astype(np.float32)  # means ≠ 0
    y, d, f = _run(model, {"x": x})
    assert recoverable_inputs(model) == {"x": 1, "f": 1}
    stats = {"x": _stats(x, 1), "f": _stats(f, 1)}

    def int8_weights(m):  # what the quantizer does to the weights afterwards
        q = onnx.ModelProto()
        q.CopyFrom(m)
        for t in q.graph.initializer:
            if t.name in ("dw", "fc"):
                t.CopyFrom(numpy_helper.from_array(weight_roundtrip(numpy_helper.to_array(t), 0, bits), t.name))
        return q

    plain = _run(int8_weights(model), {"x": x})
    corrected_model, count = correct_biases(model, stats, bits=bits)  # on the FP32 weights, before quantizing
    assert count == 2
    corrected = _run(int8_weights(corrected_model), {"x": x})
    # depthwise conv: the mean shift is removed (up to how far each window's mean is from the channel's)
    shift_before = np.abs(plain[1].mean(axis=(0, 2, 3)) - d.mean(axis=(0, 2, 3))).max()
    shift_after = np.abs(corrected[1].mean(axis=(0, 2, 3)) - d.mean(axis=(0, 2, 3))).max()
    assert shift_after < shift_before / 20
    # the Gemm reads the corrected conv output; its own correction uses the FP32 means of f
    assert np.abs(corrected[0].mean(0) - y.mean(0)).max() < np.abs(plain[0].mean(0) - y.mean(0)).max()


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    from trtopt.export import ExportConfig, export_onnx
    from trtopt.models.load import load_model

    feed = {"input": np.random.default_rng(0).standard_normal((128, 16, 32)).astype(np.float32)}
    art = export_onnx(load_model("tests.helpers.int8_reports:outlier_encoder"),
                      tmp_path_factory.mktemp("recovery") / "enc.onnx", ExportConfig(), feed={"input": feed["input"][:8]})
    return art, feed, calibrate(art.path, feed)


def test_auto_keeps_smoothing_for_outlier_channels_and_quantize_applies_it(encoder, tmp_path):
    art, feed, ranges = encoder
    trials = {t["step"]: t for t in ranges.choice["recovery_trials"]}
    assert trials["smoothing"]["kept"] and trials["smoothing"]["sqnr_db"] > trials["smoothing"]["sqnr_db_before"] + 3
    assert ranges.choice["recovery"]["smoothing"] is True
    assert recovery_steps(QuantizeConfig(), ranges)["smoothing"] is True
    assert recovery_steps(QuantizeConfig(smoothing=False), ranges)["smoothing"] is False
    ref = _run(art.path, feed)[0]

    def cosine(config, name):
        out = quantize(art.path, ranges, tmp_path / name, config, force=True)
        got = _run(out.path, feed)[0]
        return float(np.mean((ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1))), out

    smoothed, out = cosine(QuantizeConfig(), "auto.onnx")
    plain, _ = cosine(QuantizeConfig(smoothing=False, bias_correction=False), "plain.onnx")
    assert any(n.startswith("SmoothQuant-style smoothing") for n in out.notes)
    mul = [n for n in onnx.load(str(out.path)).graph.node if n.op_type == "Mul" and n.name.endswith("_smoothing")]
    assert mul  # the X/s node is there, and stays float (its input keeps its outliers)
    assert (1 - smoothed) < (1 - plain) / 3  # measured: 0.99976 vs 0.99665


def test_recovery_without_channel_statistics_is_an_error(encoder, tmp_path):
    art, _, ranges = encoder
    bare = Ranges(ranges.tensors, "minmax", ranges.samples, model_sha256=ranges.model_sha256)
    with pytest.raises(TrtoptError, match="no per-channel statistics"):
        quantize(art.path, bare, tmp_path / "x.onnx", QuantizeConfig(bias_correction=True))
    quantize(art.path, bare, tmp_path / "y.onnx", QuantizeConfig())  # nothing recorded: nothing applied


def test_single_methods_apply_no_recovery_unless_asked(encoder):
    art, feed, _ = encoder
    ranges = calibrate(art.path, feed, CalibrationConfig(method="minmax"))
    assert ranges.channels and recovery_steps(QuantizeConfig(), ranges) == {"smoothing": False, "bias_correction": False}
