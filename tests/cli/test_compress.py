"""`trtopt cluster` and `trtopt factorize` end to end, and their bad inputs (one line, exit 2, nothing written)."""

from __future__ import annotations

import json

import pytest
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
             "--min-reduction", "0", "--min-rank", "1"], tmp_path, cli_env)
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
    # a window this wide takes the first step (kept energy 0.9), whatever the timing noise
    r = run(["factorize", "tests.helpers.tiny_models:tiny_cnn", "-o", "s.onnx", "--target-speedup", "1.01", "--tolerance", "0.99",
             "--iterations", "3", "--warmup", "1", "--json", "s.json", "--min-reduction", "0", "--min-rank", "1"], tmp_path, cli_env)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "s.json").read_text())
    search = result["speedup_search"]
    assert search["reached"] and search["knob"] == "energy" and search["chosen_strength"] == 0.1
    assert [s["energy"] for s in search["steps"]] == [0.9] and search["steps"][0]["chosen"]
    assert result["report"]["config"]["energy"] == 0.9 and (tmp_path / "s.onnx").is_file()
    assert "target 1.01× ± 99% reached" in r.stdout


def test_a_missed_speedup_target_keeps_the_closest_model_warns_and_exits_1(tmp_path, cli_env):
    r = run(["factorize", "tests.helpers.tiny_models:tiny_cnn", "-o", "s.onnx", "--target-speedup", "1000",
             "--iterations", "3", "--warmup", "1", "--json", "s.json", "--min-reduction", "0", "--min-rank", "1"], tmp_path, cli_env)
    assert r.returncode == 1, r.stderr
    warnings = [line for line in r.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "target 1000.0× ± 10% not reached" in warnings[0]
    search = json.loads((tmp_path / "s.json").read_text())["speedup_search"]
    assert not search["reached"]
    best = max(s["speedup"] for s in search["steps"])
    assert f"best measured speedup {best:.2f}×" in warnings[0]
    assert (tmp_path / "s.onnx").is_file()  # the closest candidate is written for inspection
    assert_one_line_error(run(["factorize", "tests.helpers.tiny_models:tiny_cnn", "-o", "x.onnx", "--target-speedup", "0.5"],
                              tmp_path, cli_env), "target_speedup=0.5 must be a number > 1")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_cluster_reports_fidelity_on_data_and_mixed_bits(tmp_path, cli_env):
    r = run(["cluster", "zoo:digits_cnn", "-o", "m.npz", "--data", "dataset:digits:test", "--labels",
             "--target-ratio", "5", "--granularity", "auto", "--json", "r.json"], tmp_path, cli_env)
    assert r.returncode == 0, r.stderr
    assert "fidelity on dataset:digits:test (359 samples): top1 agreement" in r.stdout and "mixed bits: target met" in r.stdout
    assert "per-channel codebooks: " in r.stdout and "left FP32 (no codebook worth its error): " in r.stdout
    report = json.loads((tmp_path / "r.json").read_text())["report"]
    assert report["compression_ratio"] >= 5.0 and report["bit_choice"]["target_met"]
    assert report["fidelity"]["metric"] == "top1_agreement" and report["fidelity"]["samples"] == 359
    choice = report["bit_choice"]
    # first layer protected: FP32 or at least 8 bits; every shared layer has its granularity
    assert "conv1" in choice["unshared"] or choice["layer_bits"]["conv1"] == 8
    assert set(choice["layer_granularity"]) == set(choice["layer_bits"]) and set(choice["layer_granularity"].values()) <= {"layer", "channel"}


def test_cluster_without_data_says_fidelity_was_not_measured_and_needs_data_to_fine_tune(tmp_path, cli_env):
    r = run(["cluster", "tests.helpers.tiny_models:tiny_cnn", "-o", "m.npz"], tmp_path, cli_env)
    assert r.returncode == 0 and "fidelity: not measured" in r.stdout
    assert_one_line_error(run(["cluster", "tests.helpers.tiny_models:tiny_cnn", "-o", "x.npz", "--finetune-steps", "5"],
                              tmp_path, cli_env), "need real data")
    assert_one_line_error(run(["cluster", "tests.helpers.tiny_models:tiny_cnn", "-o", "x.npz", "--target-ratio", "0.5",
                               "--data", "random"], tmp_path, cli_env), "target_ratio")
    # random inputs are not "no --data": the error said so although --data random was given
    assert_one_line_error(run(["cluster", "tests.helpers.tiny_models:tiny_cnn", "-o", "x.npz", "--max-accuracy-drop",
                               "0.01", "--data", "random"], tmp_path, cli_env), "--data random is made-up inputs")
    assert_one_line_error(run(["cluster", "tests.helpers.tiny_models:tiny_cnn", "-o", "x.npz", "--granularity", "auto"],
                              tmp_path, cli_env), "granularity='auto' is chosen per layer by mixed allocation")
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.slow
def test_factorize_then_distill_in_one_command_recovers_held_out_fidelity(tmp_path, cli_env):
    r = run(["factorize", "zoo:digits_cnn", "-o", "f.onnx", "--energy", "0.7", "--data", "dataset:digits:test",
             "--train-data", "dataset:digits:train", "--labels", "--distill-steps", "15", "--lr", "1e-3",
             "--distill-batch-size", "32", "--json", "f.json", "--min-rank", "1"], tmp_path, cli_env)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "f.json").read_text())["report"]
    assert report["distill"]["steps"] == 15 and report["fidelity"]["samples"] == 359
    assert report["fidelity_distilled"]["value"] > report["fidelity"]["value"] + 0.1
    assert "after distillation on dataset:digits:test" in r.stdout


def test_factorize_distillation_keeps_the_original_batchnorm_statistics(tmp_path, capsys, monkeypatch):
    # the benchmark and cluster froze them; factorize --distill-steps re-estimated them from 4-sample batches
    import numpy as np

    import trtopt.compress.distill as distill_module
    from tests.helpers.cli import run_here

    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "train.npz", input=np.random.default_rng(0).uniform(-1, 1, (8, 3, 32, 32)).astype(np.float32))
    seen = {}
    real = distill_module.distill

    def recording(student, teacher, data, config, **kw):
        bns = [m for m in student.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        before = [bn.running_mean.clone() for bn in bns]
        run = real(student, teacher, data, config, **kw)
        seen["unchanged"] = [torch.equal(bn.running_mean, b) for bn, b in zip(bns, before)]
        return run

    monkeypatch.setattr(distill_module, "distill", recording)
    r = run_here(["factorize", "tests.helpers.tiny_models:tiny_cnn", "-o", "f.onnx", "--energy", "0.9",
                  "--min-rank", "1", "--data", "train.npz", "--distill-steps", "3", "--distill-batch-size", "4",
                  "--lr", "1e-2"], capsys)
    assert r.returncode == 0, r.stderr
    assert seen["unchanged"] and all(seen["unchanged"])
