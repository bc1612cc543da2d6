"""The few CUDA operations GPU timing needs, over cuda-python or pycuda, imported only when used.

Operations: device alloc/free, pinned host memory, async H2D/D2H copies, streams, events (elapsed
milliseconds) and, with cuda-python, CUDA-graph capture. Two libraries provide them:

- ``cuda-python`` (``cuda.bindings.runtime``, what NVIDIA's TensorRT samples use since 10.13): wheels,
  imports without a GPU; every call returns ``(cudaError_t, *values)``, checked by :func:`_check`.
- ``pycuda`` (``pycuda.driver``): the user's long-standing choice; a source build that needs the CUDA
  toolkit. It gets the device's primary context pushed, the context TensorRT and the runtime API use.

:func:`open_cuda` picks one (``library="auto"`` prefers cuda-python; ``TRTOPT_CUDA_LIB`` overrides).
:func:`probe_gpus` never raises: without a driver or GPU it returns ``available: False`` and the reason.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from trtopt.environment import package_version
from trtopt.errors import TrtoptError

LIBRARIES = ("cuda-python", "pycuda")


def _runtime() -> Any:
    """cuda-python's runtime module (the 12.6+ layout, else the older ``cuda.cudart``)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime  # cuda-python < 12.6
    return runtime


def installed_libraries() -> list[str]:
    """Which CUDA Python libraries are installed (by package metadata; nothing is imported)."""
    found = []
    if package_version("cuda-bindings") or package_version("cuda-python"):
        found.append("cuda-python")
    if package_version("pycuda"):
        found.append("pycuda")
    return found


def choose_library(library: str = "auto") -> str:
    """``library`` ("auto", "cuda-python" or "pycuda"; env ``TRTOPT_CUDA_LIB`` overrides auto) if installed."""
    wanted = os.environ.get("TRTOPT_CUDA_LIB", "auto") if library == "auto" else library
    installed = installed_libraries()
    if wanted == "auto":
        if not installed:
            raise TrtoptError("GPU timing needs cuda-python or pycuda, neither is installed",
                              "pip install 'trtopt[tensorrt]' (brings cuda-python)")
        return installed[0]
    if wanted not in LIBRARIES:
        raise TrtoptError(f"CUDA library {wanted!r} is not one of {', '.join(LIBRARIES)}", "use cuda-python or pycuda")
    if wanted not in installed:
        raise TrtoptError(f"CUDA library {wanted} is not installed",
                          f"pip install {wanted}" + (f", or use {installed[0]}" if installed else ""))
    return wanted


def probe_gpus() -> dict[str, Any]:
    """CUDA devices as data, without raising: ``available``, ``reason`` (when not), ``device_count``,
    ``devices`` (index, name, compute_capability "8.7", total_memory_bytes, integrated), ``driver_version``
    and ``runtime_version`` (CUDA's integers, e.g. 12040), ``library``.

    Uses cuda-python's runtime: ``cudaGetDeviceCount`` returns an error code (no driver, no device)
    instead of raising, so this is safe before any TensorRT object is created.
    """
    if "cuda-python" not in installed_libraries():
        return {"available": False, "reason": "cuda-python is not installed (pip install 'trtopt[tensorrt]')",
                "device_count": 0, "devices": []}
    try:
        rt = _runtime()
    except ImportError as e:
        return {"available": False, "reason": f"cuda-python does not import ({e})", "device_count": 0, "devices": []}
    try:
        err, count = rt.cudaGetDeviceCount()
        if int(err) != 0 or not count:
            reason = _error_text(rt, err) if int(err) != 0 else "the driver reports 0 devices"
            return {"available": False, "reason": f"no CUDA device ({reason})", "device_count": 0, "devices": [],
                    "library": "cuda-python"}
        devices = []
        for index in range(count):
            err, prop = rt.cudaGetDeviceProperties(index)
            if int(err) != 0:
                continue
            name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
            devices.append({"index": index, "name": name.strip("\x00 "),
                            "compute_capability": f"{prop.major}.{prop.minor}",
                            "total_memory_bytes": int(prop.totalGlobalMem), "integrated": bool(prop.integrated)})
        _, driver = rt.cudaDriverGetVersion()
        _, runtime_version = rt.cudaRuntimeGetVersion()
    except (RuntimeError, OSError, AttributeError, ValueError, TypeError) as e:  # a broken driver: report, never raise
        return {"available": False, "reason": f"CUDA probe failed ({type(e).__name__}: {e})", "device_count": 0,
                "devices": [], "library": "cuda-python"}
    return {"available": True, "device_count": count, "devices": devices, "driver_version": int(driver),
            "runtime_version": int(runtime_version), "library": "cuda-python"}


def require_gpu(purpose: str) -> dict[str, Any]:
    """The first GPU's description, or TrtoptError saying why there is none (one line)."""
    found = probe_gpus()
    if not found["available"] or not found["devices"]:
        raise TrtoptError(f"{purpose} needs an NVIDIA GPU: {found.get('reason', 'none found')}",
                          "run it on a machine with an NVIDIA GPU and driver (trtopt doctor shows what is missing)")
    return {**found["devices"][0], "driver_version": found["driver_version"],
            "runtime_version": found["runtime_version"]}


def _error_text(rt: Any, err: Any) -> str:
    name = getattr(err, "name", str(err))
    status, text = rt.cudaGetErrorString(err)
    if int(status) != 0:
        return name
    return f"{name}: {text.decode() if isinstance(text, bytes) else text}"


def _check(rt: Any, result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(err, *values)`` result; raise TrtoptError naming the call on an error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise TrtoptError(f"CUDA {what} failed: {_error_text(rt, err)}", "check the GPU with trtopt doctor / nvidia-smi")
    return values[0] if len(values) == 1 else (tuple(values) or None)


class CudaPython:
    """The ops over cuda-python's runtime API. Pointers, streams and events are returned as-is
    (streams/events are cuda-python objects; ``int(stream)`` is the handle TensorRT takes)."""

    name = "cuda-python"

    def __init__(self) -> None:
        self.rt = _runtime()

    def malloc(self, nbytes: int) -> int:
        return int(_check(self.rt, self.rt.cudaMalloc(max(1, nbytes)), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        _check(self.rt, self.rt.cudaFree(ptr), "cudaFree")

    def host_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A pinned (page-locked) host array; free it with :meth:`host_free`."""
        dtype = np.dtype(dtype)
        nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        ptr = int(_check(self.rt, self.rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        raw = (ctypes.c_byte * nbytes).from_address(ptr)
        return np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape, dtype=np.int64))).reshape(shape)

    def host_free(self, array: np.ndarray) -> None:
        _check(self.rt, self.rt.cudaFreeHost(array.ctypes.data), "cudaFreeHost")

    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check(self.rt, self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, stream), "cudaMemcpyAsync H2D")

    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(self.rt, self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, stream), "cudaMemcpyAsync D2H")

    def stream_create(self) -> Any:
        return _check(self.rt, self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def stream_sync(self, stream: Any) -> None:
        _check(self.rt, self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def stream_destroy(self, stream: Any) -> None:
        _check(self.rt, self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def event_create(self) -> Any:
        return _check(self.rt, self.rt.cudaEventCreate(), "cudaEventCreate")

    def event_record(self, event: Any, stream: Any) -> None:
        _check(self.rt, self.rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        _check(self.rt, self.rt.cudaEventSynchronize(end), "cudaEventSynchronize")
        return float(_check(self.rt, self.rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))

    def event_destroy(self, event: Any) -> None:
        _check(self.rt, self.rt.cudaEventDestroy(event), "cudaEventDestroy")

    def capture_graph(self, stream: Any, enqueue: Callable[[], None]) -> Any:
        """Capture what ``enqueue`` puts on ``stream`` into an executable CUDA graph."""
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _check(self.rt, self.rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
        try:
            enqueue()
        finally:
            graph = _check(self.rt, self.rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        graph_exec = _check(self.rt, self.rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        _check(self.rt, self.rt.cudaGraphDestroy(graph), "cudaGraphDestroy")
        return graph_exec

    def graph_launch(self, graph_exec: Any, stream: Any) -> None:
        _check(self.rt, self.rt.cudaGraphLaunch(graph_exec, stream), "cudaGraphLaunch")

    def graph_destroy(self, graph_exec: Any) -> None:
        _check(self.rt, self.rt.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")

    def close(self) -> None:
        """Nothing to release: the runtime API owns the primary context."""


class PyCuda:
    """The ops over pycuda's driver API, on the device's primary context (the one TensorRT uses)."""

    name = "pycuda"

    def __init__(self, device: int = 0) -> None:
        import pycuda.driver as drv

        self.drv = drv
        drv.init()
        self.context = drv.Device(device).retain_primary_context()
        self.context.push()
        self._allocations: dict[int, Any] = {}

    def malloc(self, nbytes: int) -> int:
        allocation = self.drv.mem_alloc(max(1, nbytes))
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, ptr: int) -> None:
        self._allocations.pop(ptr).free()

    def host_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return self.drv.pagelocked_empty(shape, np.dtype(dtype))

    def host_free(self, array: np.ndarray) -> None:
        base = getattr(array, "base", None)
        if base is not None and hasattr(base, "free"):
            base.free()

    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self.drv.memcpy_htod_async(dst, src, stream)

    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self.drv.memcpy_dtoh_async(dst, src, stream)

    def stream_create(self) -> Any:
        return self.drv.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def stream_sync(self, stream: Any) -> None:
        stream.synchronize()

    def stream_destroy(self, stream: Any) -> None:
        del stream  # pycuda destroys it when collected

    def event_create(self) -> Any:
        return self.drv.Event()

    def event_record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(end.time_since(start))

    def event_destroy(self, event: Any) -> None:
        del event

    def capture_graph(self, stream: Any, enqueue: Callable[[], None]) -> Any:
        raise TrtoptError("CUDA-graph capture is implemented over cuda-python only",
                          "use the cuda-python library (--cuda-lib cuda-python) or time without --cuda-graph")

    def graph_launch(self, graph_exec: Any, stream: Any) -> None:
        raise TrtoptError("CUDA graphs need cuda-python", "use --cuda-lib cuda-python")

    def graph_destroy(self, graph_exec: Any) -> None:
        """No graphs are made over pycuda."""

    def close(self) -> None:
        for allocation in self._allocations.values():
            allocation.free()
        self._allocations.clear()
        self.context.pop()


def open_cuda(library: str = "auto") -> CudaPython | PyCuda:
    """The CUDA ops over ``library`` after checking a GPU is there (a one-line TrtoptError if not)."""
    chosen = choose_library(library)
    require_gpu("CUDA timing")
    return CudaPython() if chosen == "cuda-python" else PyCuda()


def time_torch_cuda(fn: Callable[[], Any], iterations: int, warmup: int, timer: str = "torch") -> list[float]:
    """GPU milliseconds of each call of ``fn`` (which launches work on PyTorch's current CUDA stream).

    ``timer="torch"`` records ``torch.cuda.Event``s; ``timer="cuda-python"`` records cuda-python events
    on the same stream (``torch.cuda.current_stream().cuda_stream``), the way the TensorRT runner is
    timed, so "speedup vs PyTorch FP32" compares like with like. Needs a GPU, not TensorRT.
    """
    import torch

    if not torch.cuda.is_available():
        raise TrtoptError("PyTorch GPU timing needs CUDA, and torch.cuda.is_available() is False",
                          "run on a machine with an NVIDIA GPU (trtopt doctor)")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples: list[float] = []
    if timer == "torch":
        for _ in range(iterations):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(float(start.elapsed_time(end)))
        return samples
    if timer != "cuda-python":
        raise TrtoptError(f"timer {timer!r} is not torch or cuda-python", "use one of those")
    ops = CudaPython()
    stream = torch.cuda.current_stream().cuda_stream  # an int handle cuda-python accepts as cudaStream_t
    start, end = ops.event_create(), ops.event_create()
    try:
        for _ in range(iterations):
            ops.event_record(start, stream)
            fn()
            ops.event_record(end, stream)
            samples.append(ops.event_elapsed_ms(start, end))
    finally:
        ops.event_destroy(start)
        ops.event_destroy(end)
    return samples
