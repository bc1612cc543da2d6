"""ONNX from any framework: third-party models (shipped in the onnx wheel) through calibrate → quantize → compare.

The models were written by ONNX's and PyTorch's own (old) exporters, not by trtopt: IR 3 files whose
initializers are graph inputs, opsets 1–21, static shapes, multi-input graphs with shape tensors,
scalar inputs, integer and bool inputs, several outputs. Each case feeds its own shipped inputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from trtopt.artifacts import inspect_onnx
from trtopt.errors import TrtoptError
from trtopt.quant.calibrate import CalibrationConfig, calibrate
from trtopt.quant.foreign import (
    check_pipeline,
    load_case,
    node_cases,
    onnx_test_data_root,
    shipped_cases,
    unsupported_ops,
    upgrade_opset,
)
from trtopt.quant.histogram import StreamingHistogram

DATA = onnx_test_data_root()


def case(group: str, name: str):
    return load_case(DATA / group / name)


def test_shipped_cases_are_found_and_read():
    folders = shipped_cases()
    assert len(folders) >= 100  # 140 in onnx 1.23
    conv = case("pytorch-converted", "test_Conv2d")
    assert list(conv.inputs) == ["0"] and conv.inputs["0"].dtype == np.float32
    assert len(conv.outputs) == 1


@pytest.mark.parametrize("group,name", [("pytorch-converted", "test_Conv2d_depthwise_strided"),
                                        ("pytorch-converted", "test_Conv3d_groups"),
                                        ("pytorch-converted", "test_ConvTranspose2d"),
                                        ("pytorch-operator", "test_operator_conv")])
def test_old_exporter_conv_models_go_through(group, name):
    """IR 3, opset < 13, initializers listed as inputs: quantize converts to opset 13 for per-channel Q/DQ."""
    c = case(group, name)
    record = check_pipeline(c.model, c.inputs, expected=c.outputs)
    assert record["status"] == "ok", record["error"]
    assert record["fp32_vs_reference"]["passed"]  # ONNX Runtime FP32 reproduces the shipped outputs
    assert record["int8_vs_fp32"]["min_cosine"] > 0.999


def test_static_multi_input_model_with_shape_tensor_calibrates():
    """X (1, 3, 1) float and a shape tensor (2,) int64: axis 0 differs, both fixed → one model call."""
    c = case("simple", "test_expand_shape_model1")
    ranges = calibrate(inspect_onnx(c.model), c.inputs, CalibrationConfig(method="minmax"), tensors=["X"])
    assert ranges.samples == 1
    assert "X" in ranges.tensors and "shape" not in ranges.tensors  # integer tensors are not calibrated
    assert ranges.tensors["X"].amax == pytest.approx(float(np.abs(c.inputs["X"]).max()))


def _single_op_model(path, node, inputs, outputs, opset=17):
    graph = helper.make_graph([node], "op", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_scalar_input_calibrates(tmp_path):
    """A 0-d int64 input (the axis of CumSum) beside a float vector: a scalar has no sample axis."""
    _single_op_model(tmp_path / "cumsum.onnx", helper.make_node("CumSum", ["x", "axis"], ["y"]),
                     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5]),
                      helper.make_tensor_value_info("axis", TensorProto.INT64, [])],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5])])
    x = np.arange(1, 6, dtype=np.float32)
    record = check_pipeline(tmp_path / "cumsum.onnx", {"x": x, "axis": np.array(0)}, expected={"y": np.cumsum(x)})
    assert record["status"] == "not_quantizable"  # calibrated; no Conv/MatMul/Gemm to quantize
    assert record["calibrated_tensors"] == 2 and record["fp32_vs_reference"]["passed"]


def _mixed_model(path):
    """A hand-built foreign graph: float + int64 + bool inputs, MatMul, two outputs, one of them 0-d."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [4, 3], np.random.default_rng(0).normal(size=12).astype(np.float32))
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("Cast", ["ids"], ["idsf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["h", "idsf"], ["a"]),
             helper.make_node("Where", ["keep", "a", "h"], ["y"]),
             helper.make_node("ReduceSum", ["y"], ["total"], keepdims=0)]
    graph = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
                                               helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 3]),
                                               helper.make_tensor_value_info("keep", TensorProto.BOOL, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3]),
                               helper.make_tensor_value_info("total", TensorProto.FLOAT, [])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="hand-written")
    model.ir_version = 8
    onnx.save(model, str(path))
    rng = np.random.default_rng(1)
    feed = {"x": rng.normal(size=(6, 4)).astype(np.float32), "ids": rng.integers(0, 3, (6, 3)),
            "keep": rng.uniform(size=(6, 3)) > 0.5}
    return feed


def test_integer_bool_inputs_multiple_outputs_and_scalar_output(tmp_path):
    feed = _mixed_model(tmp_path / "mixed.onnx")
    record = check_pipeline(tmp_path / "mixed.onnx", feed)
    assert record["status"] == "ok", record["error"]
    assert record["int8_vs_fp32"]["outputs"] == 2 and record["int8_vs_fp32"]["min_cosine"] > 0.99


def test_external_data_model(tmp_path):
    """A shipped model re-saved with its weights in a side file goes through; a missing side file is named."""
    c = case("pytorch-converted", "test_Conv2d")
    model = onnx.load(str(c.model))
    onnx.save(model, str(tmp_path / "conv.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="conv.onnx.data", size_threshold=0)
    art = inspect_onnx(tmp_path / "conv.onnx")
    assert [p.name for p in art.data_files] == ["conv.onnx.data"]
    record = check_pipeline(art.path, c.inputs, expected=c.outputs, work_dir=tmp_path)
    assert record["status"] == "ok", record["error"]
    assert record["external_data"] == ["conv.onnx.data"]
    (tmp_path / "conv.onnx.data").unlink()
    with pytest.raises(TrtoptError, match="external data conv.onnx.data, which is missing"):
        inspect_onnx(tmp_path / "conv.onnx")


def test_op_without_kernel_names_op_and_target():
    c = case("pytorch-converted", "test_PReLU_2d")
    assert unsupported_ops(c.model) == ["PRelu (opset 6)"]
    record = check_pipeline(c.model, c.inputs)
    assert record["status"] == "error" and record["stage"] == "fp32"
    assert "op PRelu (opset 6)" in record["error"] and "target onnxruntime" in record["error"]
    assert "upgrade_opset" in record["error"]  # the fix


def test_unregistered_domain_op_names_op_and_target():
    c = case("simple", "test_gradient_of_add")
    assert unsupported_ops(c.model) == ["ai.onnx.preview.training::Gradient (opset 1)"]
    record = check_pipeline(c.model, c.inputs)
    assert "op ai.onnx.preview.training::Gradient" in record["error"] and "target onnxruntime" in record["error"]


def test_supported_model_lists_no_unsupported_ops():
    assert unsupported_ops(case("pytorch-converted", "test_Conv2d").model) == []
    with pytest.raises(TrtoptError, match="onnxruntime only"):
        unsupported_ops(case("pytorch-converted", "test_Conv2d").model, target="tflite")


def test_upgrade_opset_makes_old_gemm_model_runnable(tmp_path):
    c = case("pytorch-converted", "test_Linear")  # Gemm at opset 6: no kernel in ONNX Runtime 1.32
    assert check_pipeline(c.model, c.inputs)["status"] == "error"
    art = upgrade_opset(c.model, tmp_path / "linear17.onnx", opset=17)
    assert art.opset == 17
    record = check_pipeline(art.path, c.inputs, expected=c.outputs)
    assert record["status"] == "ok", record["error"]
    assert record["fp32_vs_reference"]["passed"]
    with pytest.raises(TrtoptError, match="already exists"):
        upgrade_opset(c.model, tmp_path / "linear17.onnx", opset=17)
    with pytest.raises(TrtoptError, match="already at opset 17"):
        upgrade_opset(art.path, tmp_path / "again.onnx", opset=13)


def test_run_failure_names_the_op(tmp_path):
    _single_op_model(tmp_path / "reducemax.onnx", helper.make_node("ReduceMax", ["x", "axes"], ["y"], keepdims=1),
                     [helper.make_tensor_value_info("x", TensorProto.BOOL, [2, 0, 4]),
                      helper.make_tensor_value_info("axes", TensorProto.INT64, [1])],
                     [helper.make_tensor_value_info("y", TensorProto.BOOL, [2, 1, 4])], opset=20)
    record = check_pipeline(tmp_path / "reducemax.onnx", {"x": np.zeros((2, 0, 4), bool), "axes": np.array([1])})
    assert record["stage"] == "fp32" and record["error"].startswith("op ReduceMax")
    assert "target onnxruntime" in record["error"]


def test_histogram_ignores_float64_denormals():
    """Shipped test data hold float64 values like 1e-310; they are zero at any int8 scale (no overflow)."""
    h = StreamingHistogram(2048)
    h.update(np.array([1e-310, -2e-316], dtype=np.float64))
    assert h.counts[0] == 2 and h.bin_width == 0.0
    h.update(np.array([1.0, -3.0]))
    assert h.absmax == 3.0 and h.counts.sum() == 4


@pytest.mark.slow
def test_every_shipped_model_gets_a_result_or_a_named_error():
    """The wider sweep (all 140 shipped models): no crash; at least the 31 Conv/Gemm models pass."""
    statuses = {}
    for folder in shipped_cases():
        c = load_case(folder)
        record = check_pipeline(c.model, c.inputs, expected=c.outputs)
        statuses[folder.name] = record["status"]
        if record["status"] == "error":
            assert record["error"] and "; fix: " in record["error"], (folder.name, record["error"])
    assert sum(s == "ok" for s in statuses.values()) >= 31
    assert sum(s in ("ok", "not_quantizable") for s in statuses.values()) >= 96


@pytest.mark.slow
def test_operator_cases_sample_gets_a_result_or_a_named_error(tmp_path):
    """Every 8th operator case of onnx.backend.test.case.node.collect_testcases(): no crash, errors named."""
    cases = node_cases()[::8]
    statuses = []
    for name, model, inputs, outputs in cases:
        onnx.save(model, str(tmp_path / f"{name}.onnx"))
        record = check_pipeline(tmp_path / f"{name}.onnx", inputs, expected=outputs)
        statuses.append(record["status"])
        if record["status"] == "error":
            assert "; fix: " in record["error"], (name, record["error"])
    assert statuses.count("ok") >= 3 and statuses.count("not_quantizable") > len(cases) // 2


def test_cli_calibrate_quantize_compare_on_a_foreign_model(tmp_path, cli_env):
    """The CLI stages on a shipped third-party model with its own (named) inputs from an .npz file."""
    import shutil

    from tests.helpers.cli import run

    c = case("pytorch-converted", "test_Conv2d_groups")
    shutil.copy(c.model, tmp_path / "foreign.onnx")
    np.savez(tmp_path / "inputs.npz", **c.inputs)
    r = run(["calibrate", "foreign.onnx", "--data", "inputs.npz", "--method", "minmax", "-o", "ranges.json"], tmp_path, cli_env)
    assert r.returncode == 0, r.stderr
    r = run(["quantize", "foreign.onnx", "--ranges", "ranges.json", "--target", "onnxruntime", "-o", "int8.onnx"],
            tmp_path, cli_env)
    assert r.returncode == 0, r.stderr
    r = run(["compare", "foreign.onnx", "int8.onnx", "--data", "inputs.npz", "--atol", "0.1", "--min-cosine", "0.999"],
            tmp_path, cli_env)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "PASS" in r.stdout
