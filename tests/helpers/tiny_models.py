"""Tiny seeded models for fast tests, importable as model specs ``tests.helpers.tiny_models:NAME`` (tests/ on sys.path)."""

from __future__ import annotations

import torch
from torch import nn

from trtopt.models.spec import InputSpec


class TinyCNN(nn.Module):
    """Conv-BN-ReLU ×2, global pool, linear: (N, 3, 32, 32) → (N, 10) logits."""

    trtopt_inputs = (InputSpec("input", (3, 32, 32), "float32", -1.0, 1.0),)

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class TwoInputMLP(nn.Module):
    """Two named inputs (features (N, 6), mask (N, 6)) → (N, 4)."""

    trtopt_inputs = (InputSpec("features", (6,), "float32", -1.0, 1.0), InputSpec("mask", (6,), "float32", 0.0, 1.0))

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.fc(features * mask)


class DriftingModel(nn.Module):
    """Adds a call counter to its input: the exported graph freezes one value, so parity must fail."""

    trtopt_inputs = (InputSpec("input", (4,), "float32", -1.0, 1.0),)

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x + float(self.calls)


def tiny_cnn() -> nn.Module:
    return TinyCNN()


def two_input_mlp() -> nn.Module:
    return TwoInputMLP()


def drifting() -> nn.Module:
    return DriftingModel()


def raising() -> nn.Module:
    """A factory that fails: what a user's broken model code does."""
    raise RuntimeError("weights file missing")


def nan_weights() -> nn.Module:
    """The tiny CNN with one NaN weight: every output is NaN (a corrupted checkpoint)."""
    model = TinyCNN()
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    return model


class SlowModel(nn.Module):
    """Sleeps 0.2 s per call: an export of it runs long enough to be interrupted mid-way."""

    trtopt_inputs = (InputSpec("input", (4,), "float32", -1.0, 1.0),)

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(0.2)
        return self.fc(x)


def slow() -> nn.Module:
    return SlowModel()
