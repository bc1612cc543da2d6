"""trtopt.measure.bench: candidates on backends, timed side by side; outputs over a whole feed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from trtopt.data import random_feed
from trtopt.errors import TrtoptError
from trtopt.export import ExportConfig, export_onnx
from trtopt.measure.bench import (
    bench,
    default_output_path,
    onnx_candidate,
    onnx_input_specs,
    open_candidate,
    run_all,
    torch_candidate,
)
from trtopt.measure.profile import TimingConfig
from trtopt.models.inputs import parse_declarations
from trtopt.models.load import load_model

TIMING = TimingConfig(warmup_iterations=1, iterations=5, bootstrap_samples=200)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    loaded = load_model("tests.helpers.tiny_models:tiny_cnn")
    path = tmp_path_factory.mktemp("bench") / "tiny_cnn.onnx"
    return loaded, export_onnx(loaded, path, ExportConfig(exporter="torchscript", opset=17))


def _symbolic_axis_onnx(path: Path) -> Path:
    """Relu over input "tokens" of shape (batch, seq, 4): a symbolic non-batch axis."""
    inp = helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", "seq", 4])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["tokens"], ["out"])], "g", [inp], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_bench_torch_against_onnx(exported):
    loaded, art = exported
    candidates = [torch_candidate(loaded), onnx_candidate(art)]
    feed = random_feed(loaded.inputs, 4, seed=0)
    progress = []
    result = bench(candidates, feed, [1, 4], TIMING, on_progress=lambda *a: progress.append(a))
    assert result["baseline"] == "pytorch-fp32"
    assert [c["name"] for c in result["candidates"]] == ["pytorch-fp32", "tiny_cnn.onnx"]
    assert [p["batch_size"] for p in result["per_batch"]] == [1, 4]
    for per_batch in result["per_batch"]:
        stats = per_batch["candidates"]
        assert set(stats) == {"pytorch-fp32", "tiny_cnn.onnx"}
        assert "speedup_vs_baseline" not in stats["pytorch-fp32"]
        speed = stats["tiny_cnn.onnx"]["speedup_vs_baseline"]
        assert speed["speedup_ci_low"] <= speed["speedup"] <= speed["speedup_ci_high"]
        expected = stats["pytorch-fp32"]["latency_ms_p50"] / stats["tiny_cnn.onnx"]["latency_ms_p50"]
        assert speed["speedup"] == pytest.approx(expected)
        for s in stats.values():
            assert s["iterations"] == 5 and s["latency_ms_p50"] > 0
            assert s["batch_size"] == per_batch["batch_size"]
    assert progress and {label for label, _, _ in progress} == {"timing batch 1", "timing batch 4"}
    for c in candidates:
        c.runner.close()


def test_candidates_describe_their_size(exported):
    loaded, art = exported
    torch_c, onnx_c = torch_candidate(loaded), onnx_candidate(art, name="exported")
    params = sum(p.numel() for p in loaded.module.parameters())
    assert torch_c.parameters == params
    tensors = [*loaded.module.parameters(), *loaded.module.buffers()]  # BatchNorm statistics ship too
    assert torch_c.size_bytes == sum(t.numel() * t.element_size() for t in tensors)
    assert onnx_c.size_bytes == art.size_bytes == art.path.stat().st_size
    d_torch, d_onnx = torch_c.describe(), onnx_c.describe()
    assert d_torch["backend"] == "torch" and d_torch["size_bytes"] == torch_c.size_bytes
    assert d_onnx == {**d_onnx, "name": "exported", "backend": "onnxruntime", "precision": "fp32",
                      "size_bytes": art.size_bytes, "source": str(art.path)}
    assert d_onnx["runner"]["backend"] == "onnxruntime"


def test_bench_refuses_duplicate_names(exported):
    loaded, art = exported
    a, b = torch_candidate(loaded, name="same"), onnx_candidate(art, name="same")
    with pytest.raises(TrtoptError, match="repeat") as err:
        bench([a, b], random_feed(loaded.inputs, 2), [1], TIMING)
    assert "same" in str(err.value)


def test_bench_refuses_empty_list(tiny_cnn):
    with pytest.raises(TrtoptError, match="nothing to benchmark"):
        bench([], random_feed(tiny_cnn.inputs, 2), [1], TIMING)


@pytest.mark.parametrize("batch_size", [4, 5, 13])
def test_run_all_returns_every_sample(exported, batch_size):
    loaded, art = exported
    feed = random_feed(loaded.inputs, 11, seed=3)  # 11 is not a multiple of the batch size
    onnx_out = run_all(onnx_candidate(art), feed, batch_size=batch_size)
    torch_out = run_all(torch_candidate(loaded), feed, batch_size=batch_size)
    assert onnx_out["output"].shape == (11, 10) and torch_out["output"].shape == (11, 10)
    with torch.inference_mode():
        expected = loaded.module(torch.from_numpy(feed["input"])).numpy()
    np.testing.assert_allclose(torch_out["output"], expected, atol=1e-5)
    np.testing.assert_allclose(onnx_out["output"], expected, atol=1e-4)


def test_open_candidate_onnx_file(exported):
    _, art = exported
    c = open_candidate(str(art.path), threads=1)
    assert c.backend == "onnxruntime" and c.name == "tiny_cnn.onnx" and c.size_bytes == art.size_bytes
    assert [(s.name, s.shape, s.dtype) for s in c.inputs] == [("input", (3, 32, 32), "float32")]
    assert c.runner.describe()["intra_op_threads"] == 1
    assert c.artifact["sha256"] == art.sha256


def test_open_candidate_model_spec():
    c = open_candidate("tests.helpers.tiny_models:tiny_cnn")
    assert c.backend == "torch" and c.name == "tests.helpers.tiny_models:tiny_cnn" and c.source == "tests.helpers.tiny_models:tiny_cnn"
    assert [(s.name, s.shape) for s in c.inputs] == [("input", (3, 32, 32))]
    out = c.runner.infer(random_feed(c.inputs, 2))
    assert out["output"].shape == (2, 10)


def test_open_candidate_missing_onnx_names_the_file(tmp_path):
    missing = tmp_path / "absent.onnx"
    with pytest.raises(TrtoptError, match="does not exist") as err:
        open_candidate(str(missing))
    assert str(missing) in str(err.value)


def test_symbolic_non_batch_axis_needs_an_input_shape(tmp_path):
    path = _symbolic_axis_onnx(tmp_path / "seq.onnx")
    symbolic = open_candidate(str(path))
    assert [(s.name, s.shape) for s in symbolic.inputs] == [("tokens", ("seq", 4))]  # data gives the length
    with pytest.raises(TrtoptError, match="'tokens'") as err:
        random_feed(symbolic.inputs, 3)
    assert "--input-shape tokens:1xSEQx4" in str(err.value)
    c = open_candidate(str(path), inputs=parse_declarations(["tokens:1x7x4"]))
    assert [(s.name, s.shape) for s in c.inputs] == [("tokens", (7, 4))]
    feed = random_feed(c.inputs, 3, seed=1)
    out = run_all(c, feed, batch_size=2)["out"]
    np.testing.assert_array_equal(out, np.maximum(feed["tokens"], 0))


def test_onnx_input_specs_of_an_exported_model(tmp_path):
    loaded = load_model("tests.helpers.tiny_models:two_input_mlp")
    art = export_onnx(loaded, tmp_path / "two.onnx", ExportConfig(exporter="torchscript", opset=17))
    specs = onnx_input_specs(art)
    assert [(s.name, s.shape, s.dtype) for s in specs] == [("features", (6,), "float32"), ("mask", (6,), "float32")]
    override = onnx_input_specs(art, parse_declarations(["mask:1x3"]))
    assert [s.shape for s in override] == [(6,), (3,)]


@pytest.mark.parametrize("spec, expected", [
    ("torchvision:resnet18", "resnet18.onnx"),
    ("tests.helpers.tiny_models:tiny_cnn", "tiny_cnn.onnx"),
    ("timm:mobilenetv3_small_100", "mobilenetv3_small_100.onnx"),
    ("checkpoints/net.pt", "net.onnx"),
    ("models/exported.onnx", "exported.onnx"),
])
def test_default_output_path(spec, expected, tmp_path):
    assert default_output_path(spec) == Path(expected)
    assert default_output_path(spec, tmp_path / "engines") == tmp_path / "engines" / expected
