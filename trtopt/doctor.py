"""What this machine can run: backends, providers, TensorRT, CUDA, GPU, and what to install.

Every probe catches its own failure and reports it as data, so ``trtopt doctor`` works on any machine.
CUDA is probed through cuda-python's runtime (``cudaGetDeviceCount`` returns an error code instead of
raising when there is no GPU), never by creating a TensorRT object: on a machine without a GPU those can
come back half-initialized and crash later.
"""

from __future__ import annotations

from typing import Any

from trtopt import backends
from trtopt.environment import environment, gpus, package_version


def probe_cuda() -> dict[str, Any]:
    """CUDA devices (name, compute capability), driver and runtime versions via cuda-python, without raising."""
    from trtopt.trt.cuda import probe_gpus

    return probe_gpus()


def probe_onnxruntime() -> dict[str, Any]:
    """ONNX Runtime version and execution providers of this build."""
    try:
        import onnxruntime
    except ImportError as e:
        return {"available": False, "reason": str(e)}
    return {"available": True, "version": onnxruntime.__version__,
            "providers": onnxruntime.get_available_providers(), "device": onnxruntime.get_device()}


def probe_modelopt() -> dict[str, Any]:
    """NVIDIA ModelOpt's version and which of the packages ``trtopt[modelopt]`` brings are missing (not imported)."""
    from trtopt._modelopt import REQUIREMENTS

    return {"version": package_version("nvidia-modelopt"),
            "missing": [name for name in REQUIREMENTS if package_version(name) is None]}


def diagnose() -> dict[str, Any]:
    """The doctor's findings as data: environment, backends, CUDA, GPUs and advice lines."""
    found: dict[str, Any] = {"environment": environment(), "backends": {}}
    for name in backends.names():
        ok, detail = backends.get_backend(name).availability()
        found["backends"][name] = {"available": ok, "detail": detail,
                                   "capabilities": backends.get_backend(name).capabilities.to_dict()}
    found["onnxruntime"] = probe_onnxruntime()
    found["cuda"] = probe_cuda()
    found["gpus"] = gpus()
    from trtopt.trt.cuda import installed_libraries
    from trtopt.trt.runtime import installed_version

    found["tensorrt"] = {"version": installed_version(), "cuda_libraries": installed_libraries(),
                         "torch_tensorrt": package_version("torch-tensorrt")}
    found["modelopt"] = probe_modelopt()
    advice = []
    if found["modelopt"]["missing"]:
        advice.append("ModelOpt (QAT/QAD, ModelOpt Q/DQ placement, AutoCast FP16): pip install 'trtopt[modelopt]' "
                      f"(missing: {', '.join(found['modelopt']['missing'])})")
    if not found["backends"]["tensorrt"]["available"]:
        advice.append("TensorRT: on a machine with an NVIDIA GPU, pip install 'trtopt[tensorrt]' "
                      "(JetPack ships it on Jetson); until then export ONNX and time it with ONNX Runtime")
    if not found["cuda"]["available"]:
        advice.append("CUDA: no GPU visible; timing runs on the CPU with ONNX Runtime and PyTorch")
    for name, extra in (("executorch", "executorch"), ("litert", "litert")):
        if not found["backends"][name]["available"]:
            advice.append(f"{name} (edge CPU runtime, optional): pip install 'trtopt[{extra}]' (or 'trtopt[edge]' for both)")
    if package_version("efficientnet-lite-pytorch") is None:
        advice.append("Real models for the demo: pip install 'trtopt[models]'")
    found["advice"] = advice
    return found
