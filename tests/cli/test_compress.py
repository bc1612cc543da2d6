"""`trtopt cluster` and `trtopt factorize` end to end, and their bad inputs (one line, exit 2, nothing written)."""

from __future__ import annotations

import json

import torch
from tests.helpers.cli import assert_one_line_error, run


def test_cluster_writes_file_checkpoint_and_report(tmp_path, cli_env):
    r = run(["cluster", "tests.helpers.tiny_models:tiny_cnn", "-o", "m.npz", "--bits", "3", "--json", "r.json",
             "--checkpoint-out", "m.pt"], tmp_path, cli_env)
    assert r.returncode == 0, r.stderr
    assert "storage" in r.stdout and "smaller" in r.stdout
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["file"]["file_bytes"] == (tmp_path / "m.npz").stat().st_size
    assert result["report"]["config"]["bits"] == 3
    assert all(la["distinct_values_max"] <= 8 for la in result["report"]["layers"] if la["skipped"] is None)
    from tests.helpers.tiny_models import tiny_cnn

    from trtopt.compress.share import load_shared

    decoded = load_shared(tmp_path / "m.npz", tiny_cnn())
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in decoded.state_dict().items())
    again = run(["cluster", "tests.helpers.tiny_models:tiny_cnn", "-o", "m.npz"], tmp_path, cli_env)
    assert_one_line_error(again, "already exists")


def test_factorize_writes_onnx_and_report(tmp_path, cli_env):
    r = run(["factorize", "tests.helpers.tiny_models:tiny_cnn", "-o", "f.onnx", "--energy", "0.6", "--json", "f.json",
             "--min-reduction", "0"], tmp_path, cli_env)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "f.json").read_text())
    assert result["report"]["parameters_after"] < result["report"]["parameters_before"]
    assert result["onnx"]["size_bytes"] == (tmp_path / "f.onnx").stat().st_size
    assert all(p["passed"] for p in result["onnx"]["parity"].values())


def test_bad_inputs_give_one_line_and_write_nothing(tmp_path, cli_env):
    assert_one_line_error(run(["cluster", "tests.helpers.tiny_models:tiny_cnn", "-o", "x.npz", "--bits", "9"], tmp_path, cli_env),
                          "bits=9 must be an integer in 1..8")
    assert_one_line_error(run(["factorize", "tests.helpers.tiny_models:tiny_cnn", "-o", "x.onnx", "--layer", "features.1"],
                              tmp_path, cli_env), "BatchNorm2d")
    assert_one_line_error(run(["factorize", "tests.helpers.tiny_models:tiny_cnn", "-o", "x.onnx", "--rank", "head=11"],
                              tmp_path, cli_env), "larger than it allows")
    assert_one_line_error(run(["factorize", "tests.helpers.tiny_models:tiny_cnn", "-o", "x.onnx", "--rank", "head=2",
                               "--energy", "0.5"], tmp_path, cli_env), "together")
    assert not list(tmp_path.iterdir())


def test_factorize_to_a_measured_speedup_target(tmp_path, cli_env):
    r = run(["factorize", "tests.helpers.tiny_models:tiny_cnn", "-o", "s.onnx", "--target-speedup", "0.000001", "--energies", "0.5", "0.8",
             "--iterations", "3", "--warmup", "1", "--json", "s.json", "--min-reduction", "0"], tmp_path, cli_env)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "s.json").read_text())
    assert result["latency_search"]["chosen_energy"] == 0.8
    assert result["report"]["config"]["energy"] == 0.8 and (tmp_path / "s.onnx").is_file()
