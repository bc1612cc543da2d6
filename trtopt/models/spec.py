"""What a loaded model is: its input declarations (`InputSpec`), image preprocessing, and `LoadedModel`.

Torch-free records shared by the loaders (`trtopt.models.load`), the zoo (`trtopt.models.zoo`), data
loading and every stage that runs a model; plus parameter counts and sizes of a module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any



IMAGENET_MEAN = (0.485, 0.456, 0.406)

IMAGENET_STD = (0.229, 0.224, 0.225)

@dataclass(frozen=True)
class InputSpec:
    """One model input, described without its batch axis.

    Attributes:
        name: input name, used in ONNX and in data files (.npz keys).
        shape: shape without the batch axis, e.g. (3, 224, 224).
        dtype: numpy dtype name ("float32", "int64").
        low / high: value range for seeded random inputs ([low, high) for integers: token ids, masks).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    low: float = 0.0
    high: float = 1.0

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
