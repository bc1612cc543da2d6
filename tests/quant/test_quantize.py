"""INT8 quantization: layouts per target, exclusions, errors, error analysis, sensitivity, caches end to end."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from trtopt.artifacts import Ranges, TensorRange
from trtopt.data import load_feed
from trtopt.errors import TrtoptError
from trtopt.export import ExportConfig, export_onnx
from trtopt.metrics import cosine_per_sample, top1_agreement, topk_accuracy
from trtopt.models.load import load_model
from trtopt.quant.calibrate import CalibrationConfig, calibrate
from trtopt.quant.error import activation_sqnr, weight_errors
from trtopt.quant.quantize import QuantizeConfig, quantize


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The trained digits CNN exported to ONNX, its calibration ranges, and the labelled test split."""
    from trtopt.datasets import load_dataset

    tmp = tmp_path_factory.mktemp("digits")
    loaded = load_model("zoo:digits_cnn")
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    art = export_onnx(loaded, tmp / "fp32.onnx", ExportConfig(), feed=load_feed(train.inputs, loaded.inputs, count=64))
    calib = {k: v[:256] for k, v in train.inputs.items()}
    ranges = calibrate(art.path, calib, CalibrationConfig(method="entropy"))
    return tmp, art, ranges, test


def _run(path, feed, threads=1):
    from trtopt.measure.bench import onnx_candidate, run_all

    return next(iter(run_all(onnx_candidate(path, threads=threads), feed, 64).values()))


def _zero_points(model):
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2:
            yield numpy_helper.to_array(inits[node.input[2]])


def test_onnxruntime_target_is_u8s8_and_accurate(digits):
    tmp, art, ranges, test = digits
    out = quantize(art.path, ranges, tmp / "ort.onnx", QuantizeConfig(target="onnxruntime"), force=True)
    model = onnx.load(str(out.path))
    zps = list(_zero_points(model))
    assert zps and all(z.dtype == np.uint8 for z in zps)  # uint8 activations
    assert out.precision == "int8" and out.metadata["trtopt.quantize.target"] == "onnxruntime"
    fp32_acc = topk_accuracy(_run(art.path, test.inputs), test.labels)
    int8_acc = topk_accuracy(_run(out.path, test.inputs), test.labels)
    assert fp32_acc > 0.97
    assert int8_acc >= fp32_acc - 0.003  # the bar: within 0.3 points on a labelled real dataset
    assert out.size_bytes < art.size_bytes / 2.5


def test_tensorrt_target_follows_tensorrt_rules(digits):
    tmp, art, ranges, test = digits
    out = quantize(art.path, ranges, tmp / "trt.onnx", QuantizeConfig(target="tensorrt"), force=True)
    model = onnx.load(str(out.path))
    inits = {t.name: t for t in model.graph.initializer}
    assert all(z.dtype == np.int8 and not z.any() for z in _zero_points(model))  # symmetric int8, zp 0
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:  # weights: int8, per channel
            assert numpy_helper.to_array(inits[node.input[0]]).dtype == np.int8
            assert numpy_helper.to_array(inits[node.input[1]]).size > 1
        if node.op_type == "DequantizeLinear" and node.input[0] not in inits:  # activations feed GEMM ops only
            assert {c.op_type for c in consumers[node.output[0]]} <= {"Conv", "ConvTranspose", "Gemm", "MatMul"}
    fp32_acc = topk_accuracy(_run(art.path, test.inputs), test.labels)
    assert topk_accuracy(_run(out.path, test.inputs), test.labels) >= fp32_acc - 0.003


def test_exclusions_keep_layers_in_fp32(digits):
    tmp, art, ranges, _ = digits
    model = onnx.load(str(art.path))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    out = quantize(art.path, ranges, tmp / "ex.onnx", QuantizeConfig(exclude_nodes=(convs[0],), exclude_op_types=("Gemm",)),
                   force=True)
    q = onnx.load(str(out.path))
    producers = {o: n for n in q.graph.node for o in n.output}
    first = next(n for n in q.graph.node if n.name == convs[0])
    assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in first.input)
    gemm = next(n for n in q.graph.node if n.op_type == "Gemm")
    assert gemm.input[1] not in producers  # the float weight initializer itself, no DequantizeLinear
    with pytest.raises(TrtoptError, match="no_such_node"):
        quantize(art.path, ranges, tmp / "bad.onnx", QuantizeConfig(exclude_nodes=("no_such_node",)))


def test_quantize_errors(digits, tmp_path):
    tmp, art, ranges, _ = digits
    with pytest.raises(TrtoptError, match="another model"):
        quantize(art.path, Ranges(ranges.tensors, "entropy", 1, model_sha256="0" * 64), tmp_path / "x.onnx")
    with pytest.raises(TrtoptError, match="no entry for tensor"):
        quantize(art.path, Ranges({}, "entropy", 1), tmp_path / "x.onnx")
    (tmp_path / "exists.onnx").write_bytes(b"keep")
    with pytest.raises(TrtoptError, match="--force"):
        quantize(art.path, ranges, tmp_path / "exists.onnx")
    assert (tmp_path / "exists.onnx").read_bytes() == b"keep"
    with pytest.raises(TrtoptError, match="target"):
        QuantizeConfig(target="tflite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.onnx"]


def test_model_without_quantizable_layers_is_refused(tmp_path):
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])])
    path = tmp_path / "relu.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(path))
    ranges = Ranges({"x": TensorRange(1, -1, 1), "y": TensorRange(1, 0, 1)}, "minmax", 1)
    with pytest.raises(TrtoptError, match="no quantizable layers"):
        quantize(path, ranges, tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()


def test_weight_errors_are_bounded_by_half_a_step(digits):
    tmp, art, ranges, _ = digits
    out = quantize(art.path, ranges, tmp / "w.onnx", QuantizeConfig(target="tensorrt"), force=True)
    rows = weight_errors(art.path, out.path)
    fp32 = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(art.path)).graph.initializer}
    assert {r["op_type"] for r in rows} == {"Conv", "Gemm"}
    for r in rows:
        w = fp32[r["weight"]]
        assert r["per_channel"]
        # symmetric per-channel int8: error ≤ scale/2 = max|w_c|/254 ≤ max|w|/254 (+ float32 slack)
        assert r["abs_error_max"] <= np.abs(w).max() / 254 * 1.0001
        assert 0 < r["abs_error_mean"] <= r["abs_error_p99"] <= r["abs_error_max"]


def test_activation_sqnr_is_high_for_int8_and_infinite_for_identity(digits):
    tmp, art, ranges, test = digits
    out = quantize(art.path, ranges, tmp / "s.onnx", QuantizeConfig(target="onnxruntime"), force=True)
    rows = activation_sqnr(art.path, out.path, test.inputs, batch_size=50)
    # each conv is measured after its ReLU (the quantizer folds the ReLU into the uint8 range), then the Gemm
    assert [r["op_type"] for r in rows] == ["Relu", "Relu", "Relu", "Gemm"]
    assert all(15 < r["sqnr_db"] < 80 for r in rows)
    same = activation_sqnr(art.path, art.path, test.inputs, batch_size=50)
    assert all(r["sqnr_db"] == float("inf") for r in same)


def test_mixed_precision_meets_the_bar_with_fewest_layers(digits):
    from trtopt.quant.sensitivity import accuracy_scorer, choose_mixed_precision

    tmp, art, ranges, test = digits
    coarse = Ranges({k: TensorRange(r.amax * 8, r.min * 8, r.max * 8) for k, r in ranges.tensors.items()},
                    "minmax", ranges.samples, model_sha256=ranges.model_sha256)  # deliberately bad ranges
    score = accuracy_scorer(test.inputs, test.labels, threads=1)
    choice = choose_mixed_precision(art.path, coarse, QuantizeConfig(), score, max_drop=0.003)
    sens = choice["sensitivity"]
    assert len(sens["layers"]) == 4
    recovered = [r["recovered"] for r in sens["layers"]]
    assert recovered == sorted(recovered, reverse=True)
    assert choice["met"] and choice["fp32_score"] - choice["score"] <= 0.003
    # the greedy choice is minimal along its own order: one layer fewer would not meet the bar
    if choice["exclude_nodes"]:
        assert choice["fp32_score"] - choice["trail"][-2]["score"] > 0.003


def test_fp16_by_casts_keeps_float32_io_and_matches(digits):
    from trtopt.quant.quantize import to_fp16

    tmp, art, _, test = digits
    half = to_fp16(art.path, tmp / "fp16.onnx", force=True)
    model = onnx.load(str(half.path))
    assert half.precision == "fp16" and half.metadata["trtopt.precision"] == "fp16"
    assert [t.dtype for t in half.inputs] == ["float32"] and [t.dtype for t in half.outputs] == ["float32"]
    assert any(n.op_type == "Cast" for n in model.graph.node)
    assert all(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer
               if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) and len(t.dims) > 1)
    assert half.size_bytes < art.size_bytes * 0.55
    ref, got = _run(art.path, test.inputs), _run(half.path, test.inputs)
    assert cosine_per_sample(ref, got).min() > 0.9999 and top1_agreement(ref, got) == 1.0
    with pytest.raises(TrtoptError, match="--force"):
        to_fp16(art.path, half.path)


@pytest.mark.parametrize("isa, bits", [({"int8": "avx2", "u8s8_saturates": True}, 7),
                                       ({"int8": "avx512_vnni", "u8s8_saturates": False}, 8)])
def test_weight_bits_follow_the_cpu_isa(digits, monkeypatch, isa, bits):
    """7-bit weights only where U8S8 kernels can saturate (x86 without VNNI/AMX); recorded in the model."""
    import trtopt.quant.quantize as quantize_module

    tmp, art, ranges, test = digits
    monkeypatch.setattr(quantize_module, "cpu_isa", lambda: {"flags": [], **isa})
    assert QuantizeConfig().weights_reduce_range is (bits == 7)
    assert QuantizeConfig(target="tensorrt").weights_reduce_range is False
    out = quantize(art.path, ranges, tmp / f"w{bits}.onnx", QuantizeConfig(), force=True)
    assert out.metadata["trtopt.quantize.weight_bits"] == str(bits)
    assert out.metadata["trtopt.quantize.cpu_int8"] == isa["int8"]
    assert any(f"{bits}-bit weights" in n and isa["int8"] in n for n in out.notes)
    model = onnx.load(str(out.path))
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8
               and len(t.dims) > 1]
    top = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert top == (64 if bits == 7 else 127)  # symmetric 7-bit: [-64, 64]; 8-bit: [-127, 127]
    assert topk_accuracy(_run(out.path, test.inputs), test.labels) > 0.97
    explicit = QuantizeConfig(reduce_range=True)
    assert explicit.weights_reduce_range and not quantize_module._weight_bits_note(explicit)


def test_exclude_by_module_or_tensor_name_keeps_the_same_layer_in_fp32(digits):
    """`--exclude conv1` (the PyTorch module) and its output tensor's name exclude the node that `--exclude
    node_Conv_…` would, and the artifact notes say how each name was read."""
    tmp, art, ranges, _ = digits
    model = onnx.load(str(art.path))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    module = conv.input[1].rsplit(".", 1)[0]  # the exporter names the weight after the PyTorch parameter
    for name, kind in ((module, "module"), (conv.output[0], "tensor")):
        out = quantize(art.path, ranges, tmp / f"ex_{kind}.onnx", QuantizeConfig(exclude_nodes=(name,)), force=True)
        q = onnx.load(str(out.path))
        producers = {o: n for n in q.graph.node for o in n.output}
        kept = next(n for n in q.graph.node if n.name == conv.name)
        assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in kept.input)
        assert f"--exclude {name}: {kind} → node(s) {conv.name}" in out.notes


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_keep_first_layer_fp32_leaves_the_input_unquantized(digits, target):
    tmp, art, ranges, test = digits
    model = onnx.load(str(art.path))
    image = model.graph.input[0].name
    stem = next(n for n in model.graph.node if n.op_type == "Conv")
    outputs = {}
    for keep in (False, True):
        out = quantize(art.path, ranges, tmp / f"first_{target}_{keep}.onnx",
                       QuantizeConfig(target=target, keep_first_layer_fp32=keep), force=True)
        q = onnx.load(str(out.path))
        quantized_inputs = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
        producers = {o: n for n in q.graph.node for o in n.output}
        conv = next(n for n in q.graph.node if n.name == stem.name)
        dq_fed = [i for i in conv.input if i in producers and producers[i].op_type == "DequantizeLinear"]
        assert (image in quantized_inputs) is not keep
        assert bool(dq_fed) is not keep  # with the option neither the input nor the weight goes through DQ
        assert any(n.op_type == "Conv" and any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
                                               for i in n.input) for n in q.graph.node)  # the other convs stay INT8
        assert any("first layer kept in FP32" in note and stem.name in note for note in out.notes) is keep
        outputs[keep] = _run(out.path, test.inputs)
    fp32 = _run(art.path, test.inputs)
    assert top1_agreement(outputs[True], fp32) >= 0.98


def test_keep_first_layer_fp32_needs_a_float_input(tmp_path):
    from onnx import TensorProto, helper

    table = numpy_helper.from_array(np.ones((10, 4), np.float32), "table")
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["e"], name="gather"),
                               helper.make_node("MatMul", ["e", "w"], ["y"], name="matmul")], "ids_only",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4])], [table, weight])
    path = tmp_path / "ids.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    ranges = Ranges(method="minmax", samples=1, tensors={"e": TensorRange(1.0, 0.0, 1.0), "y": TensorRange(4.0, 0.0, 4.0)})
    with pytest.raises(TrtoptError, match="keep_first_layer_fp32: no Conv.*float input.*drop --keep-first-layer-fp32"):
        quantize(path, ranges, tmp_path / "q.onnx", QuantizeConfig(keep_first_layer_fp32=True))
    assert not (tmp_path / "q.onnx").exists()


def test_keep_first_layer_fp32_on_unnamed_nodes_is_refused_naming_the_fix():
    """Third-party ONNX files may leave node names empty: the first layer's "" excluded every unnamed node, and
    quantize failed with "no float tensors to calibrate ... pass real inputs with --data" (a fix that fails)."""
    from onnx import TensorProto, helper

    from trtopt.quant.quantize import first_layer_nodes

    w = [numpy_helper.from_array(np.ones((4, 4), np.float32), n) for n in ("w1", "w2")]
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])],
                              "unnamed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], w)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(TrtoptError, match=r"no node name \(MatMul\)") as info:
        first_layer_nodes(model, "m.onnx")
    assert "name every node" in info.value.fix
    model.graph.node[0].name = "first"
    model.graph.node[1].name = ""  # only the first layer needs a name
    assert first_layer_nodes(model, "m.onnx") == ["first"]


def test_keep_first_layer_fp32_does_not_follow_the_inputs_shape():
    """``x.view(x.size(0), -1)`` reads Shape(input): the walk went Shape → Gather → Concat → Reshape into the
    classifier, and kept it FP32 as a "first layer" (with every node on the way)."""
    from onnx import TensorProto, helper

    from trtopt.quant.quantize import first_layer_nodes

    init = [numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w1"),
            numpy_helper.from_array(np.ones((10, 256), np.float32), "wf"),
            numpy_helper.from_array(np.array([0], np.int64), "zero"), numpy_helper.from_array(np.array([-1], np.int64), "m1")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
             helper.make_node("Concat", ["n", "m1"], ["shp"], name="concat", axis=0),
             helper.make_node("Reshape", ["c", "shp"], ["flat"], name="reshape"),
             helper.make_node("Gemm", ["flat", "wf"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "view", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], init)
    assert first_layer_nodes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])) == ["conv1"]
