"""Tests for trtopt.datasets (scikit-learn digits, offline) and the model trained on it, zoo:digits_cnn."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trtopt import datasets
from trtopt.datasets import DIGITS_HIGH, DIGITS_LOW, DIGITS_MEAN, DIGITS_STD, LabelledSplit, feed_source, load_dataset
from trtopt.errors import TrtoptError

ROOT = Path(__file__).resolve().parent.parent
TRAINING_JSON = ROOT / "benchmarks" / "results" / "digits_cnn_training.json"
WEIGHTS = ROOT / "trtopt" / "models" / "weights" / "digits_cnn.pt"


@pytest.fixture(scope="module")
def train() -> LabelledSplit:
    return load_dataset("digits", "train")


@pytest.fixture(scope="module")
def test() -> LabelledSplit:
    return load_dataset("digits", "test")


@pytest.fixture(scope="module")
def training_record() -> dict:
    return json.loads(TRAINING_JSON.read_text())


@pytest.fixture(scope="module")
def digits_cnn():
    from trtopt.models.load import load_model

    return load_model("zoo:digits_cnn")


def _predict_torch(loaded, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return loaded.module(torch.from_numpy(x)).argmax(1).numpy()


# --- the dataset -----------------------------------------------------------------------------------

def test_names():
    assert datasets.names() == ("digits",)


def test_splits_partition_the_1797_samples(train, test):
    assert (len(train), len(test)) == (1438, 359)
    assert len(train) + len(test) == 1797
    assert np.intersect1d(train.indices, test.indices).size == 0
    assert np.array_equal(np.union1d(train.indices, test.indices), np.arange(1797))


def test_split_is_deterministic(train, test):
    again_train, again_test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert np.array_equal(again_test.indices, test.indices)
    assert np.array_equal(again_test.inputs["input"], test.inputs["input"])
    assert np.array_equal(again_train.labels, train.labels)


def test_split_is_pinned(test, training_record):
    """The split the shipped weights were trained on is the split loaded today (numpy RNG unchanged)."""
    digest = hashlib.sha256(test.indices.tobytes()).hexdigest()
    assert digest == training_record["split_test_indices_sha256"]


def test_split_is_stratified(train, test):
    counts_all = np.bincount(np.concatenate([train.labels, test.labels]), minlength=10)
    counts_test = np.bincount(test.labels, minlength=10)
    assert (counts_test > 0).all() and (np.bincount(train.labels, minlength=10) > 0).all()
    assert np.abs(counts_test - counts_all * 0.2).max() <= 0.5  # round(count * 0.2) per class


def test_arrays_shapes_dtypes_and_labels(train, test):
    for split in (train, test):
        x = split.inputs["input"]
        assert set(split.inputs) == {"input"}
        assert x.shape == (len(split), 1, 8, 8) and x.dtype == np.float32 and x.flags.c_contiguous
        assert split.labels.dtype == np.int64 and split.labels.shape == (len(split),)
        assert split.labels.min() == 0 and split.labels.max() == 9
        assert split.classes == tuple("0123456789") and split.name == "digits"
    assert (train.split, test.split) == ("train", "test")


def test_normalization_constants_are_the_train_statistics(train, test):
    x = train.inputs["input"].astype(np.float64)
    assert abs(x.mean()) < 1e-3 and abs(x.std() - 1) < 1e-3
    raw = x * DIGITS_STD + DIGITS_MEAN  # back to [0, 1] pixels
    assert raw.min() == pytest.approx(0.0, abs=1e-6) and raw.max() == pytest.approx(1.0, abs=1e-6)
    # Test uses the train statistics, so it is only approximately standardized.
    assert abs(test.inputs["input"].mean()) < 0.1
    for split in (train, test):
        assert split.inputs["input"].min() >= DIGITS_LOW - 1e-6 and split.inputs["input"].max() <= DIGITS_HIGH + 1e-6


def test_returned_arrays_are_fresh_copies():
    first = load_dataset("digits", "test")
    first.inputs["input"][:] = 0
    first.labels[:] = 0
    second = load_dataset("digits", "test")
    assert second.inputs["input"].std() > 0.5 and second.labels.max() == 9


def test_feed_source_goes_through_load_feed(test, digits_cnn):
    from trtopt.data import load_feed

    feed = load_feed(feed_source("digits", "test"), digits_cnn.inputs)
    assert np.array_equal(feed["input"], test.inputs["input"])
    assert load_feed(test.inputs, digits_cnn.inputs, count=16)["input"].shape == (16, 1, 8, 8)


def test_unknown_dataset_and_split_name_the_valid_ones():
    with pytest.raises(TrtoptError, match="unknown dataset 'mnist'") as e:
        load_dataset("mnist", "train")
    assert "digits" in e.value.fix
    with pytest.raises(TrtoptError, match="no split 'validation'") as e:
        load_dataset("digits", "validation")
    assert "train" in e.value.fix and "test" in e.value.fix


def test_missing_scikit_learn_names_the_extra(monkeypatch):
    datasets._digits_raw.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    try:
        with pytest.raises(TrtoptError, match="scikit-learn") as e:
            load_dataset("digits", "test")
        assert "trtopt[models]" in e.value.fix
    finally:
        datasets._digits_raw.cache_clear()


def test_loading_a_dataset_imports_no_torch():
    code = ("import sys\nfrom trtopt.datasets import load_dataset\nload_dataset('digits', 'test')\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# --- zoo:digits_cnn: really trained, shipped weights -----------------------------------------------

def test_shipped_weights_are_the_recorded_training_output(training_record):
    from trtopt.files import sha256_file

    assert WEIGHTS.stat().st_size < 1_000_000
    assert sha256_file(WEIGHTS) == training_record["weights_sha256"]
    assert training_record["test_accuracy"] >= 0.97


def test_zoo_digits_cnn_reaches_97_percent_on_test(digits_cnn, test, training_record):
    assert digits_cnn.inputs[0].shape == (1, 8, 8) and digits_cnn.preprocess is None
    assert digits_cnn.inputs[0].low == DIGITS_LOW and digits_cnn.inputs[0].high == DIGITS_HIGH
    predictions = _predict_torch(digits_cnn, test.inputs["input"])
    correct = int((predictions == test.labels).sum())
    assert correct / len(test) >= 0.97
    assert abs(correct - training_record["test_correct"]) <= 1  # same weights; allow one flip across CPU kernels


def test_zoo_digits_cnn_exports_and_onnx_runtime_agrees(digits_cnn, test, tmp_path):
    import onnxruntime as ort

    from trtopt.export import export_onnx

    art = export_onnx(digits_cnn, tmp_path / "digits_cnn.onnx", feed=test.inputs)
    assert all(r["passed"] for r in art.parity.values())
    session = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    onnx_predictions = session.run(None, test.inputs)[0].argmax(1)
    torch_predictions = _predict_torch(digits_cnn, test.inputs["input"])
    assert (onnx_predictions == test.labels).mean() == (torch_predictions == test.labels).mean()
    assert np.array_equal(onnx_predictions, torch_predictions)
