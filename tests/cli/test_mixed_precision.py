"""`trtopt quantize --max-accuracy-drop`: the CLI keeps layers in FP32 until the bar is met."""

from __future__ import annotations

import numpy as np

from tests.helpers.cli import run


def test_max_accuracy_drop_zero_keeps_outputs_in_agreement(tmp_path, cli_env):
    assert run(["export", "tests.helpers.tiny_models:tiny_cnn", "-o", "fp32.onnx"], tmp_path, cli_env).returncode == 0
    np.save(tmp_path / "x.npy", np.random.default_rng(1).uniform(-1, 1, (32, 3, 32, 32)).astype(np.float32))
    r = run(["quantize", "fp32.onnx", "--data", "x.npy", "--method", "minmax", "--max-accuracy-drop", "0",
             "-o", "mixed.onnx"], tmp_path, cli_env)
    assert r.returncode == 0, r.stderr
    assert "mixed precision:" in r.stdout and "NOT met" not in r.stdout
    cmp = run(["compare", "fp32.onnx", "mixed.onnx", "--data", "x.npy", "--atol", "10", "--rtol", "10",
               "--min-cosine", "0"], tmp_path, cli_env)
    assert cmp.returncode == 0 and "top-1 agreement 1.000" in cmp.stdout
