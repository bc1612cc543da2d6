"""trtopt.trt.cuda: library choice and GPU probing without a GPU; CUDA-event timing where a GPU is present
(marked ``cuda``: needs a GPU and cuda-python, not TensorRT)."""

from __future__ import annotations

import numpy as np
import pytest

from trtopt.errors import TrtoptError
from trtopt.trt import cuda

HAS_GPU = cuda.probe_gpus()["available"]


@pytest.mark.skipif(HAS_GPU, reason="a GPU is present")
def test_probe_reports_no_gpu_cleanly():
    found = cuda.probe_gpus()
    assert found["available"] is False and found["device_count"] == 0 and found["devices"] == []
    assert found["reason"] and "\n" not in found["reason"]


@pytest.mark.skipif(HAS_GPU, reason="a GPU is present")
def test_require_gpu_and_open_cuda_fail_in_one_line():
    with pytest.raises(TrtoptError, match="TensorRT needs an NVIDIA GPU") as err:
        cuda.require_gpu("TensorRT")
    assert "\n" not in str(err.value) and "trtopt doctor" in str(err.value)
    with pytest.raises(TrtoptError, match="CUDA timing needs an NVIDIA GPU"):
        cuda.open_cuda("cuda-python")


def test_library_choice(monkeypatch):
    monkeypatch.setattr(cuda, "installed_libraries", lambda: ["cuda-python"])
    assert cuda.choose_library("auto") == "cuda-python"
    with pytest.raises(TrtoptError, match="CUDA library pycuda is not installed.*or use cuda-python"):
        cuda.choose_library("pycuda")
    with pytest.raises(TrtoptError, match="is not one of"):
        cuda.choose_library("cupy")
    monkeypatch.setattr(cuda, "installed_libraries", lambda: ["cuda-python", "pycuda"])
    monkeypatch.setenv("TRTOPT_CUDA_LIB", "pycuda")
    assert cuda.choose_library("auto") == "pycuda"  # the user's choice wins when both are installed
    assert cuda.choose_library("cuda-python") == "cuda-python"
    monkeypatch.setattr(cuda, "installed_libraries", list)
    monkeypatch.delenv("TRTOPT_CUDA_LIB")
    with pytest.raises(TrtoptError, match="neither is installed"):
        cuda.choose_library("auto")


def test_probe_without_cuda_python(monkeypatch):
    monkeypatch.setattr(cuda, "installed_libraries", list)
    found = cuda.probe_gpus()
    assert found["available"] is False and "cuda-python is not installed" in found["reason"]


def test_cuda_errors_name_the_call():
    rt = cuda._runtime()
    with pytest.raises(TrtoptError, match="CUDA cudaMalloc failed: cudaError"):
        cuda._check(rt, (rt.cudaError_t(2), None), "cudaMalloc")
    assert cuda._check(rt, (rt.cudaError_t(0), 5), "x") == 5


# --- on a GPU (no TensorRT needed)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU")
def test_cuda_python_copies_round_trip():
    ops = cuda.open_cuda("cuda-python")
    stream = ops.stream_create()
    host = ops.host_empty((1024,), np.float32)
    host[:] = np.arange(1024, dtype=np.float32)
    back = ops.host_empty((1024,), np.float32)
    ptr = ops.malloc(host.nbytes)
    start, end = ops.event_create(), ops.event_create()
    ops.event_record(start, stream)
    ops.htod_async(ptr, host, stream)
    ops.dtoh_async(back, ptr, stream)
    ops.event_record(end, stream)
    ops.stream_sync(stream)
    assert ops.event_elapsed_ms(start, end) >= 0
    np.testing.assert_array_equal(back, host)
    for e in (start, end):
        ops.event_destroy(e)
    ops.free(ptr)
    ops.host_free(host)
    ops.host_free(back)
    ops.stream_destroy(stream)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU")
def test_torch_baseline_timed_with_cuda_events_both_ways():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    a = torch.randn(1024, 1024, device="cuda")
    by_torch = cuda.time_torch_cuda(lambda: a @ a, iterations=20, warmup=5, timer="torch")
    by_cuda_python = cuda.time_torch_cuda(lambda: a @ a, iterations=20, warmup=5, timer="cuda-python")
    assert len(by_torch) == len(by_cuda_python) == 20 and min(by_torch) > 0 and min(by_cuda_python) > 0
    # the same work timed by two event APIs on the same stream agrees within a factor of 2
    assert 0.5 < np.median(by_torch) / np.median(by_cuda_python) < 2.0
