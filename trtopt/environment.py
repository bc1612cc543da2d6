"""What produced a number: versions, CPU, GPU, thread settings. Read without importing heavy packages.

Versions come from installed package metadata (``importlib.metadata``), not from importing the
packages, so recording the environment never loads TensorRT or initializes CUDA. The GPU is read from
``nvidia-smi`` when it exists.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from typing import Any

from trtopt._version import __version__

PACKAGES = ("torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "onnxslim", "numpy",
            "tensorrt", "cuda-python", "cuda-bindings", "pycuda", "nvidia-modelopt", "timm", "transformers")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


def package_version(name: str) -> str | None:
    """Installed version of distribution ``name``, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> list[dict[str, str]]:
    """GPUs as nvidia-smi reports them (name, driver, memory, clocks); empty without a driver."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    fields = "name,driver_version,memory.total,compute_cap,clocks.sm,clocks.max.sm"
    try:
        out = subprocess.run([smi, f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    keys = [k.replace(".", "_") for k in fields.split(",")]
    return [dict(zip(keys, (v.strip() for v in line.split(",")))) for line in out.strip().splitlines() if line]


def environment() -> dict[str, Any]:
    """Everything that can change a measurement, as JSON-able data."""
    versions = {name: package_version(name) for name in PACKAGES}
    torch_threads = None
    if "torch" in sys.modules:  # only read torch's thread count when the caller already imported it
        torch_threads = sys.modules["torch"].get_num_threads()
    return {
        "trtopt": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count_logical": os.cpu_count(),
        "cpu_affinity_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch_threads,
        "thread_env": {k: os.environ.get(k) for k in THREAD_VARIABLES if os.environ.get(k) is not None},
        "packages": {k: v for k, v in versions.items() if v is not None},
        "gpus": gpus(),
    }
