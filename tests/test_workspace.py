"""calibration/ and engines/: the default homes of calibration artifacts and engines written outside a run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers.cli import run
from tests.helpers.trt_fixtures import conv_model
from trtopt import workspace


def test_default_names_say_model_version_and_gpu():
    assert str(workspace.calibration_ranges_path("models/ResNet 18.onnx")) == "calibration/resnet-18.ranges.json"
    assert str(workspace.calibration_cache_path("m.onnx", "10.3.0")) == "calibration/m.trt10.3.0.cache"
    assert str(workspace.engine_path("out/m_int8.onnx", "10.3.0", "NVIDIA H200")) == "engines/m_int8_trt10.3.0_nvidia-h200.engine"
    assert str(workspace.engine_path("m.onnx", "11.1.0", None)) == "engines/m_trt11.1.0.engine"
    assert str(workspace.data_manifest_path("calibration/m.ranges.json")) == "calibration/m.data.json"
    assert str(workspace.data_manifest_path("r.json")) == "r.data.json"


@pytest.fixture
def fp32(tmp_path, cli_env):
    conv_model(tmp_path / "fp32.onnx", "fp32")
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    return tmp_path, cli_env


def test_calibrate_without_output_writes_ranges_cache_and_manifest_under_calibration(fp32):
    work, env = fp32
    r = run(["calibrate", "fp32.onnx", "--data", "calib.npy", "--method", "minmax", "--cache"], work, env)
    assert r.returncode == 0, r.stderr
    ranges = json.loads((work / "calibration" / "fp32.ranges.json").read_text())
    manifest = json.loads((work / "calibration" / "fp32.data.json").read_text())
    assert manifest["format"] == workspace.DATA_MANIFEST_FORMAT
    assert manifest["data"] == "calib.npy" and manifest["samples"] == ranges["samples"] == 8
    assert manifest["data_sha256"] == ranges["data_sha256"] and manifest["model_sha256"] == ranges["model_sha256"]
    assert (work / "calibration" / "fp32.trt10.3.0.cache").read_text().startswith("TRT-100300-MinMaxCalibration\n")
    again = run(["calibrate", "fp32.onnx", "--data", "calib.npy"], work, env)  # never overwritten silently
    assert again.returncode == 2 and "already exists" in again.stderr


def test_build_plan_only_without_output_writes_under_engines(fp32):
    work, env = fp32
    r = run(["build", "fp32.onnx", "--trt-version", "10.3", "--minShapes", "input:1x3x8x8", "--optShapes", "input:2x3x8x8", "--maxShapes", "input:4x3x8x8", "--plan-only"],
            work, env)
    assert r.returncode == 0, r.stderr
    plan = json.loads((work / "engines" / "fp32_trt10.3.0.plan.json").read_text())
    assert "--saveEngine=engines/fp32_trt10.3.0.engine" in plan["trtexec"]
