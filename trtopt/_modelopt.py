"""NVIDIA ModelOpt, imported on use: one place that says which extra brings it and keeps its import quiet.

``nvidia-modelopt`` comes with ``pip install 'trtopt[modelopt]'`` (the base package plus what ``modelopt.onnx``
needs, without ModelOpt's own ``[onnx]`` extra, which pulls onnxruntime-gpu). Nothing imports it at
``import trtopt`` time (tests/test_lean_import.py); the stages that use it (`trtopt.compress.qat`,
`trtopt.quant.modelopt_placement`, `trtopt.quant.autocast`) call :func:`import_modelopt`.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
import warnings
from collections.abc import Iterator
from types import ModuleType

from trtopt.errors import TrtoptError, first_line, missing_dependency

#: The trtopt extra that installs ModelOpt and the packages ``modelopt.onnx`` needs.
EXTRA = "modelopt"
#: Distribution names the extra installs (pyproject.toml ``[project.optional-dependencies] modelopt``).
REQUIREMENTS = ("nvidia-modelopt", "onnx-graphsurgeon", "polygraphy", "lief", "ml_dtypes", "onnxslim", "requests",
                "huggingface_hub")


def available() -> bool:
    """Whether ``nvidia-modelopt`` is installed (found without importing it)."""
    return importlib.util.find_spec("modelopt") is not None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Hold back ModelOpt's console output while it runs: its prints and progress bars (stdout/stderr), its log
    records and warnings (``logging.disable`` up to WARNING and a warnings filter, both restored after), so a
    command's output stays trtopt's. Errors still raise."""
    disabled = logging.root.manager.disable
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            logging.disable(logging.WARNING)
            yield
    finally:
        logging.disable(disabled)


def import_modelopt(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (e.g. ``"modelopt.torch.quantization"``) for ``purpose``, :func:`quiet`-ly (its import
    logs torch notices and CUDA-extension warnings on a CPU machine).

    Raises:
        TrtoptError: ModelOpt is not installed (the fix names ``trtopt[modelopt]``), or one of the packages
            ``module`` needs is missing or broken (named, with the same fix).
    """
    if not available():
        raise missing_dependency("nvidia-modelopt", EXTRA, purpose)
    try:
        with quiet():
            return importlib.import_module(module)
    except ImportError as e:  # modelopt.onnx needs onnx-graphsurgeon, polygraphy, lief, ... (the extra brings them)
        raise TrtoptError(f"{purpose} needs {module}, which fails to import ({first_line(e, limit=160)})",
                          f"pip install 'trtopt[{EXTRA}]' (it brings ModelOpt's ONNX dependencies)") from e
