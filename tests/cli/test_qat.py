"""``trtopt qat`` and the recipe's qat stage: files written, errors before training, nothing half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers.cli import assert_one_line_error, run_here
from trtopt.config import Recipe
from trtopt.errors import TrtoptError

needs_modelopt = pytest.mark.skipif(__import__("importlib").util.find_spec("modelopt") is None,
                                    reason="needs nvidia-modelopt: pip install 'trtopt[modelopt]' (CI installs it)")


def test_recipe_qat_section_rules():
    with pytest.raises(TrtoptError, match="qat stage has no train_data"):
        Recipe(model="zoo:digits_cnn", stages=("qat", "export"), qat={})
    with pytest.raises(TrtoptError, match="'qat' and 'cluster'"):
        Recipe(model="zoo:digits_cnn", stages=("qat", "cluster", "export"), qat={}, cluster={},
               train_data="dataset:digits:train")
    with pytest.raises(TrtoptError, match="qat.mode="):
        Recipe(model="zoo:digits_cnn", stages=("qat", "export"), qat={"mode": "ptq"}, train_data="dataset:digits:train")
    recipe = Recipe(model="zoo:digits_cnn", stages=("qat", "export"), train_data="dataset:digits:train",
                    qat={"mode": "qad", "training": {"max_steps": 3, "epochs": None}})
    assert recipe.qat.mode == "qad" and recipe.qat.training.max_steps == 3


def test_recipe_nested_training_merges_over_the_qat_defaults():
    from dataclasses import replace

    from trtopt.compress.config import DistillConfig, QATConfig

    # a nested block changes only what it names: QAT's own lr (1e-4) and schedule stay, not DistillConfig's
    recipe = Recipe(model="zoo:digits_cnn", stages=("qat", "export"), train_data="dataset:digits:train",
                    qat={"training": {"epochs": 2}})
    assert recipe.qat.training == replace(QATConfig().training, epochs=2)
    assert recipe.qat.training.lr == 1e-4 != DistillConfig().lr
    # an explicit null is a value: epochs null with max_steps runs by steps
    recipe = Recipe(model="zoo:digits_cnn", stages=("qat", "export"), train_data="dataset:digits:train",
                    qat={"training": {"epochs": None, "max_steps": 7, "lr": 3e-4}})
    assert (recipe.qat.training.epochs, recipe.qat.training.max_steps, recipe.qat.training.lr) == (None, 7, 3e-4)


def test_training_progress_bar_is_labelled_by_command():
    import argparse

    from trtopt.cli._training import training_progress

    for label in ("qat", "qad", "distill"):
        progress, _ = training_progress(argparse.Namespace(quiet=True), True, label)
        assert progress.columns[0].text_format == label


@needs_modelopt
def test_cli_qat_writes_both_layouts(tmp_path, capsys):
    out = tmp_path / "qat"
    result = run_here(["qat", "zoo:digits_cnn", "-o", out, "--data", "digits", "--steps", "3", "--batch-size", "64",
                       "--calibration-samples", "128"], capsys)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in out.iterdir()} == {"model.tensorrt.onnx", "model.onnxruntime.onnx", "qat.json"}
    record = json.loads((out / "qat.json").read_text())
    assert record["mode"] == "qat" and record["training"]["steps"] == 3
    assert record["training"]["best_metric"] > 0.9  # the digits CNN keeps its accuracy under fake quantization
    assert record["quantizers"]["weight"] >= 3
    # a second run refuses to overwrite
    again = run_here(["qat", "zoo:digits_cnn", "-o", out, "--data", "digits", "--steps", "1"], capsys)
    assert_one_line_error(again, "already exists")


@needs_modelopt
def test_cli_qat_rejects_bad_data_before_training(tmp_path, capsys):
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, input=np.zeros((4, 3, 8, 8), np.float32), labels=np.zeros(4, np.int64))
    out = tmp_path / "out"
    result = run_here(["qat", "zoo:digits_cnn", "-o", out, "--data", wrong, "--steps", "1"], capsys)
    assert_one_line_error(result, "input")
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, input=np.zeros((4, 1, 8, 8), np.float32))
    result = run_here(["qat", "zoo:digits_cnn", "-o", out, "--data", unlabelled, "--steps", "1"], capsys)
    assert_one_line_error(result, "no 'labels'", "--mode qad")
    assert not out.exists()


def test_cli_qat_without_modelopt_names_the_extra(tmp_path, capsys, monkeypatch):
    import trtopt._modelopt as mo

    monkeypatch.setattr(mo.importlib.util, "find_spec", lambda name: None)
    result = run_here(["qat", "zoo:digits_cnn", "-o", tmp_path / "out", "--data", "digits", "--steps", "1"], capsys)
    assert_one_line_error(result, "nvidia-modelopt", "trtopt[modelopt]")
    assert not (tmp_path / "out").exists()


@needs_modelopt
@pytest.mark.slow
def test_pipeline_qat_stage_is_compared_beside_ptq(tmp_path):
    from trtopt.pipeline import optimize

    recipe = Recipe(model="zoo:digits_cnn", data="dataset:digits:test", calibration_data="dataset:digits:train",
                    train_data="dataset:digits:train", batch_sizes=(8,), threads=2,
                    stages=("qat", "export", "calibrate", "quantize", "compare"), int8_targets=("onnxruntime", "tensorrt"),
                    qat={"calibration_samples": 128, "training": {"max_steps": 4, "epochs": None, "batch_size": 64}})
    report, _ = optimize(recipe, tmp_path / "run")
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"model.qat.onnxruntime.onnx", "model.qat.tensorrt.onnx"} <= names
    accuracy = report["task_accuracy"]["values"]
    assert {"qat-int8-onnxruntime", "qat-int8-tensorrt-qdq", "onnxruntime-int8", "tensorrt-int8-qdq"} <= set(accuracy)
    assert accuracy["qat-int8-tensorrt-qdq"] > accuracy["pytorch-fp32"] - 0.03
    assert report["compression"]["qat"]["mode"] == "qat"
    again, _ = optimize(recipe, tmp_path / "run")
    assert again["stages"]["qat"]["status"] == "reused"
