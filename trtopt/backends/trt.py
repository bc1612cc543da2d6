"""TensorRT runtime adapter: declares the backend's capabilities, probes availability without importing
TensorRT, and opens engine files as :class:`~trtopt.trt.runner.TensorRTRunner`. Building is not its job
(`trtopt.trt.build`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trtopt.backends.base import Capabilities
from trtopt.errors import TrtoptError, missing_dependency
from trtopt.trt.runner import TensorRTRunner
from trtopt.trt.runtime import installed_version


class TensorRTBackend:
    name = "tensorrt"
    capabilities = Capabilities(model_formats=("onnx", "engine"), precisions=("fp32", "fp16", "bf16", "int8", "fp8"),
                                devices=("cuda",), dynamic_shapes=True)

    def availability(self) -> tuple[bool, str]:
        """Whether the TensorRT Python package is installed (by metadata: TensorRT is not imported) and a GPU seen."""
        version = installed_version()
        if version is None:
            return False, "TensorRT is not installed (GPU machines only: pip install 'trtopt[tensorrt]')"
        from trtopt.trt.cuda import probe_gpus

        cuda = probe_gpus()
        if not cuda["available"]:
            return False, f"TensorRT {version} is installed but {cuda['reason']}"
        return True, version

    def load(self, model: Any, cuda_library: str = "auto", **options: Any) -> TensorRTRunner:
        """Open an engine file (with its sidecar) for inference.

        A runtime adapter does not build: an ``.onnx`` is refused with the ``trtopt build`` line to run
        (`trtopt.trt.build.build_engine` is the build stage, with its engine cache).
        """
        path = Path(str(getattr(model, "path", model)))
        ok, detail = self.availability()
        if not ok:
            if installed_version() is None:
                raise missing_dependency("tensorrt", "tensorrt", "the tensorrt backend")
            raise TrtoptError(f"the tensorrt backend cannot run here: {detail}", "run on a machine with an NVIDIA GPU")
        if path.suffix == ".onnx":
            raise TrtoptError(f"the tensorrt backend runs engines, and {path.name} is an ONNX model",
                              "build an engine first: trtopt build MODEL.onnx -o model.engine")
        if options:
            raise TrtoptError(f"engine files take no build option ({next(iter(options))})",
                              "set build options on trtopt build")
        return TensorRTRunner(path, cuda_library=cuda_library)

BACKEND = TensorRTBackend()
