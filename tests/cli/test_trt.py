"""trtopt build / bundle / trt-bench / doctor: plans and bundles without TensorRT, one-line errors where it is needed."""

from __future__ import annotations

import json
import stat

import pytest

from tests.helpers.trt_fixtures import conv_model
from trtopt.cli.main import main
from trtopt.files import sha256_file
from trtopt.trt.runtime import installed_version

NO_TRT = installed_version() is None
SHAPES = ("--minShapes", "input:1x3x8x8", "--optShapes", "input:4x3x8x8", "--maxShapes", "input:16x3x8x8")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_trt")
    return {kind: conv_model(root / f"{kind}.onnx", kind) for kind in ("fp32", "fp16", "int8")}


@pytest.fixture(scope="module")
def ranges(tmp_path_factory):
    from trtopt.artifacts import Ranges, TensorRange

    path = tmp_path_factory.mktemp("ranges") / "fp32.ranges.json"
    Ranges({"input": TensorRange(2.5, -2.5, 2.4), "y": TensorRange(6.0, -6.0, 6.0)}, "entropy", 16).save(path)
    return path


def run(capsys, *argv):
    code = main([*map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("version, flags, absent", [
    ("10.3", ["--fp16", "--noDataTransfers", "--useCudaGraph", "--useSpinWait"], ["--int8"]),
    ("11.1", ["--useCudaGraph"], ["--fp16", "--int8", "--noDataTransfers"]),
])
def test_build_plan_only_needs_no_tensorrt(capsys, models, tmp_path, version, flags, absent):
    kind, precision = ("fp32", "fp16") if version == "10.3" else ("fp16", "auto")
    engine = tmp_path / f"m{version}.engine"
    code, out, err = run(capsys, "build", models[kind], "-o", engine, "--trt-version", version, "--precision", precision,
                         *SHAPES, "--workspace", "512", "--plan-only")
    assert code == 0, err
    plan = json.loads((tmp_path / f"m{version}.engine.plan.json").read_text())
    assert plan["precision"] == "fp16" and plan["trt_version"].startswith(version)
    line = plan["trtexec"].split()
    assert "--memPoolSize=workspace:512M" in line and f"--saveEngine={engine}" in line
    assert all(f in line for f in flags) and not any(a in line for a in absent)
    assert "trtexec equivalent" in out
    assert not engine.exists()


def test_build_errors_are_one_line(capsys, models, tmp_path):
    code, _, err = run(capsys, "build", models["fp32"], "-o", tmp_path / "x.engine", "--trt-version", "11.1",
                       "--precision", "int8", *SHAPES, "--plan-only")
    assert code == 2 and err.startswith("trtopt: error: INT8 asked for fp32.onnx on TensorRT 11.1.0")
    assert err.count("\n") == 1 and "fix: quantize it first" in err
    code, _, err = run(capsys, "build", models["fp32"], "-o", tmp_path / "x.engine", "--trt-version", "10.3",
                       "--minShapes", "input:4x3x8x8", "--optShapes", "input:1x3x8x8", "--maxShapes", "input:16x3x8x8", "--plan-only")
    assert code == 2 and "is not min <= opt <= max" in err and err.count("\n") == 1
    code, _, err = run(capsys, "build", models["int8"], "-o", tmp_path / "x.engine", "--trt-version", "10.3",
                       *SHAPES, "--dla-core", "0", "--plan-only")
    assert code == 2 and "has no DLA" in err


@pytest.mark.skipif(not NO_TRT, reason="TensorRT is installed here")
def test_build_and_bench_without_tensorrt_fail_in_one_line(capsys, models, tmp_path):
    code, _, err = run(capsys, "build", models["fp32"], "-o", tmp_path / "x.engine", *SHAPES)
    assert code == 2 and "--trt-version auto needs TensorRT installed" in err and err.count("\n") == 1
    code, _, err = run(capsys, "build", models["fp32"], "-o", tmp_path / "x.engine", *SHAPES,
                       "--trt-version", "10.16")
    assert code == 2 and "pip install 'trtopt[tensorrt]'" in err and err.count("\n") == 1
    assert not (tmp_path / "x.engine").exists()
    code, _, err = run(capsys, "trt-bench", tmp_path / "x.engine")
    assert code == 2 and err.startswith("trtopt: error: trtopt trt-bench cannot run here: TensorRT is not installed")
    assert err.count("\n") == 1


def test_bundle_for_jetson(capsys, models, ranges, tmp_path):
    out = tmp_path / "bundle"
    code, _stdout, err = run(capsys, "bundle", models["fp32"], models["int8"], "-o", out, "--ranges", ranges,
                            *SHAPES, "--workspace", "256")
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    for rel, entry in manifest["files"].items():
        assert sha256_file(out / rel) == entry["sha256"], rel
    assert {"models/fp32.onnx", "models/int8.onnx", "calib/fp32.trt10.cache", "ranges/fp32.ranges.json",
            "plans/fp32.trt10.json", "plans/fp32.trt11.json", "plans/int8.trt10.json", "plans/int8.trt11.json",
            "build_trt10.sh", "build_trt11.sh", "build_trtopt.sh", "README.md"} <= set(manifest["files"])
    assert (out / "calib/fp32.trt10.cache").read_text().startswith("TRT-100300-EntropyCalibration2")
    plan10 = json.loads((out / "plans/fp32.trt10.json").read_text())
    assert plan10["int8_source"] == "calibration-cache" and plan10["onnx_path"] == "models/fp32.onnx"
    assert plan10["calib_cache"] == "calib/fp32.trt10.cache" and plan10["target"] == "jetson-orin"
    assert json.loads((out / "plans/fp32.trt11.json").read_text())["precision"] == "fp32"
    assert json.loads((out / "plans/int8.trt11.json").read_text())["int8_source"] == "qdq"
    t10 = (out / "build_trt10.sh").read_text()
    assert "--int8 --calib=calib/fp32.trt10.cache" in t10 and "--stronglyTyped" in t10
    t11 = (out / "build_trt11.sh").read_text()
    assert "--int8" not in t11 and "--fp16" not in t11 and "--calib" not in t11
    assert (out / "build_trt10.sh").stat().st_mode & stat.S_IXUSR
    assert "trtopt build models/fp32.onnx --plan plans/fp32.trt10.json" in (out / "build_trtopt.sh").read_text()
    note = next(p for p in manifest["plans"] if p["model"] == "fp32" and p["trt_version"] == "11.1.0")
    assert "Q/DQ ONNX" in note["note"]
    code, _, err = run(capsys, "bundle", models["fp32"], "-o", out)
    assert code == 2 and "exists and is not empty" in err


def test_bundle_refuses_ranges_of_another_fp32_model(capsys, models, tmp_path):
    """The 10.x cache is made from the ranges for each FP32 model: ranges calibrated on another model would give
    a cache of that model's tensor names (written without a word before)."""
    from trtopt.artifacts import Ranges, TensorRange

    other = tmp_path / "other.ranges.json"
    Ranges({"input": TensorRange(2.5, -2.5, 2.4)}, "entropy", 16, model_sha256="0" * 64).save(other)
    code, _, err = run(capsys, "bundle", models["fp32"], "-o", tmp_path / "bundle", "--ranges", other, *SHAPES)
    assert code == 2 and err.count("\n") == 1
    assert "were calibrated on another model than fp32.onnx" in err and "fix: calibrate fp32.onnx itself" in err
    assert not (tmp_path / "bundle").exists()


def test_bundle_plan_builds_from_the_bundle_folder(capsys, models, ranges, tmp_path, monkeypatch):
    out = tmp_path / "b"
    assert run(capsys, "bundle", models["fp32"], "-o", out, "--ranges", ranges, *SHAPES,
               "--target", "server")[0] == 0
    monkeypatch.chdir(out)
    from trtopt.trt.plan import BuildPlan

    plan = BuildPlan.load("plans/fp32.trt10.json")
    assert plan.trt_version == "10.16.1" and plan.onnx_sha256 == sha256_file("models/fp32.onnx")
    assert plan.calib_cache_sha256 == sha256_file("calib/fp32.trt10.cache")


def test_doctor_reports_tensorrt_cuda_and_gpus(capsys):
    code, out, _ = run(capsys, "doctor", "--json")
    found = json.loads(out)
    assert code == 0 and "tensorrt" in found and "cuda-python" in found["tensorrt"]["cuda_libraries"]
    assert "devices" in found["cuda"] and "available" in found["cuda"]
    code, out, _ = run(capsys, "doctor")
    assert "TensorRT:" in out and "GPUs (CUDA):" in out


@pytest.mark.skipif(NO_TRT is False, reason="TensorRT is installed here")
def test_torch_tensorrt_route_is_registered_and_says_what_is_missing(tiny_cnn):
    from trtopt import backends
    from trtopt.errors import TrtoptError

    backend = backends.get_backend("torch-tensorrt")
    assert backends.get_backend("torch_tensorrt") is backend and backend.capabilities.devices == ("cuda",)
    ok, reason = backend.availability()
    assert ok is False and "torch-tensorrt" in reason
    with pytest.raises(TrtoptError, match="needs the Python package 'torch_tensorrt'"):
        backend.load(tiny_cnn)
    with pytest.raises(TrtoptError, match="does not support precision 'int8'"):
        backends.check_request("torch-tensorrt", "torch", "int8", "cuda")
