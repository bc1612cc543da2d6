"""TensorRT backend, registered but imported lazily: nothing here loads TensorRT until it is used.

The engine build and runner are version-aware and follow ../shared/TENSORRT.md; this module's job at
this stage is to declare what TensorRT can do and to refuse clearly where it can't run.
"""

from __future__ import annotations

from typing import Any

from trtopt.backends.base import Capabilities, Runner
from trtopt.environment import package_version
from trtopt.errors import TrtoptError, missing_dependency


def _installed_version() -> str | None:
    """Version of the installed TensorRT Python package (any of its distribution names), or None."""
    return package_version("tensorrt") or package_version("tensorrt-cu12") or package_version("tensorrt-cu13")


class TensorRTBackend:
    name = "tensorrt"
    capabilities = Capabilities(model_formats=("onnx", "engine"), precisions=("fp32", "fp16", "bf16", "int8", "fp8"),
                                devices=("cuda",), dynamic_shapes=True)

    def availability(self) -> tuple[bool, str]:
        """Whether the TensorRT Python package is installed (by metadata: TensorRT is not imported)."""
        version = _installed_version()
        if version is None:
            return False, "TensorRT is not installed (GPU machines only: pip install 'trtopt[tensorrt]')"
        from trtopt.doctor import probe_cuda

        cuda = probe_cuda()
        if not cuda["available"]:
            return False, f"TensorRT {version} is installed but {cuda['reason']}"
        return True, version

    def load(self, model: Any, **options: Any) -> Runner:
        """Refuse, naming the reason, on machines where TensorRT can't run; the engine runner needs a GPU."""
        ok, detail = self.availability()
        if not ok:
            if _installed_version() is None:
                raise missing_dependency("tensorrt", "tensorrt", "the tensorrt backend")
            raise TrtoptError(f"the tensorrt backend cannot run here: {detail}", "run on a machine with an NVIDIA GPU")
        raise TrtoptError("the tensorrt engine runner is not part of this trtopt release",
                          "use --backend onnxruntime, or build engines with trtexec from the exported ONNX")


BACKEND = TensorRTBackend()
