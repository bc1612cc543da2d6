"""Labelled real datasets that ship inside Python packages, so accuracy checks run offline.

``digits``  scikit-learn's handwritten digits (``sklearn.datasets.load_digits``): 1,797 real 8×8 grey
            images of the digits 0-9 (UCI "Optical Recognition of Handwritten Digits", test part).
            Splits ``train`` (1,438) and ``test`` (359): stratified 80/20, fixed seed, the same on
            every machine. Images are float32 ``(N, 1, 8, 8)``: pixels (0-16) scaled to [0, 1], then
            normalized with the *train* split's mean and std, which are stored here as constants
            (:data:`DIGITS_MEAN`, :data:`DIGITS_STD`) so training, evaluation and inference agree.

A split's ``inputs`` is a feed (input name → array, samples on axis 0), so it goes straight into
`trtopt.data.load_feed`, calibration and the backends::

    split = load_dataset("digits", "test")
    feed = load_feed(split.inputs, loaded.inputs)      # loaded = load_model("zoo:digits_cnn")
    accuracy = (logits.argmax(1) == split.labels).mean()

scikit-learn comes with the ``models`` extra; this module imports neither torch nor scikit-learn until
a dataset is loaded.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from trtopt.errors import TrtoptError, missing_dependency

SPLITS = ("train", "test")
DIGITS_INPUT_NAME = "input"
DIGITS_SEED = 0
DIGITS_TEST_FRACTION = 0.2
# Mean and std of the train split's pixels after scaling to [0, 1] (all pixels, one channel);
# tests/test_datasets.py recomputes them from the data.
DIGITS_MEAN = 0.30548
DIGITS_STD = 0.37611
# Range of normalized pixels: (0 - mean) / std ≈ -0.812 and (1 - mean) / std ≈ 1.847.
DIGITS_LOW = (0.0 - DIGITS_MEAN) / DIGITS_STD
DIGITS_HIGH = (1.0 - DIGITS_MEAN) / DIGITS_STD


@dataclass(frozen=True)
class LabelledSplit:
    """One split of a labelled dataset.

    Attributes:
        inputs: the feed: input name → array with samples on axis 0 (``{"input": (N, 1, 8, 8) float32}``).
        labels: class index per sample, int64, shape (N,).
        name: dataset name ("digits").
        split: split name ("train", "test").
        classes: class names, indexed by label.
        indices: each sample's index in the source dataset's own order (int64, shape (N,)).
    """

    inputs: dict[str, np.ndarray]
    labels: np.ndarray
    name: str
    split: str
    classes: tuple[str, ...]
    indices: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def names() -> tuple[str, ...]:
    """The dataset names."""
    return tuple(sorted(_LOADERS))


def load_dataset(name: str, split: str) -> LabelledSplit:
    """Load split ``split`` ("train" or "test") of dataset ``name`` (see module docstring).

    Deterministic: the same arrays in the same order on every call and machine. The arrays are fresh
    copies, so callers may modify them.

    Raises:
        TrtoptError: unknown dataset or split; scikit-learn not installed.
    """
    if name not in _LOADERS:
        raise TrtoptError(f"unknown dataset {name!r}", f"choose one of {', '.join(names())}")
    if split not in SPLITS:
        raise TrtoptError(f"dataset {name!r} has no split {split!r}", f"choose one of {', '.join(SPLITS)}")
    return _LOADERS[name](split)


def feed_source(name: str, split: str) -> dict[str, np.ndarray]:
    """The inputs of a split as a feed, for `trtopt.data.load_feed` and anything else taking a feed."""
    return load_dataset(name, split).inputs


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices: per class, ``round(count * test_fraction)`` samples chosen at random
    (numpy PCG64 seeded with ``seed``, classes in ascending order) go to test, the rest to train."""
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        n_test = int(round(len(members) * test_fraction))
        test.append(rng.permutation(members)[:n_test])
    test_idx = np.sort(np.concatenate(test)).astype(np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels), dtype=np.int64), test_idx)
    return train_idx, test_idx


@functools.lru_cache(maxsize=1)
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 images scaled to [0, 1] (float32, (N, 8, 8)) and their labels (int64)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise missing_dependency("scikit-learn", "models", "the digits dataset") from e
    bunch = load_digits()
    images = (np.asarray(bunch.images, dtype=np.float64) / 16.0).astype(np.float32)
    labels = np.asarray(bunch.target, dtype=np.int64)
    for array in (images, labels):
        array.setflags(write=False)  # cached: callers get copies
    return images, labels


def _digits(split: str) -> LabelledSplit:
    images, labels = _digits_raw()
    train_idx, test_idx = stratified_split(labels, DIGITS_TEST_FRACTION, DIGITS_SEED)
    idx = train_idx if split == "train" else test_idx
    x = ((images[idx] - np.float32(DIGITS_MEAN)) / np.float32(DIGITS_STD)).astype(np.float32)[:, None, :, :]
    return LabelledSplit(inputs={DIGITS_INPUT_NAME: np.ascontiguousarray(x)}, labels=labels[idx].copy(),
                         name="digits", split=split, classes=tuple(str(d) for d in range(10)), indices=idx)


_LOADERS = {"digits": _digits}
