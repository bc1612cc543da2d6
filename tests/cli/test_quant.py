"""`trtopt calibrate | quantize | cache` end to end, and their bad inputs (one line, exit 2, nothing written)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers.cli import assert_one_line_error, run


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    from tests.helpers.env import cli_environment

    work = tmp_path_factory.mktemp("int8cli")
    env = cli_environment()
    r = run(["export", "tests.helpers.tiny_models:tiny_cnn", "-o", "fp32.onnx"], work, env)
    assert r.returncode == 0, r.stderr
    rng = np.random.default_rng(0)
    np.save(work / "calib.npy", rng.uniform(-1, 1, (24, 3, 32, 32)).astype(np.float32))
    return work, env


def test_calibrate_writes_ranges_and_cache(fp32):
    work, env = fp32
    r = run(["calibrate", "fp32.onnx", "--data", "calib.npy", "--method", "minmax", "-o", "ranges.json",
             "--cache", "calib.cache"], work, env)
    assert r.returncode == 0, r.stderr
    ranges = json.loads((work / "ranges.json").read_text())
    assert ranges["method"] == "minmax" and ranges["samples"] == 24
    assert ranges["tensors"]["input"]["amax"] == pytest.approx(float(np.abs(np.load(work / "calib.npy")).max()), rel=1e-6)
    assert (work / "calib.cache").read_text().startswith("TRT-100300-MinMaxCalibration\n")
    inspect = run(["cache", "inspect", "calib.cache", "--onnx", "fp32.onnx", "--json"], work, env)
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)["tensor_count"] == len(ranges["tensors"])


def test_quantize_from_ranges_for_both_targets(fp32):
    work, env = fp32
    assert run(["calibrate", "fp32.onnx", "--data", "calib.npy", "-o", "r2.json"], work, env).returncode == 0
    for target in ("onnxruntime", "tensorrt"):
        r = run(["quantize", "fp32.onnx", "--ranges", "r2.json", "--target", target, "-o", f"{target}.onnx",
                 "--json", f"{target}.json"], work, env)
        assert r.returncode == 0, r.stderr
        record = json.loads((work / f"{target}.json").read_text())
        assert record["precision"] == "int8" and record["metadata"]["trtopt.quantize.target"] == target
    cmp = run(["compare", "fp32.onnx", "onnxruntime.onnx", "--data", "calib.npy", "--atol", "0.5", "--rtol", "0.5",
               "--min-cosine", "0.99"], work, env)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr


def test_cache_round_trip_via_cli(fp32):
    work, env = fp32
    assert run(["calibrate", "fp32.onnx", "--data", "calib.npy", "-o", "r3.json"], work, env).returncode == 0
    assert run(["cache", "from-ranges", "r3.json", "-o", "c3.cache"], work, env).returncode == 0
    assert run(["cache", "to-ranges", "c3.cache", "-o", "r3back.json"], work, env).returncode == 0
    a = json.loads((work / "r3.json").read_text())["tensors"]
    b = json.loads((work / "r3back.json").read_text())["tensors"]
    assert set(a) == set(b)
    for name in a:  # exact at the cache's float32 scale precision
        assert np.float32(b[name]["amax"] / 127) == np.float32(a[name]["amax"] / 127)
    other = run(["cache", "inspect", "c3.cache", "--trt-version", "10.16.0"], work, env)
    assert other.returncode == 0 and "warning:" in other.stdout and "10.16" in other.stdout


def test_empty_calibration_set(fp32):
    work, env = fp32
    np.save(work / "empty.npy", np.zeros((0, 3, 32, 32), np.float32))
    r = run(["calibrate", "fp32.onnx", "--data", "empty.npy", "-o", "e.json"], work, env)
    assert_one_line_error(r, "no samples")
    assert not (work / "e.json").exists()


def test_nan_calibration_data(fp32):
    work, env = fp32
    x = np.zeros((4, 3, 32, 32), np.float32)
    x[2, 1, 3, 3] = np.inf
    np.save(work / "inf.npy", x)
    r = run(["calibrate", "fp32.onnx", "--data", "inf.npy", "-o", "n.json"], work, env)
    assert_one_line_error(r, "NaN or inf")
    assert not (work / "n.json").exists()


def test_wrong_shape_and_dtype_calibration_data(fp32):
    work, env = fp32
    np.save(work / "shape.npy", np.zeros((4, 3, 16, 16), np.float32))
    r = run(["calibrate", "fp32.onnx", "--data", "shape.npy", "-o", "s.json"], work, env)
    assert_one_line_error(r, "'input'", "(4, 3, 16, 16)")
    np.save(work / "text.npy", np.array([["a"] * 32] * 32, dtype="U1").reshape(1, 32, 32).repeat(3, 0)[None])
    r = run(["calibrate", "fp32.onnx", "--data", "text.npy", "-o", "t.json"], work, env)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "'input'" in r.stderr
    assert not (work / "s.json").exists() and not (work / "t.json").exists()


def test_model_without_quantizable_layers(fp32, tmp_path):
    import onnx

    work, env = fp32
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(tmp_path / "relu.onnx"))
    r = run(["quantize", "relu.onnx", "-o", "q.onnx"], tmp_path, env)
    assert_one_line_error(r, "no quantizable layers")
    assert not (tmp_path / "q.onnx").exists()


def test_unreadable_cache(fp32):
    work, env = fp32
    (work / "bad.cache").write_bytes(b"\x00\x01garbage\xff")
    r = run(["cache", "inspect", "bad.cache"], work, env)
    assert_one_line_error(r, "bad.cache")
    (work / "bad2.cache").write_text("TRT-100300-EntropyCalibration2\ninput: nothex!\n")
    r = run(["cache", "to-ranges", "bad2.cache", "-o", "x.json"], work, env)
    assert_one_line_error(r, "bad2.cache", "line 2")
    assert not (work / "x.json").exists()


def test_unknown_exclude_and_existing_output(fp32):
    work, env = fp32
    assert run(["calibrate", "fp32.onnx", "--data", "calib.npy", "-o", "r4.json"], work, env).returncode == 0
    r = run(["quantize", "fp32.onnx", "--ranges", "r4.json", "--exclude", "Nonexistent", "-o", "x.onnx"], work, env)
    assert_one_line_error(r, "Nonexistent")
    r = run(["quantize", "fp32.onnx", "--ranges", "r4.json", "-o", "fp32.onnx", "--force"], work, env)
    assert_one_line_error(r, "fp32.onnx", "is also an input")  # an input is never overwritten, --force or not
    r = run(["quantize", "fp32.onnx", "--ranges", "r4.json", "-o", "r4.json"], work, env)
    assert_one_line_error(r, "-o r4.json", "ends in .onnx")  # named for another kind of file: refused first


def test_calibrate_defaults_to_auto_and_says_what_it_chose(fp32):
    work, env = fp32
    r = run(["calibrate", "fp32.onnx", "--data", "calib.npy", "-o", "auto.json", "--force"], work, env)
    assert r.returncode == 0, r.stderr
    ranges = json.loads((work / "auto.json").read_text())
    choice = ranges["choice"]
    assert ranges["method"] == "auto" and choice["scored"] and choice["held_out"] and choice["scoring_samples"] == 3
    assert f"ranges: auto chose {choice['model_method']} (output SQNR vs FP32 on 3 held-out samples" in r.stdout
    for c in choice["candidates"]:
        assert f"{c['method']} {c['sqnr_db']:.1f}" in r.stdout


@pytest.fixture(scope="module")
def tiny_int8(tmp_path_factory):
    """The tiny CNN's FP32 ONNX, ranges and INT8 (onnxruntime layout) ONNX, made through the API."""
    from tests.helpers.tiny_artifacts import make_tiny_artifacts
    from trtopt.artifacts import Ranges
    from trtopt.quant.quantize import QuantizeConfig, quantize

    made = make_tiny_artifacts(tmp_path_factory.mktemp("int8"))
    made["int8"] = quantize(made["onnx"], Ranges.load(made["ranges"]), made["onnx"].with_name("int8.onnx"),
                            QuantizeConfig()).path
    return made


@pytest.mark.parametrize("args, needle", [
    (["calibrate", "int8.onnx", "-o", "out.json"], "int8.onnx is already INT8"),
    (["quantize", "int8.onnx", "--ranges", "ranges.json", "-o", "out.onnx"], "int8.onnx is already INT8"),
    (["quantize", "tiny.onnx", "--ranges", "ranges.json", "--max-accuracy-drop", "nan", "-o", "out.onnx"],
     "max_accuracy_drop=nan"),
    (["quantize", "tiny.onnx", "--ranges", "ranges.json", "--max-accuracy-drop", "2", "-o", "out.onnx"],
     "max_accuracy_drop=2.0"),
    (["quantize", "tiny.onnx", "--precision", "fp16", "--ranges", "ranges.json", "-o", "out.onnx"],
     "--ranges applies to INT8"),
    (["quantize", "tiny.onnx", "--precision", "fp16", "--data", "random", "-o", "out.onnx"], "--data applies to INT8"),
    # the fix names the model's own layers (it named a --list-nodes flag that does not exist)
    (["quantize", "tiny.onnx", "--ranges", "ranges.json", "--exclude", "nosuch", "-o", "out.onnx"],
     "fix: give a node name (tiny.onnx has e.g. node_Conv"),
])
def test_quantize_refuses_what_it_would_get_wrong(args, needle, tiny_int8, tmp_path, monkeypatch, capsys):
    """An INT8 model calibrated or quantized again, a drop bar that is NaN or a percentage, and INT8-only flags
    with --precision fp16 (silently ignored before) are one-line errors that write nothing."""
    import shutil

    from tests.helpers.cli import run_here

    for path in tiny_int8.values():
        shutil.copy(path, tmp_path / path.name)
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run_here(args, capsys), needle)
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "out.json").exists()


def test_fp16_writes_its_json_record(tiny_int8, tmp_path, monkeypatch, capsys):
    """--json with --precision fp16 writes the record (it was checked, then never written)."""
    from tests.helpers.cli import run_here

    monkeypatch.chdir(tmp_path)
    result = run_here(["quantize", str(tiny_int8["onnx"]), "--precision", "fp16", "-o", "half.onnx", "--json", "half.json"],
                      capsys)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "half.json").read_text())["precision"] == "fp16"


def test_keep_first_layer_fp32_is_checked_before_calibrating(tiny_int8, tmp_path, monkeypatch, capsys):
    """A third-party ONNX with unnamed nodes: the first-layer check ran inside calibration on random data, and its
    fix was replaced by "pass real inputs with --data" (which fails too)."""
    import onnx

    from tests.helpers.cli import run_here

    model = onnx.load(str(tiny_int8["onnx"]))
    for node in model.graph.node:
        node.name = ""
    onnx.save(model, str(tmp_path / "unnamed.onnx"))
    monkeypatch.chdir(tmp_path)
    r = run_here(["quantize", "unnamed.onnx", "--keep-first-layer-fp32", "-o", "out.onnx"], capsys)
    assert_one_line_error(r, "no node name (Conv)", "drop --keep-first-layer-fp32")
    assert not (tmp_path / "out.onnx").exists()
