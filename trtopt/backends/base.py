"""The backend protocol: what every execution backend declares and provides."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, checked before any work starts.

    Attributes:
        model_formats: what it loads: "onnx", "torch" (an nn.Module), "engine" (a TensorRT plan).
        precisions: "fp32", "fp16", "int8", ...
        devices: "cpu", "cuda".
        dynamic_shapes: whether one loaded model accepts several batch sizes.
    """

    model_formats: tuple[str, ...]
    precisions: tuple[str, ...]
    devices: tuple[str, ...]
    dynamic_shapes: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Runner(Protocol):
    """A loaded model that runs feeds: the activate/infer/deactivate lifecycle in three methods."""

    backend: str

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; returns outputs by name, as numpy arrays on the host."""

    def describe(self) -> dict[str, Any]:
        """Settings that affect speed (threads, providers, precision), recorded with every timing."""

    def close(self) -> None:
        """Release the session/engine."""


class Backend(Protocol):
    """A named backend: capabilities, an availability probe, and a loader."""

    name: str
    capabilities: Capabilities

    def availability(self) -> tuple[bool, str]:
        """(available, version or the reason it is not) without raising."""

    def load(self, model: Any, **options: Any) -> Runner:
        """Load a model (a path or a `LoadedModel`, per ``capabilities.model_formats``) into a runner."""
