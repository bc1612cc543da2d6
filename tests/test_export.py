"""trtopt.export: PyTorch → ONNX with a dynamic batch axis, side files, fallbacks and the parity check."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import trtopt.export as export_mod
from trtopt.artifacts import inspect_onnx
from trtopt.data import random_feed
from trtopt.errors import TrtoptError
from trtopt.export import ExportConfig, check_parity, export_onnx
from trtopt.models.load import load_model

TORCHSCRIPT = ExportConfig(exporter="torchscript", opset=17)


def _torch_out(loaded, feed):
    with torch.inference_mode():
        args = [torch.from_numpy(feed[s.name]) for s in loaded.inputs]
        return loaded.module(*args).numpy()


def _ort_out(path, feed):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


@pytest.fixture(scope="module")
def cnn_export(tmp_path_factory):
    """The tiny CNN exported once with the defaults (dynamo, opset 18, dynamic batch, simplified)."""
    loaded = load_model("tests.helpers.tiny_models:tiny_cnn")
    path = tmp_path_factory.mktemp("export") / "tiny_cnn.onnx"
    return loaded, export_onnx(loaded, path)


def test_default_export_artifact_describes_the_file(cnn_export):
    _, art = cnn_export
    assert art.path.is_file()
    assert art.exporter == "dynamo"
    assert art.opset == 18
    assert art.sha256 == hashlib.sha256(art.path.read_bytes()).hexdigest()
    assert art.size_bytes == art.path.stat().st_size
    assert art.data_files == ()
    assert [(t.name, t.shape, t.dtype) for t in art.inputs] == [("input", ("batch", 3, 32, 32), "float32")]
    assert [(t.name, t.shape) for t in art.outputs] == [("output", ("batch", 10))]
    assert any("onnxslim" in n for n in art.notes)
    # the file itself carries the same facts
    model = onnx.load(str(art.path))
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_exported_model_matches_pytorch_at_several_batch_sizes(cnn_export, batch):
    loaded, art = cnn_export
    feed = random_feed(loaded.inputs, batch, seed=batch)
    np.testing.assert_allclose(_ort_out(art.path, feed), _torch_out(loaded, feed), atol=1e-4, rtol=0)


def test_export_records_passing_parity_at_batch_1_and_8(cnn_export):
    _, art = cnn_export
    assert set(art.parity) == {"batch_1", "batch_8"}
    for key, batch in (("batch_1", 1), ("batch_8", 8)):
        result = art.parity[key]
        assert result["passed"] is True
        (out,) = result["outputs"]
        assert out["output"] == "output" and out["shape"] == [batch, 10]
        assert out["max_abs_error"] <= 1e-4
    assert art.to_dict()["parity"]["batch_8"]["passed"] is True


def test_check_parity_on_the_exported_file(cnn_export):
    loaded, art = cnn_export
    feed = random_feed(loaded.inputs, 8, seed=5)
    result = check_parity(loaded, art.path, feed, ExportConfig(parity_batch_sizes=(2, 5)))
    assert set(result) == {"batch_2", "batch_5"} and all(r["passed"] for r in result.values())


def test_torchscript_exporter(tiny_cnn, tmp_path):
    art = export_onnx(tiny_cnn, tmp_path / "ts.onnx", TORCHSCRIPT)
    assert art.exporter == "torchscript" and art.opset == 17
    assert onnx.load(str(art.path)).opset_import[0].version == 17
    assert art.inputs[0].shape == ("batch", 3, 32, 32)
    feed = random_feed(tiny_cnn.inputs, 3, seed=1)
    np.testing.assert_allclose(_ort_out(art.path, feed), _torch_out(tiny_cnn, feed), atol=1e-4, rtol=0)


def test_auto_falls_back_to_torchscript_and_says_why(tiny_cnn, tmp_path, monkeypatch):
    real = export_mod._torch_export

    def dynamo_breaks(loaded, staged, config, example, dynamo):
        if dynamo:
            staged.write_bytes(b"half an onnx file")  # a failed exporter may leave debris behind
            raise RuntimeError("unsupported op aten::frobnicate")
        return real(loaded, staged, config, example, dynamo)

    monkeypatch.setattr(export_mod, "_torch_export", dynamo_breaks)
    art = export_onnx(tiny_cnn, tmp_path / "m.onnx", ExportConfig(opset=17))
    assert art.exporter == "torchscript"
    assert any("dynamo" in n and "aten::frobnicate" in n and "TorchScript" in n for n in art.notes), art.notes
    assert all(r["passed"] for r in art.parity.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_dynamo_failure_without_a_message_is_named_by_its_type(tiny_cnn, tmp_path, monkeypatch):
    real = export_mod._torch_export

    def dynamo_breaks(loaded, staged, config, example, dynamo):
        if dynamo:
            raise RuntimeError()  # str() is "": the note must not crash on its first line
        return real(loaded, staged, config, example, dynamo)

    monkeypatch.setattr(export_mod, "_torch_export", dynamo_breaks)
    art = export_onnx(tiny_cnn, tmp_path / "m.onnx", ExportConfig(opset=17))
    assert "dynamo exporter failed (RuntimeError); fell back to the TorchScript exporter" in art.notes


def test_dynamo_only_failure_suggests_torchscript(tiny_cnn, tmp_path, monkeypatch):
    calls = []

    def dynamo_breaks(loaded, staged, config, example, dynamo):
        calls.append(dynamo)
        raise RuntimeError("unsupported op aten::frobnicate")

    monkeypatch.setattr(export_mod, "_torch_export", dynamo_breaks)
    with pytest.raises(TrtoptError, match="dynamo exporter failed") as err:
        export_onnx(tiny_cnn, tmp_path / "m.onnx", ExportConfig(exporter="dynamo"))
    assert "torchscript" in str(err.value) and "aten::frobnicate" in str(err.value)
    assert "tests.helpers.tiny_models:tiny_cnn" in str(err.value)
    assert calls == [True]  # no silent fallback when dynamo was asked for
    assert list(tmp_path.iterdir()) == []


def test_both_exporters_failing_is_an_error_naming_the_model(tiny_cnn, tmp_path, monkeypatch):
    def broken(loaded, staged, config, example, dynamo):
        raise ValueError("cannot trace this")

    monkeypatch.setattr(export_mod, "_torch_export", broken)
    with pytest.raises(TrtoptError, match="TorchScript exporter failed") as err:
        export_onnx(tiny_cnn, tmp_path / "m.onnx")
    assert "tests.helpers.tiny_models:tiny_cnn" in str(err.value) and "cannot trace this" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_fixed_batch_export(tiny_cnn, tmp_path):
    config = ExportConfig(dynamic_batch=False, example_batch_size=4)
    art = export_onnx(tiny_cnn, tmp_path / "fixed.onnx", config)
    assert art.inputs[0].shape == (4, 3, 32, 32)
    assert art.outputs[0].shape == (4, 10)
    assert set(art.parity) == {"batch_4"} and art.parity["batch_4"]["passed"]
    feed = random_feed(tiny_cnn.inputs, 4, seed=2)
    np.testing.assert_allclose(_ort_out(art.path, feed), _torch_out(tiny_cnn, feed), atol=1e-4, rtol=0)


def test_external_data_always_writes_a_side_file_that_moves_with_the_model(tiny_cnn, tmp_path):
    src = tmp_path / "a"
    art = export_onnx(tiny_cnn, src / "model.onnx", ExportConfig(external_data="always"))
    data = src / "model.onnx.data"
    assert data.is_file() and data.stat().st_size > 0
    assert art.data_files == (data,)
    assert art.size_bytes == art.path.stat().st_size + data.stat().st_size
    assert sorted(p.name for p in src.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert any("model.onnx.data" in n for n in art.notes)
    feed = random_feed(tiny_cnn.inputs, 3, seed=3)
    expected = _torch_out(tiny_cnn, feed)
    np.testing.assert_allclose(_ort_out(art.path, feed), expected, atol=1e-4, rtol=0)
    # the reference to the side file is relative: both files moved together still load
    dst = tmp_path / "elsewhere"
    dst.mkdir()
    for name in ("model.onnx", "model.onnx.data"):
        shutil.move(str(src / name), str(dst / name))
    moved = inspect_onnx(dst / "model.onnx")
    assert moved.data_files == (dst / "model.onnx.data",) and moved.size_bytes == art.size_bytes
    np.testing.assert_allclose(_ort_out(dst / "model.onnx", feed), expected, atol=1e-4, rtol=0)


def test_inline_export_with_force_removes_a_stale_side_file(tiny_cnn, tmp_path):
    path = tmp_path / "model.onnx"
    export_onnx(tiny_cnn, path, ExportConfig(exporter="torchscript", opset=17, external_data="always"))
    art = export_onnx(tiny_cnn, path, ExportConfig(exporter="torchscript", opset=17, external_data="never"),
                      force=True)
    assert art.data_files == ()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    assert art.size_bytes == path.stat().st_size


@pytest.mark.parametrize("simplify", [True, False])
def test_simplify_on_and_off(tiny_cnn, tmp_path, simplify):
    # the exporter is not the point here; TorchScript keeps this fast (the default export covers dynamo)
    config = ExportConfig(exporter="torchscript", opset=17, simplify=simplify)
    art = export_onnx(tiny_cnn, tmp_path / "m.onnx", config)
    assert any("onnxslim" in n for n in art.notes) is simplify
    assert all(r["passed"] for r in art.parity.values())
    feed = random_feed(tiny_cnn.inputs, 2, seed=4)
    np.testing.assert_allclose(_ort_out(art.path, feed), _torch_out(tiny_cnn, feed), atol=1e-4, rtol=0)


def test_wrong_feed_shape_is_named_before_exporting(tiny_cnn, tmp_path):
    feed = {"input": np.zeros((2, 3, 16, 16), np.float32)}
    with pytest.raises(TrtoptError, match="'input'") as err:
        export_onnx(tiny_cnn, tmp_path / "m.onnx", TORCHSCRIPT, feed=feed)
    assert "(2, 3, 16, 16)" in str(err.value) and "3, 32, 32" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_two_input_model_exports_with_named_inputs(tmp_path):
    loaded = load_model("tests.helpers.tiny_models:two_input_mlp")
    art = export_onnx(loaded, tmp_path / "two.onnx")
    assert [(t.name, t.shape) for t in art.inputs] == [("features", ("batch", 6)), ("mask", ("batch", 6))]
    feed = random_feed(loaded.inputs, 5, seed=6)
    session = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    # fed by name, in the opposite order: the names, not positions, carry the meaning
    got = session.run(None, {"mask": feed["mask"], "features": feed["features"]})[0]
    np.testing.assert_allclose(got, _torch_out(loaded, feed), atol=1e-4, rtol=0)
    assert art.parity["batch_8"]["passed"]


def test_existing_output_is_not_overwritten_without_force(tiny_cnn, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"precious old bytes")
    with pytest.raises(TrtoptError, match="already exists") as err:
        export_onnx(tiny_cnn, path, TORCHSCRIPT)
    assert str(path) in str(err.value) and "--force" in str(err.value)
    assert path.read_bytes() == b"precious old bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_existing_side_file_alone_blocks_the_export(tiny_cnn, tmp_path):
    data = tmp_path / "model.onnx.data"
    data.write_bytes(b"someone's weights")
    with pytest.raises(TrtoptError, match="already exists") as err:
        export_onnx(tiny_cnn, tmp_path / "model.onnx", TORCHSCRIPT)
    assert "model.onnx.data" in str(err.value)
    assert data.read_bytes() == b"someone's weights"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx.data"]


def test_force_overwrites(tiny_cnn, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")
    art = export_onnx(tiny_cnn, path, TORCHSCRIPT, force=True)
    assert path.read_bytes() != b"old"
    assert inspect_onnx(path).sha256 == art.sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


@pytest.mark.parametrize("config", [ExportConfig(), TORCHSCRIPT], ids=["dynamo", "torchscript"])
def test_parity_failure_names_the_output_and_writes_nothing(tmp_path, config):
    loaded = load_model("tests.helpers.tiny_models:drifting")
    out_dir = tmp_path / "out"
    with pytest.raises(TrtoptError, match="differs from PyTorch") as err:
        export_onnx(loaded, out_dir / "drift.onnx", config)
    message = str(err.value)
    assert "'output'" in message and "tests.helpers.tiny_models:drifting" in message and "max_abs_error" in message
    assert list(out_dir.iterdir()) == []  # no model, no side file, no staging folder


def test_without_feed_random_inputs_of_the_model_specs_are_used(tiny_cnn, tmp_path):
    art = export_onnx(tiny_cnn, tmp_path / "m.onnx", TORCHSCRIPT, feed=None)
    assert art.parity["batch_8"]["outputs"][0]["shape"] == [8, 10]
    assert art.parity["batch_8"]["passed"]


def test_a_given_feed_is_used_for_the_parity_check(tiny_cnn, tmp_path):
    # 3 real samples: the batch-8 check wraps around them
    feed = random_feed(tiny_cnn.inputs, 3, seed=9)
    art = export_onnx(tiny_cnn, tmp_path / "m.onnx", TORCHSCRIPT, feed=feed)
    assert art.parity["batch_8"]["passed"] and art.parity["batch_8"]["outputs"][0]["shape"] == [8, 10]


def test_a_feed_without_the_model_input_is_named_in_the_error(tiny_cnn, tmp_path):
    feed = {"image": np.zeros((2, 3, 32, 32), np.float32)}
    with pytest.raises(TrtoptError, match="'input'") as err:
        export_onnx(tiny_cnn, tmp_path / "m.onnx", TORCHSCRIPT, feed=feed)
    assert "image" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_on_step_reports_progress(tiny_cnn, tmp_path):
    steps = []
    export_onnx(tiny_cnn, tmp_path / "m.onnx", TORCHSCRIPT, on_step=steps.append)
    assert steps[0].startswith("exporting") and "tests.helpers.tiny_models:tiny_cnn" in steps[0]
    assert any("parity" in s for s in steps) and steps[-1] == "writing"


# --- artifacts.inspect_onnx: a clear error for every way an ONNX file can be unusable ---


def test_inspect_missing_file(tmp_path):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(TrtoptError, match="does not exist") as err:
        inspect_onnx(missing)
    assert str(missing) in str(err.value)


def test_inspect_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\xff\xfe this is not a protobuf \x00\x01\x02" * 10)
    with pytest.raises(TrtoptError, match="not a readable ONNX model") as err:
        inspect_onnx(path)
    assert str(path) in str(err.value)


def test_inspect_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(TrtoptError, match="not a readable ONNX model") as err:
        inspect_onnx(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.9])
def test_inspect_truncated_onnx(cnn_export, tmp_path, fraction):
    _, art = cnn_export
    content = art.path.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(content[: int(len(content) * fraction)])
    with pytest.raises(TrtoptError, match="not a readable ONNX model") as err:
        inspect_onnx(path)
    assert str(path) in str(err.value)


def test_inspect_rejects_every_cut_near_the_end(cnn_export, tmp_path):
    """A copy interrupted in its last bytes (where the opset imports live) is not a usable model either."""
    _, art = cnn_export
    content = art.path.read_bytes()
    path = tmp_path / "cut.onnx"
    accepted = []
    for n in range(len(content) - 64, len(content)):
        path.write_bytes(content[:n])
        try:
            inspect_onnx(path)
        except TrtoptError as e:
            assert str(path) in str(e)
        else:
            accepted.append(n)
    assert accepted == []


def test_inspect_missing_external_data_names_the_side_file(tiny_cnn, tmp_path):
    art = export_onnx(tiny_cnn, tmp_path / "model.onnx",
                      ExportConfig(exporter="torchscript", opset=17, external_data="always"))
    (tmp_path / "model.onnx.data").unlink()
    with pytest.raises(TrtoptError, match="model.onnx.data") as err:
        inspect_onnx(art.path)
    assert "missing" in str(err.value)


def test_inspect_records_provenance_and_serializes(cnn_export):
    _, art = cnn_export
    again = inspect_onnx(art.path, exporter="dynamo", notes=("n",))
    assert again.sha256 == art.sha256 and again.size_bytes == art.size_bytes and again.notes == ("n",)
    d = art.to_dict()
    assert d["path"] == str(art.path) and d["inputs"][0] == {"name": "input", "shape": ["batch", 3, 32, 32],
                                                             "dtype": "float32"}
