"""Each INT8 bug report of issue 13 as a test, on a small model made to match it (tests/helpers/int8_reports.py).

The values asserted are the ones the reports were about: cosine to FP32, top-1 agreement, the spread of
the outputs across samples (0.0 when every sample got the same INT8 output), the ranges chosen, and
the text of the error a user sees.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.helpers.cli import assert_one_line_error, run
from trtopt.errors import TrtoptError
from trtopt.export import ExportConfig, export_onnx
from trtopt.models.load import load_model
from trtopt.quant import quantize as quantize_module
from trtopt.quant.calibrate import CalibrationConfig, calibrate
from trtopt.quant.quantize import QuantizeConfig, evaluation_config, quantize


def _run(path, feed, artifact=None):
    options = ort.SessionOptions()
    if artifact is not None and evaluation_config(artifact).graph_optimization_level == "disable":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # exact Q/DQ (TensorRT)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _cosine(a, b):
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reports")

    def go(name, feed):
        return export_onnx(load_model(f"tests.helpers.int8_reports:{name}"), folder / f"{name}.onnx", ExportConfig(),
                           feed={k: v[:8] for k, v in feed.items()}, force=True)

    return go


def _int8(art, ranges, tmp_path, target, **options):
    out = quantize(art.path, ranges, tmp_path / f"{art.path.stem}.{target}.onnx", QuantizeConfig(target=target, **options),
                   force=True)
    return out


# --- entropy ranges collapsing onto the data's minimum ------------------------------------------------

@pytest.fixture(scope="module")
def offset(export):
    """Linear(8,32) → ReLU → Linear(32,4) on 256 rows uniform in [1, 2]."""
    feed = {"input": np.random.default_rng(0).uniform(1.0, 2.0, (256, 8)).astype(np.float32)}
    return export("offset_mlp", feed), feed


@pytest.mark.parametrize("method", ["auto", "entropy"])
@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_offset_features_keep_their_spread_across_samples(offset, tmp_path, method, target):
    art, feed = offset
    ranges = calibrate(art.path, feed, CalibrationConfig(method=method))
    assert ranges.tensors["input"].amax == pytest.approx(2.0, rel=0.01)  # was 1.001: every input one code
    out = _int8(art, ranges, tmp_path, target)
    ref, got = _run(art.path, feed), _run(out.path, feed, out)
    assert got.std(axis=0).mean() == pytest.approx(ref.std(axis=0).mean(), rel=0.05)  # was 0.0 vs 0.054
    assert _cosine(ref, got) >= 0.9999  # was 0.981 (ORT) / 0.986 (TensorRT layout)


def test_entropy_fallback_is_recorded_in_the_ranges_json_and_warned(offset, tmp_path, caplog):
    art, feed = offset
    with caplog.at_level("WARNING", logger="trtopt.quant.calibrate"):
        ranges = calibrate(art.path, feed, CalibrationConfig(method="entropy"))
    fallbacks = {f["tensor"]: f for f in ranges.choice["fallbacks"]}
    assert fallbacks["input"]["method"] == "entropy" and fallbacks["input"]["amax"] == pytest.approx(1.001, abs=1e-3)
    assert fallbacks["input"]["used"] == "mse" and "never come nearer to 0 than 1" in fallbacks["input"]["reason"]
    assert "'input': entropy saturates" in caplog.text and "fell back" in caplog.text
    saved = json.loads(ranges.save(tmp_path / "ranges.json").read_text())
    assert saved["choice"]["fallbacks"][0]["tensor"] in fallbacks


@pytest.mark.parametrize("method", ["auto", "entropy"])
def test_pooled_features_do_not_collapse_to_one_output(export, tmp_path, method):
    """Conv → ReLU → GlobalAveragePool → Linear on random images: the logits lie in a narrow band."""
    feed = {"input": np.random.default_rng(0).uniform(0.0, 1.0, (256, 3, 16, 16)).astype(np.float32)}
    art = export("pooled_cnn", feed)
    ranges = calibrate(art.path, feed, CalibrationConfig(method=method))
    out = _int8(art, ranges, tmp_path, "onnxruntime")
    ref, got = _run(art.path, feed), _run(out.path, feed)
    assert got.std(axis=0).mean() > 0.9 * ref.std(axis=0).mean()  # was 0.0: every image the same logits
    assert _cosine(ref, got) >= 0.9999  # was 0.920
    assert np.mean(ref.argmax(1) == got.argmax(1)) >= 0.9  # was 0.0


# --- transformers: LayerNorm, Softmax and residual Adds quantized by default --------------------------

@pytest.fixture(scope="module")
def encoder(export):
    """Two pre-LN encoder blocks on 16 tokens × 32 channels, residual channel 0 scaled ×40."""
    feed = {"input": np.random.default_rng(0).standard_normal((256, 16, 32)).astype(np.float32)}
    art = export("outlier_encoder", feed)
    return art, feed, calibrate(art.path, feed)


def test_transformer_gets_matmul_gemm_only_on_onnxruntime_and_says_so(encoder, tmp_path):
    art, feed, ranges = encoder
    steps = []
    out = quantize(art.path, ranges, tmp_path / "enc.onnx", QuantizeConfig(), force=True, on_step=steps.append)
    assert any("transformer graph (LayerNormalization ×4, Softmax over attention scores ×2)" in s for s in steps)
    assert any("quantizing the inputs of MatMul, Gemm only" in n for n in out.notes)
    model = onnx.load(str(out.path))
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    fed_by_dq = {n.op_type for n in model.graph.node if set(n.input) & dq_outputs}
    assert fed_by_dq <= {"MatMul", "Gemm"}  # norms, softmax, residual adds read float tensors
    # bias + GELU between the INT8 GEMMs fused for ONNX Runtime (MiniLM: ~10 % faster), same arithmetic
    assert any(n.startswith("float ops between the GEMMs fused for ONNX Runtime (BiasGelu ×2") for n in out.notes)
    assert {"BiasGelu", "MatMul"} <= {n.op_type for n in model.graph.node} and "Erf" not in {n.op_type for n in model.graph.node}
    ref, got = _run(art.path, feed), _run(out.path, feed)
    # was 0.966 / 0.81 with every op quantized; MatMul/Gemm inputs only: 0.9966 / 0.93; plus the smoothing
    # method auto keeps for the outlier channel (tests/quant/test_recovery.py): 0.9998 / 0.97
    assert _cosine(ref, got) >= 0.999
    assert np.mean(ref.argmax(1) == got.argmax(1)) >= 0.95


def test_a_failing_transformer_fusion_leaves_the_graph_unfused_and_says_so(encoder, tmp_path, monkeypatch):
    from onnxruntime.transformers import optimizer

    def broken(*args, **kwargs):
        raise RuntimeError("pattern the optimizer chokes on")

    monkeypatch.setattr(optimizer, "optimize_model", broken)
    art, feed, ranges = encoder
    out = quantize(art.path, ranges, tmp_path / "enc.onnx", QuantizeConfig(), force=True)
    assert any("transformer fusions failed (pattern the optimizer chokes on); float ops left unfused" in n
               for n in out.notes)
    assert "BiasGelu" not in {n.op_type for n in onnx.load(str(out.path)).graph.node}
    assert _cosine(_run(art.path, feed), _run(out.path, feed)) >= 0.999  # the same INT8 model, unfused


def test_explicit_op_types_win_over_the_transformer_default(encoder, tmp_path):
    art, feed, ranges = encoder
    config = QuantizeConfig(op_types=("MatMul", "Gemm", "Add"))
    with pytest.raises(TrtoptError, match="op types MatMul,Gemm,Add beyond the layouts the ranges cover.*--data"):
        quantize(art.path, ranges, tmp_path / "enc_all.onnx", config)  # ranges for the default layouts only
    out = quantize(art.path, calibrate(art.path, {"input": feed["input"][:64]}, layouts=(config,)), tmp_path / "enc_all.onnx", config)
    model = onnx.load(str(out.path))
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert "Add" in {n.op_type for n in model.graph.node if set(n.input) & dq_outputs}
    assert not any("transformer graph" in n or "fused for ONNX Runtime" in n for n in out.notes)


def test_a_cnn_with_a_softmax_head_is_not_a_transformer():
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    fc = numpy_helper.from_array(np.ones((4, 10), np.float32), "fc")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("MatMul", ["f", "fc"], ["m"]),
             helper.make_node("Softmax", ["m"], ["y"])]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], [w, fc])
    assert quantize_module.transformer_markers(helper.make_model(graph)) == {}


# --- crashes ------------------------------------------------------------------------------------------

def test_grouped_conv_transpose_quantizes_per_channel_with_that_node_per_tensor(export, tmp_path):
    """ConvTranspose(8 → 8, groups=2) per-channel on onnxruntime: was ValueError (8,) vs (4,) from ORT's tool."""
    feed = {"input": np.random.default_rng(0).uniform(-1, 1, (64, 3, 8, 8)).astype(np.float32)}
    art = export("grouped_deconv", feed)
    ranges = calibrate(art.path, feed)
    out = _int8(art, ranges, tmp_path, "onnxruntime")
    note = next(n for n in out.notes if "grouped ConvTranspose" in n)
    assert note.startswith("per-tensor weights for 1 grouped ConvTranspose node(s)")
    model = onnx.load(str(out.path))
    axes = {n.input[0]: next((a.i for a in n.attribute if a.name == "axis"), None)
            for n in model.graph.node if n.op_type == "DequantizeLinear"}
    conv_t = next(n for n in model.graph.node if n.op_type == "ConvTranspose")
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weight_dq = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    assert axes[weight_dq[conv_t.input[1]]] is None  # per tensor
    assert axes[weight_dq[conv.input[1]]] == 0  # the ordinary Conv stays per channel
    assert _cosine(_run(art.path, feed), _run(out.path, feed)) >= 0.999


def test_weights_go_to_a_side_file_when_the_model_is_too_large_for_protobuf(encoder, tmp_path, monkeypatch):
    """The >2 GB path (ONNX Runtime's quantizer and the metadata stamp write external data), on a small model."""
    art, feed, ranges = encoder
    inline = _int8(art, ranges, tmp_path, "onnxruntime")
    monkeypatch.setattr(quantize_module, "EXTERNAL_DATA_BYTES", 0)
    out = quantize(art.path, ranges, tmp_path / "big" / "model.int8.onnx", QuantizeConfig(), force=True)
    assert [p.name for p in out.data_files] == ["model.int8.onnx.data"]
    assert sorted(p.name for p in (tmp_path / "big").iterdir()) == ["model.int8.onnx", "model.int8.onnx.data"]
    assert out.metadata["trtopt.quantize.target"] == "onnxruntime"
    np.testing.assert_array_equal(_run(out.path, feed), _run(inline.path, feed))


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("TRTOPT_TEST_LARGE") != "1",
                    reason="writes 2.7 GB and peaks at 7.5 GB RSS for ~5 min; set TRTOPT_TEST_LARGE=1 to run it")
def test_a_model_over_2_gb_quantizes_end_to_end(tmp_path):
    """Four 16384×8192 MatMul weights (2.1 GB) in a side file: calibrate, quantize, run (was protobuf EncodeError)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, name = [], [], "x"
    for i in range(4):
        w = rng.standard_normal((8192, 16384) if i % 2 == 0 else (16384, 8192), dtype=np.float32)
        w *= 1.0 / np.sqrt(w.shape[0])
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        del w
        nodes += [helper.make_node("MatMul", [name, f"w{i}"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        name = f"r{i}"
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8192])],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", 8192])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    del inits, graph
    path = tmp_path / "big.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="big.onnx.data")
    del model
    feed = {"x": rng.standard_normal((16, 8192)).astype(np.float32)}
    ranges = calibrate(path, feed, CalibrationConfig(method="minmax"))
    out = quantize(path, ranges, tmp_path / "big.int8.onnx", QuantizeConfig(), force=True)
    assert [p.name for p in out.data_files] == ["big.int8.onnx.data"]
    assert out.size_bytes < 0.3 * (path.stat().st_size + (tmp_path / "big.onnx.data").stat().st_size)  # ~0.56 GB
    assert _cosine(_run(path, feed), _run(out.path, feed)) > 0.99


def test_random_ids_stay_inside_the_embedding_table(export, tmp_path):
    """No --data: ids were drawn from [0, 100) and overflowed a 50-row embedding."""
    from tests.helpers.env import cli_environment

    export("small_embedding", {"ids": np.zeros((8, 12), np.int64)}).path.rename(tmp_path / "emb.onnx")
    r = run(["quantize", "emb.onnx", "-o", "emb.int8.onnx", "--samples", "64"], tmp_path, cli_environment())
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "emb.int8.onnx").is_file()


def test_error_on_generated_ids_says_trtopt_generated_them(export, tmp_path):
    from tests.helpers.env import cli_environment

    export("shifted_embedding", {"ids": np.zeros((8, 12), np.int64)}).path.rename(tmp_path / "shifted.onnx")
    r = run(["calibrate", "shifted.onnx", "-o", "ranges.json", "--samples", "64"], tmp_path, cli_environment())
    assert_one_line_error(r, "shifted.onnx", "random data trtopt generated without --data", "ids int64 in [0, 99]",
                          "pass real inputs with --data")
    assert "calibration_augmented" not in r.stderr and "check the input shapes" not in r.stderr
    assert not (tmp_path / "ranges.json").exists()


# --- embedding tables: the float word table kept a sentence encoder's INT8 model large ----------------

@pytest.fixture(scope="module")
def embedder(export):
    """Embedding(4000, 32) → pre-LN encoder block → mean → Linear(32, 8) on 256 rows of 16 random ids."""
    feed = {"ids": np.random.default_rng(0).integers(0, 4000, (256, 16))}
    art = export("embedding_encoder", feed)
    return art, feed, calibrate(art.path, feed)


def _table(path):
    model = onnx.load(str(path))
    return next(t for t in model.graph.initializer if t.name.startswith("embed.weight"))


def test_embedding_table_is_8_bit_by_default_on_onnxruntime(embedder, tmp_path):
    art, feed, ranges = embedder
    on = quantize(art.path, ranges, tmp_path / "on.onnx", QuantizeConfig(), force=True)
    off = quantize(art.path, ranges, tmp_path / "off.onnx", QuantizeConfig(embeddings=False), force=True)
    assert _table(on.path).data_type in (onnx.TensorProto.UINT8, onnx.TensorProto.INT8)  # 1 byte per value
    assert _table(off.path).data_type == onnx.TensorProto.FLOAT
    assert any("1 embedding table(s), 0.512 MB float stored int8" in n for n in on.notes)
    assert any("kept float (--no-embeddings)" in n for n in off.notes)
    # the table holds 128,000 of ~140,600 parameters: 1.4x smaller than FP32 with it float, 3.3x with it int8
    assert art.path.stat().st_size / off.path.stat().st_size < 1.6
    assert art.path.stat().st_size / on.path.stat().st_size > 3.0
    ref, with_table, float_table = _run(art.path, feed), _run(on.path, feed), _run(off.path, feed)
    assert _cosine(ref, with_table) >= 0.999 and _cosine(ref, float_table) >= 0.999
    assert _cosine(ref, with_table) >= _cosine(ref, float_table) - 0.001
    # ONNX Runtime runs the Gather on the 8-bit rows (DQ→Gather→Q dropped): only the looked-up rows dequantized
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "runtime.onnx")
    ort.InferenceSession(str(on.path), options, providers=["CPUExecutionProvider"])
    runtime = onnx.load(str(tmp_path / "runtime.onnx"))
    tables = {t.name: t.data_type for t in runtime.graph.initializer}
    gathers = [n for n in runtime.graph.node if n.op_type == "Gather" and n.input[0] in tables]
    assert [tables[g.input[0]] for g in gathers] == [onnx.TensorProto.UINT8]


def test_tensorrt_layout_keeps_embedding_tables_float(embedder, tmp_path):
    art, _, ranges = embedder
    out = quantize(art.path, ranges, tmp_path / "trt.onnx", QuantizeConfig(target="tensorrt", embeddings=True), force=True)
    assert _table(out.path).data_type == onnx.TensorProto.FLOAT
    assert any("kept float (the tensorrt layout quantizes Conv/MatMul/Gemm inputs only)" in n for n in out.notes)
