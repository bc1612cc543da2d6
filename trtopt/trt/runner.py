"""Running a built engine: :class:`TensorRTRunner` (feeds in, outputs out, trtexec-style timing).

Follows NVIDIA's Python samples (``samples/python/common_runtime.py``): one execution context, device
buffers per I/O tensor, ``execute_async_v3`` on one stream. The engine's sidecar is checked against this
machine (TensorRT version, GPU) before TensorRT deserializes it. Needs a GPU; names checked by
tests/trt/test_contract.py against the API manifests.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from trtopt.backends.base import Runner
from trtopt.errors import TrtoptError
from trtopt.feeds import CheckedFeed
from trtopt.models.spec import InputSpec
from trtopt.trt.runtime import import_trt, machine, make_logger


class TensorRTRunner(Runner):
    """A TensorRT engine behind the Runner protocol, plus trtexec-style profiling (:meth:`profile`).

    Loading checks the sidecar against this machine (TensorRT version, GPU) and the engine file against the
    sidecar before deserializing. Its inputs are the engine's input tensors (dynamic dims, -1 to TensorRT,
    are symbolic); whether a shape is inside the engine's optimization profile TensorRT says when the shape
    is set. Buffers: one device buffer and one pinned host buffer per I/O tensor, grown when a larger shape
    arrives; ``infer`` does H2D, ``execute_async_v3``, D2H on one stream.
    """

    backend = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike, cuda_library: str = "auto", verbose: bool = False):
        from trtopt.trt.cuda import open_cuda
        from trtopt.trt.engine import check_engine_file, check_engine_matches, read_sidecar

        self.path = Path(engine_path)
        self.model_name = f"engine {self.path.name}"
        self.sidecar = read_sidecar(self.path)
        check_engine_file(self.path, self.sidecar)
        trt = import_trt()
        identity, self.gpu = machine(trt)
        check_engine_matches(self.sidecar, identity, self.path.name)
        self.trt = trt
        self.ops = open_cuda(cuda_library)
        self.logger = make_logger(trt, verbose)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise TrtoptError(f"TensorRT cannot load {self.path.name}: {self.logger.errors()}",
                              "rebuild the engine on this machine (trtopt build --force)")
        self.context = self.engine.create_execution_context()
        inputs: list[InputSpec] = []
        self.outputs: list[str] = []
        self.dtypes: dict[str, np.dtype] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            self.dtypes[name] = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                shape = tuple(self.engine.get_tensor_shape(name))  # -1 where the dim is dynamic
                inputs.append(InputSpec.from_dims(name, shape, self.dtypes[name].name))
            else:
                self.outputs.append(name)
        self.inputs = tuple(inputs)
        self.stream = self.ops.stream_create()
        self.device: dict[str, tuple[int, int]] = {}
        self.host: dict[str, np.ndarray] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self.last_samples: dict[str, list[float]] = {}

    # -- buffers

    def _buffer(self, name: str, shape: tuple[int, ...]) -> None:
        dtype = self.dtypes[name]
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        ptr, size = self.device.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self.ops.free(ptr)
                self.ops.host_free(self.host[name])
            ptr, size = self.ops.malloc(nbytes), nbytes
            self.device[name] = (ptr, size)
            self.host[name] = self.ops.host_empty((max(1, nbytes // dtype.itemsize),), dtype)
        self.context.set_tensor_address(name, ptr)
        self._shapes[name] = shape

    def _prepare(self, feed: CheckedFeed) -> None:
        for spec in self.inputs:
            name = spec.name
            shape = feed[name].shape
            if self._shapes.get(name) != shape:
                if not self.context.set_input_shape(name, shape):
                    raise TrtoptError(f"input {name!r} shape {shape} is outside engine {self.path.name}'s profile",
                                      "use a shape within the --shapes min..max the engine was built with")
                self._buffer(name, shape)
            n = int(np.prod(shape, dtype=np.int64))
            self.host[name][:n] = feed[name].ravel()
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise TrtoptError(f"output {name!r} has a data-dependent shape {shape}",
                                  "trtopt's runner supports outputs whose shape follows from the input shapes")
            if self._shapes.get(name) != shape:
                self._buffer(name, shape)

    def _h2d(self) -> None:
        for name in (s.name for s in self.inputs):
            n = int(np.prod(self._shapes[name], dtype=np.int64))
            self.ops.htod_async(self.device[name][0], self.host[name][:n], self.stream)

    def _compute(self) -> None:
        if not self.context.execute_async_v3(self.ops.stream_handle(self.stream)):
            raise TrtoptError(f"TensorRT failed to enqueue {self.path.name}: {self.logger.errors()}",
                              "check the input shapes; --debug shows TensorRT's log")

    def _d2h(self) -> None:
        for name in self.outputs:
            n = int(np.prod(self._shapes[name], dtype=np.int64))
            self.ops.dtoh_async(self.host[name][:n], self.device[name][0], self.stream)

    def _outputs(self) -> dict[str, np.ndarray]:
        return {name: self.host[name][:int(np.prod(self._shapes[name], dtype=np.int64))].reshape(self._shapes[name]).copy()
                for name in self.outputs}

    # -- Runner protocol

    def _infer(self, feed: CheckedFeed) -> dict[str, np.ndarray]:
        """H2D, execute_async_v3, D2H on the runner's stream; synchronizes; outputs as host arrays."""
        self._prepare(feed)
        self._h2d()
        self._compute()
        self._d2h()
        self.ops.stream_sync(self.stream)
        return self._outputs()

    def profile(self, feed: dict[str, np.ndarray], iterations: int = 200, warmup: int = 20, transfers: bool = True,
                cuda_graph: bool = False) -> dict[str, Any]:
        """trtexec-style timing: CUDA events around H2D, compute and D2H of every iteration.

        Returns :func:`trtopt.trt.timing.trtexec_stats` (throughput qps; latency/H2D/compute/D2H min, mean,
        median, p90, p95, p99, max; CoV warning). ``cuda_graph`` replays ``execute_async_v3`` captured once
        into a CUDA graph (cuda-python only), as ``trtexec --useCudaGraph``.
        """
        from trtopt.trt.timing import trtexec_stats

        feed = self.check_feed(feed)
        self._prepare(feed)
        batch = feed.samples
        graph = None
        launch = self._compute
        if cuda_graph:
            self._compute()  # TensorRT's first enqueue after a shape change does setup work: not capturable
            self.ops.stream_sync(self.stream)
            graph = self.ops.capture_graph(self.stream, self._compute)

            def launch() -> None:
                self.ops.graph_launch(graph, self.stream)
        events = [self.ops.event_create() for _ in range(4)]
        h2d, compute, d2h = [], [], []
        try:
            for _ in range(warmup):
                if transfers:
                    self._h2d()
                launch()
                if transfers:
                    self._d2h()
            self.ops.stream_sync(self.stream)
            started = time.perf_counter()
            for _ in range(iterations):
                self.ops.event_record(events[0], self.stream)
                if transfers:
                    self._h2d()
                self.ops.event_record(events[1], self.stream)
                launch()
                self.ops.event_record(events[2], self.stream)
                if transfers:
                    self._d2h()
                self.ops.event_record(events[3], self.stream)
                self.ops.stream_sync(self.stream)
                h2d.append(self.ops.event_elapsed_ms(events[0], events[1]))
                compute.append(self.ops.event_elapsed_ms(events[1], events[2]))
                d2h.append(self.ops.event_elapsed_ms(events[2], events[3]))
            wall = time.perf_counter() - started
        finally:
            for e in events:
                self.ops.event_destroy(e)
            if graph is not None:
                self.ops.graph_destroy(graph)
        self.last_samples = {"h2d_ms": h2d, "compute_ms": compute, "d2h_ms": d2h}
        stats = trtexec_stats(h2d, compute, d2h, wall, batch, transfers, cuda_graph)
        stats["timer"] = f"CUDA events ({self.ops.name})"
        return stats

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": str(self.path), "trt_version": self.sidecar.get("trt_version"),
                "gpu": self.gpu.get("name"), "precision": self.sidecar.get("plan", {}).get("precision"),
                "cuda_library": self.ops.name}

    def close(self) -> None:
        if self.context is None:  # closed already
            return
        for name, (ptr, _) in list(self.device.items()):
            self.ops.free(ptr)
            self.ops.host_free(self.host[name])
        self.device.clear()
        self.host.clear()
        self.ops.stream_destroy(self.stream)
        self.ops.close()
        self.context = self.engine = None
