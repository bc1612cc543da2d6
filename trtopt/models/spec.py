"""What a loaded model is: its input declarations (`InputSpec`), image preprocessing, and `LoadedModel`.

Torch-free records shared by the loaders (`trtopt.models.load`), the zoo (`trtopt.models.zoo`), data
loading and every stage that runs a model; plus parameter counts and sizes of a module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)

IMAGENET_STD = (0.229, 0.224, 0.225)

@dataclass(frozen=True)
class InputSpec:
    """One model input: name, per-sample shape, dtype, and what its batch axis (axis 0) is.

    The one input descriptor of the package: models declare their inputs with it, every runner declares
    the inputs it takes with it, and :func:`trtopt.feeds.check_feed` checks feeds against it.

    Attributes:
        name: input name, used in ONNX and in data files (.npz keys).
        shape: shape without the batch axis, e.g. (3, 224, 224); a string is a symbolic axis of any
            length ("seq"; "?" when unnamed), as ONNX and TensorRT signatures have.
        dtype: numpy dtype name ("float32", "int64"); "unknown" when the model does not say.
        low / high: value range for seeded random inputs ([low, high) for integers: token ids, masks).
        batch: axis 0: a symbol ("N", "batch") for a batch of any size, an int for a batch fixed at that
            size (static ONNX, edge and Torch-TensorRT models), None for an input without one (a 0-d
            scalar input of an ONNX graph).
        dynamic_axes: ``((axis, symbol), ...)``: axes beyond the batch (full-shape index >= 1) whose length
            varies (sequence length, height, width); ``shape`` holds their example length. Axes with one
            symbol have one length across inputs. Exported as dynamic (`trtopt.export`).
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    low: float = 0.0
    high: float = 1.0
    batch: int | str | None = "N"
    dynamic_axes: tuple[tuple[int, str], ...] = ()

    @classmethod
    def from_dims(cls, name: str, dims: Sequence[int | str | None], dtype: str) -> InputSpec:
        """An input from its full shape, batch axis included (an ONNX, engine or edge-sidecar signature).

        Axis 0 becomes ``batch``; negative (TensorRT's -1), None and empty dims become the symbol "?".
        """
        full = tuple(_dim(d) for d in dims)
        return cls(name, full[1:], dtype, batch=full[0]) if full else cls(name, (), dtype, batch=None)

    @property
    def dims(self) -> tuple[int | str, ...]:
        """The full shape a feed's array has: ``(batch, *shape)``, or ``shape`` without a batch axis."""
        return self.shape if self.batch is None else (self.batch, *self.shape)

def _dim(d: int | str | None) -> int | str:
    if isinstance(d, str):
        return d or "?"
    return "?" if d is None or int(d) < 0 else int(d)

@dataclass(frozen=True)
class ImagePreprocess:
    """Standard image preprocessing: resize the shorter side, center crop, scale to [0, 1], normalize."""

    size: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

@dataclass
class LoadedModel:
    """A model ready for export/profiling: the module in eval mode and how to feed it.

    Attributes:
        module: the ``nn.Module`` (eval mode, on the CPU).
        spec: the spec it was loaded from.
        inputs: its inputs in call order (positional arguments of ``forward``).
        output_names: names given to its outputs in ONNX.
        preprocess: image preprocessing, for image-classification models.
        description: one line for reports ("torchvision resnet18, random init").
    """

    module: Any
    spec: str
    inputs: tuple[InputSpec, ...]
    output_names: tuple[str, ...] = ("output",)
    preprocess: ImagePreprocess | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

def image_inputs(shape: tuple[int, ...] = (3, 224, 224), name: str = "input") -> tuple[InputSpec, ...]:
    """The usual single image input (normalized pixels roughly in [-2, 2.5])."""
    return (InputSpec(name, tuple(shape), "float32", -2.0, 2.5),)

def is_onnx_path(spec: str) -> bool:
    """True when ``spec`` names an ONNX file rather than a PyTorch model."""
    return spec.lower().endswith(".onnx")

def parameter_count(module: Any) -> int:
    """Number of parameters (elements, not bytes) of a module."""
    return sum(p.numel() for p in module.parameters())

def parameter_bytes(module: Any) -> int:
    """Bytes taken by a module's parameters and buffers at their stored dtypes."""
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
