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
    "load_model": "trtopt.models.load",
    "LoadedModel": "trtopt.models.spec",
    "load_feed": "trtopt.data",
    "export_onnx": "trtopt.export",
    "check_parity": "trtopt.export",
    "inspect_onnx": "trtopt.artifacts",
    "OnnxArtifact": "trtopt.artifacts",
    "ExportConfig": "trtopt.export",
    "OrtConfig": "trtopt.backends.ort",
    "Recipe": "trtopt.config",
    "load_recipe": "trtopt.config",
    "TimingConfig": "trtopt.measure.profile",
    "time_interleaved": "trtopt.measure.profile",
    "Tolerances": "trtopt.measure.compare",
    "compare_outputs": "trtopt.measure.compare",
    "bench": "trtopt.measure.bench",
    "get_backend": "trtopt.backends",
    "build_report": "trtopt.report.model",
    "run_demo": "trtopt.demo",
    "optimize": "trtopt.pipeline",
    "GateConfig": "trtopt.measure.baseline",
    "PruneConfig": "trtopt.compress.config",
    "check_2to4": "trtopt.trt.sparsity",
    "save_module": "trtopt.models.module_file",
    "DistillConfig": "trtopt.compress.config",
    "distill": "trtopt.compress.distill",
    "kd_loss": "trtopt.compress.distill",
    "LowRankConfig": "trtopt.compress.config",
    "ShareConfig": "trtopt.compress.config",
    "CalibrationConfig": "trtopt.quant.calibrate",
    "QuantizeConfig": "trtopt.quant.quantize",
    "BuildOptions": "trtopt.trt.plan",
    "prune": "trtopt.compress.prune",
    "calibrate": "trtopt.quant.calibrate",
    "quantize": "trtopt.quant.quantize",
}

__all__ = ["TrtoptError", "__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trtopt' has no attribute {name!r}")
