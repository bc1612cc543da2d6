"""The backend protocol: what every execution backend declares and provides, and the runner base class."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from trtopt.feeds import CheckedFeed, check_feed
from trtopt.models.spec import InputSpec


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


_R = TypeVar("_R", bound="Runner")


class Runner(ABC):
    """A loaded model that runs feeds: the activate/infer/deactivate lifecycle (Polygraphy's runners).

    Every runner declares the inputs it takes (``inputs``) and inherits the one feed check over them
    (:meth:`check_feed`, `trtopt.feeds.check_feed`): :meth:`infer` checks each feed before the runtime
    sees it, except a feed this check already returned, so a benchmark checks once and then times only
    the model. A runner is a context manager: ``with backend.load(path) as runner:`` closes it on exit.

    Subclasses set ``backend`` (class attribute), ``inputs`` and ``model_name`` (how errors name the
    model, e.g. the file name), and implement :meth:`_infer`, :meth:`describe` and :meth:`close`.
    """

    backend: str
    inputs: tuple[InputSpec, ...]
    model_name: str

    def check_feed(self, feed: Mapping[str, Any]) -> CheckedFeed:
        """``feed`` checked against :attr:`inputs` and cast to their dtypes (arrays no input takes are left out).

        Raises TrtoptError naming the input, expected and got, for a missing input, a wrong rank or fixed
        dim, different sample counts or a dtype of another family (see `trtopt.feeds.check_feed`).
        """
        if isinstance(feed, CheckedFeed) and feed.inputs == self.inputs:
            return feed
        return check_feed(feed, self.inputs, model=self.model_name, allow_extra=True, finite=False)

    def infer(self, feed: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run one batch (checked first); returns outputs by name, as numpy arrays on the host."""
        return self._infer(self.check_feed(feed))

    @abstractmethod
    def _infer(self, feed: CheckedFeed) -> dict[str, np.ndarray]:
        """Run one checked batch: exactly the declared inputs, at their dtypes, C-contiguous."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Settings that affect speed (threads, providers, precision), recorded with every timing."""

    @abstractmethod
    def close(self) -> None:
        """Release the session/engine; closing twice is harmless."""

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Backend(Protocol):
    """A named backend: capabilities, an availability probe, and a loader."""

    name: str
    capabilities: Capabilities

    def availability(self) -> tuple[bool, str]:
        """(available, version or the reason it is not) without raising."""

    def load(self, model: Any, **options: Any) -> Runner:
        """Load a model (a path or a `LoadedModel`, per ``capabilities.model_formats``) into a runner."""
