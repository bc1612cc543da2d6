"""TensorRT itself, imported lazily: the installed version, the module, a logger, and this machine's identity.

Nothing imports TensorRT at module level; :func:`import_trt` is called only after
:func:`trtopt.trt.cuda.require_gpu` has checked there is a GPU (TensorRT objects created without one can
come back half-initialized and crash later).
"""

from __future__ import annotations

from typing import Any

from trtopt.environment import package_version
from trtopt.errors import TrtoptError, missing_dependency

LOG_LINES_KEPT = 200

def installed_version() -> str | None:
    """Version of the installed TensorRT Python package (any of its distribution names), or None."""
    return package_version("tensorrt") or package_version("tensorrt-cu12") or package_version("tensorrt-cu13")

def import_trt() -> Any:
    """The ``tensorrt`` module; raises the missing-extra `TrtoptError` when it is not installed."""
    try:
        import tensorrt as trt
    except ImportError as e:
        if installed_version() is None:
            raise missing_dependency("tensorrt", "tensorrt", "building and running TensorRT engines") from e
        raise TrtoptError(f"TensorRT is installed but does not import ({e})",
                          "check that its libraries (libnvinfer, libnvonnxparser) match the wheel") from e
    return trt

def make_logger(trt: Any, verbose: bool = False) -> Any:
    """A ``trt.ILogger`` that keeps the last messages (WARNING and worse; INFO too when verbose), so a failed
    build can say what TensorRT said. Defined in a function: it subclasses a TensorRT class."""

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: list[str] = []
            self.threshold = int(trt.ILogger.Severity.INFO if verbose else trt.ILogger.Severity.WARNING)

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= self.threshold:
                self.lines.append(f"[{getattr(severity, 'name', severity)}] {msg}")
                del self.lines[:-LOG_LINES_KEPT]

        def errors(self) -> str:
            bad = [line for line in self.lines if "ERROR" in line.split("]")[0]]
            return " | ".join((bad or self.lines)[-3:]) or "TensorRT logged nothing"

    return CapturingLogger()

def machine(trt: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(identity, cuda) of this machine: TensorRT version + first GPU, and CUDA/driver versions."""
    from trtopt.trt.cuda import require_gpu
    from trtopt.trt.engine import machine_identity
    from trtopt.trt.plan import resolve_version

    gpu = require_gpu("TensorRT")
    return machine_identity(resolve_version(trt.__version__), gpu), gpu
