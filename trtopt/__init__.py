"""trtopt: make trained PyTorch models small and fast for NVIDIA inference, and prove it with numbers.

The public API is re-exported here lazily (module ``__getattr__``), so ``import trtopt`` loads neither
torch, onnxruntime, TensorRT nor ModelOpt, and initializes no CUDA; each name imports its module on
first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from trtopt._version import __version__
from trtopt.errors import TrtoptError

_EXPORTS = {
    "load_model": "trtopt.models",
    "LoadedModel": "trtopt.models",
    "load_feed": "trtopt.data",
    "export_onnx": "trtopt.export",
    "check_parity": "trtopt.export",
    "inspect_onnx": "trtopt.artifacts",
    "OnnxArtifact": "trtopt.artifacts",
    "ExportConfig": "trtopt.config",
    "OrtConfig": "trtopt.config",
    "Recipe": "trtopt.config",
    "load_recipe": "trtopt.config",
    "TimingConfig": "trtopt.profile",
    "time_interleaved": "trtopt.profile",
    "Tolerances": "trtopt.compare",
    "compare_outputs": "trtopt.compare",
    "bench": "trtopt.bench",
    "get_backend": "trtopt.backends",
    "build_report": "trtopt.report",
    "run_demo": "trtopt.demo",
    "optimize": "trtopt.pipeline",
    "GateConfig": "trtopt.baseline",
    "PruneConfig": "trtopt.prune",
    "check_2to4": "trtopt.prune",
    "save_module": "trtopt.models",
    "DistillConfig": "trtopt.distill",
    "distill": "trtopt.distill",
    "kd_loss": "trtopt.distill",
}

__all__ = ["TrtoptError", "__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trtopt' has no attribute {name!r}")
