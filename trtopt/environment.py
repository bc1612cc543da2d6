"""What produced a number: versions, CPU and its instruction sets, GPU, thread settings. Read without
importing heavy packages.

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
#: CPU flags (as /proc/cpuinfo names them) that change inference speed or INT8 numerics: SIMD widths,
#: INT8 dot products (VNNI, AMX; Arm's dot product and i8mm), half/bfloat16 support.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "sve", "sve2")


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


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo ("flags" on x86, "Features" on Arm); None where unreadable."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return None


def cpu_isa() -> dict[str, Any]:
    """This machine's instruction sets as ONNX Runtime's INT8 CPU kernels see them (see :func:`isa_from_flags`)."""
    return isa_from_flags(cpu_flags(), platform.machine())


def isa_from_flags(flags: set[str] | None, machine: str) -> dict[str, Any]:
    """The instruction sets ONNX Runtime's INT8 CPU kernels dispatch on, from CPU flags, as JSON-able data.

    Returns ``{"flags": [...], "int8": NAME, "u8s8_saturates": bool}``: ``flags`` are the
    :data:`ISA_FLAGS` present (None when unreadable); ``int8`` the best INT8 path: "amx_int8" (AMX
    tiles), "avx512_vnni", "avx_vnni" (VNNI on 256-bit vectors), "avx2", "arm_dotprod", "other", or
    "unknown". ``u8s8_saturates``: on x86 without VNNI or AMX, ONNX Runtime's U8S8 kernels sum pairs of
    u8×s8 products into int16 with saturation (``vpmaddubsw``), which 8-bit weights can overflow and
    7-bit weights cannot (ONNX Runtime's ``reduce_range`` advice); VNNI and AMX accumulate in int32.
    Unknown x86 flags count as saturating (the safe side). ``machine`` is ``platform.machine()``'s name.
    """
    x86 = machine.lower() in ("x86_64", "amd64", "i386", "i686")
    if flags is None:
        return {"flags": None, "int8": "unknown", "u8s8_saturates": x86}
    if x86:
        best = next((name for name in ("amx_int8", "avx512_vnni", "avx_vnni", "avx2") if name in flags), "other")
    else:
        best = "arm_dotprod" if "asimddp" in flags else "other"
    return {"flags": sorted(f for f in ISA_FLAGS if f in flags), "int8": best,
            "u8s8_saturates": x86 and best not in ("amx_int8", "avx512_vnni", "avx_vnni")}


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


#: Linux sysfs files holding CPU power settings that change timing (frequency governor, energy/performance
#: preference, turbo off), by the name recorded.
CPU_POWER_FILES = {
    "scaling_governor": "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor",
    "energy_performance_preference": "/sys/devices/system/cpu/cpu0/cpufreq/energy_performance_preference",
    "intel_pstate_no_turbo": "/sys/devices/system/cpu/intel_pstate/no_turbo",
    "cpufreq_boost": "/sys/devices/system/cpu/cpufreq/boost",
}


def cpu_power(files: dict[str, str] = CPU_POWER_FILES) -> dict[str, str] | None:
    """The CPU power settings readable here (see `CPU_POWER_FILES`), or None where none is (a VM, not Linux)."""
    found = {}
    for name, path in files.items():
        try:
            with open(path, encoding="utf-8") as f:
                found[name] = f.read().strip()
        except OSError:
            continue
    return found or None


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
        "cpu_isa": cpu_isa(),
        "cpu_count_logical": os.cpu_count(),
        "cpu_affinity_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch_threads,
        "thread_env": {k: os.environ.get(k) for k in THREAD_VARIABLES if os.environ.get(k) is not None},
        "cpu_power": cpu_power(),
        "packages": {k: v for k, v in versions.items() if v is not None},
        "gpus": gpus(),
    }
