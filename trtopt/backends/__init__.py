"""Execution backends: a small registry of named backends, each importing its runtime lazily.

``get_backend(name)`` imports the backend's module on first use, so ``import trtopt`` never loads
onnxruntime, torch or TensorRT. Each backend declares its :class:`~trtopt.backends.base.Capabilities`
up front; :func:`check_request` refuses what a backend can't do before any work starts.
"""

from __future__ import annotations

import importlib

from trtopt.backends.base import Backend, Capabilities, Runner
from trtopt.errors import TrtoptError

# name -> module defining BACKEND; imported only when the backend is asked for.
_REGISTRY: dict[str, str] = {
    "onnxruntime": "trtopt.backends.ort",
    "torch": "trtopt.backends.torch",
    "tensorrt": "trtopt.backends.trt",
    "torch-tensorrt": "trtopt.backends.torch_trt",
    "executorch": "trtopt.backends.executorch",
    "litert": "trtopt.backends.litert",
}
_ALIASES = {"ort": "onnxruntime", "trt": "tensorrt", "pytorch": "torch", "torch_tensorrt": "torch-tensorrt",
            "pte": "executorch", "tflite": "litert"}


def names() -> tuple[str, ...]:
    """Registered backend names."""
    return tuple(_REGISTRY)


def get_backend(name: str) -> Backend:
    """The backend registered as ``name`` (aliases: ort, trt, pytorch)."""
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise TrtoptError(f"unknown backend {name!r}", f"choose one of {', '.join(names())}")
    return importlib.import_module(_REGISTRY[key]).BACKEND


def check_request(name: str, model_format: str, precision: str = "fp32", device: str = "cpu") -> Backend:
    """Return backend ``name`` after checking it can run ``model_format`` at ``precision`` on ``device``.

    Raises TrtoptError naming the backend and what it supports, before any model is loaded.
    """
    backend = get_backend(name)
    caps = backend.capabilities
    for what, value, allowed in (("model format", model_format, caps.model_formats),
                                 ("precision", precision, caps.precisions), ("device", device, caps.devices)):
        if value not in allowed:
            raise TrtoptError(f"backend {backend.name} does not support {what} {value!r}",
                              f"it supports {', '.join(allowed)}; choose another backend or {what}")
    return backend


__all__ = ["Backend", "Capabilities", "Runner", "check_request", "get_backend", "names"]
