"""TensorRT backend: executes a :class:`~trtopt.trt_plan.BuildPlan`, runs and times engines.

Nothing here imports TensorRT at module level; every function that needs it calls :func:`_import_trt`
after :func:`trtopt.cuda.require_gpu` has checked there is a GPU (TensorRT objects created without one
can come back half-initialized and crash later). The code follows NVIDIA's Python samples
(``samples/python/common_runtime.py``) and uses only names present in the API manifests of every
version its route claims (tests/test_trt_contract.py checks them by scanning this file):

- both 10.x and 11.x: Builder / OnnxParser / IBuilderConfig / Runtime / ICudaEngine / IExecutionContext
  / EngineInspector APIs, BuilderFlag.SPARSE_WEIGHTS, GPU_FALLBACK, VERSION_COMPATIBLE,
  EXCLUDE_LEAN_RUNTIME, NetworkDefinitionCreationFlag.STRONGLY_TYPED (10.x only sets it);
- 10.x only (``_make_calibrator``, ``set_calibration_profile``, ``int8_calibrator``, BuilderFlag.FP16/INT8):
  reached only for plans whose ``trt_major`` is 10 (:func:`trtopt.trt_plan.make_plan` refuses them on 11).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trtopt.backends.base import Capabilities
from trtopt.environment import package_version
from trtopt.errors import TrtoptError, missing_dependency

LOG_LINES_KEPT = 200


def _installed_version() -> str | None:
    """Version of the installed TensorRT Python package (any of its distribution names), or None."""
    return package_version("tensorrt") or package_version("tensorrt-cu12") or package_version("tensorrt-cu13")


def _import_trt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as e:
        if _installed_version() is None:
            raise missing_dependency("tensorrt", "tensorrt", "building and running TensorRT engines") from e
        raise TrtoptError(f"TensorRT is installed but does not import ({e})",
                          "check that its libraries (libnvinfer, libnvonnxparser) match the wheel") from e
    return trt


def _make_logger(trt: Any, verbose: bool = False) -> Any:
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
    from trtopt.cuda import require_gpu
    from trtopt.trt_engine import machine_identity
    from trtopt.trt_plan import resolve_version

    gpu = require_gpu("TensorRT")
    return machine_identity(resolve_version(trt.__version__), gpu), gpu


# ---------------------------------------------------------------------------------------- calibrator (10.x)


def _make_calibrator(trt: Any, ops: Any, batches: Any, cache_in: str | None, cache_out: str | None) -> Any:
    """An ``IInt8EntropyCalibrator2`` (TensorRT 10.x only) fed by a :class:`~trtopt.trt_engine.CalibrationBatches`.

    ``read_calibration_cache`` returns ``cache_in``'s bytes when given (TensorRT then skips calibration,
    what ``trtexec --calib`` does); ``write_calibration_cache`` checks the cache TensorRT wrote parses and
    saves it atomically to ``cache_out``. Defined inside a function because it subclasses a TensorRT class.
    """

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.stream = ops.stream_create()
            self.device: dict[str, tuple[int, int]] = {}

        def get_batch_size(self) -> int:
            return 1  # explicit-batch networks: the batch is in the tensor shapes (as Polygraphy's calibrator)

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = batches.next_batch()
            if batch is None:
                return None
            pointers = []
            for name in names:
                host = np.ascontiguousarray(batch[name])
                ptr, size = self.device.get(name, (0, 0))
                if size < host.nbytes:
                    if ptr:
                        ops.free(ptr)
                    ptr, size = ops.malloc(host.nbytes), host.nbytes
                    self.device[name] = (ptr, size)
                ops.htod_async(ptr, host, self.stream)
                pointers.append(ptr)
            ops.stream_sync(self.stream)
            return pointers

        def read_calibration_cache(self) -> bytes | None:
            if cache_in and Path(cache_in).is_file():
                return Path(cache_in).read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            if not cache_out:
                return
            from trtopt.files import atomic_output
            from trtopt.trt_cache import parse_cache

            data = cache.tobytes() if hasattr(cache, "tobytes") else bytes(cache)
            parse_cache(data, where="the cache TensorRT wrote")  # refuse to save something unreadable
            with atomic_output(cache_out, force=True) as tmp:
                tmp.write_bytes(data)

        def release(self) -> None:
            for ptr, _ in self.device.values():
                ops.free(ptr)
            self.device.clear()
            ops.stream_destroy(self.stream)

    return EntropyCalibrator()


# ---------------------------------------------------------------------------------------- build


@dataclass(frozen=True)
class EngineBuild:
    """A built (or reused) engine: its file, sidecar and layer information."""

    path: Path
    sidecar: dict[str, Any]
    layer_info_path: Path | None
    cache_hit: bool

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "layer_info": str(self.layer_info_path) if self.layer_info_path else None,
                "cache_hit": self.cache_hit, "sidecar": self.sidecar}


def build_engine(plan: Any, output: str | os.PathLike, force: bool = False, calibration_data: Iterable | None = None,
                 calib_max_samples: int | None = 512, cache_dir: str | os.PathLike | None = None,
                 cuda_library: str = "auto", verbose: bool = False) -> EngineBuild:
    """Build the engine ``plan`` describes into ``output`` (+ ``output.json`` sidecar, ``output.layers.json``).

    Args:
        plan: a :class:`~trtopt.trt_plan.BuildPlan` made for the installed TensorRT version.
        output: engine path; refused if it exists and ``force`` is false.
        calibration_data: for ``int8_source == "calibrator"``: an iterable of feeds (dict name -> array,
            axis 0 samples) at the profile's OPT shape; regrouped into batches of ``plan.calib_batch_size``
            samples (the OPT batch: TensorRT calibrates at the calibration profile's OPT dimensions).
            The cache TensorRT writes is saved to ``<output>.calib.cache``.
        calib_max_samples: at most this many calibration samples.
        cache_dir: engine cache folder; an engine there with the same ONNX, plan, TensorRT version and GPU
            is copied instead of building (its file hash is checked against its sidecar first).

    Raises TrtoptError (one line) for: no GPU, TensorRT missing or another version than the plan's, DLA
    asked on a device without DLA, an ONNX the parser rejects (node name and description), a failed build
    (with TensorRT's last error lines).
    """
    from trtopt.cuda import open_cuda
    from trtopt.files import ensure_writable
    from trtopt.trt_engine import CalibrationBatches, CalibrationInput, engine_cache_key, format_parser_errors

    out = ensure_writable(output, force)
    trt = _import_trt()
    identity, gpu = machine(trt)  # probes the GPU before any TensorRT object exists
    if identity["trt_version"] != plan.trt_version:
        raise TrtoptError(f"the plan is for TensorRT {plan.trt_version}, this machine has {identity['trt_version']}",
                          "make the plan here (trtopt build --trt-version auto) or install that TensorRT")
    _check_onnx_unchanged(plan)  # before the cache: a cached engine of an edited ONNX is stale
    key = engine_cache_key(plan.onnx_sha256, plan.plan_hash(), identity)
    if cache_dir is not None:
        hit = _from_cache(Path(cache_dir), key, out, identity)
        if hit is not None:
            return hit

    logger = _make_logger(trt, verbose)
    builder = trt.Builder(logger)
    if plan.device_type == "DLA":
        available = builder.num_DLA_cores
        if available == 0:
            raise TrtoptError(f"the plan runs on DLA core {plan.dla_core}, but {gpu['name']} has no DLA",
                              "build without --dla-core (DLA exists on Jetson Orin/Xavier)")
        if plan.dla_core >= available:
            raise TrtoptError(f"DLA core {plan.dla_core} asked, {gpu['name']} has {available}",
                              f"use --dla-core 0..{available - 1}")
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(plan.onnx_path)):
        raise TrtoptError(format_parser_errors(parser, Path(plan.onnx_path).name),
                          "check the model's opset/operators are supported by this TensorRT (or simplify it)")

    config = builder.create_builder_config()
    if plan.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    profile = None
    if plan.profiles:
        profile = builder.create_optimization_profile()
        for p in plan.profiles:
            profile.set_shape(p.name, p.min, p.opt, p.max)
        config.add_optimization_profile(profile)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if plan.builder_optimization_level is not None:
        config.builder_optimization_level = plan.builder_optimization_level
    if plan.hardware_compatibility_level == "AMPERE_PLUS":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if plan.device_type == "DLA":
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    timing_cache = None
    if plan.timing_cache:
        previous = Path(plan.timing_cache).read_bytes() if Path(plan.timing_cache).is_file() else b""
        timing_cache = config.create_timing_cache(previous)
        if not config.set_timing_cache(timing_cache, ignore_mismatch=False):
            timing_cache = config.create_timing_cache(b"")  # built on another device: start afresh
            config.set_timing_cache(timing_cache, ignore_mismatch=False)

    calibrator = ops = None
    calib_cache_out = None
    if plan.int8_source in ("calibration-cache", "calibrator"):
        if plan.trt_major >= 11:  # make_plan refuses this; kept so no 11.x run can reach a removed API
            raise TrtoptError("implicit INT8 on TensorRT 11", "use a Q/DQ ONNX")
        ops = open_cuda(cuda_library)
        inputs = [CalibrationInput(network.get_input(i).name, _sample_shape(plan, network.get_input(i)),
                                   np.dtype(trt.nptype(network.get_input(i).dtype)).name)
                  for i in range(network.num_inputs)]
        if plan.int8_source == "calibrator":
            if calibration_data is None:
                raise TrtoptError("the plan calibrates at build time but no calibration data was given",
                                  "pass --data (images/.npy) or use a calibration cache")
            batches = CalibrationBatches(calibration_data, inputs, plan.calib_batch_size, calib_max_samples)
            calib_cache_out = str(out) + ".calib.cache"
        else:
            batches = CalibrationBatches([], inputs, 1)
        calibrator = _make_calibrator(trt, ops, batches, plan.calib_cache, calib_cache_out)
        config.int8_calibrator = calibrator
        if profile is not None:
            config.set_calibration_profile(profile)

    started = time.perf_counter()
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.release()
        if ops is not None:
            ops.close()
    build_time = time.perf_counter() - started
    if serialized is None:
        raise TrtoptError(f"TensorRT could not build {Path(plan.onnx_path).name}: {logger.errors()}",
                          "see the TensorRT message; --debug shows more (a larger --workspace or another precision "
                          "may help)")
    if timing_cache is not None:
        from trtopt.files import atomic_output

        with atomic_output(plan.timing_cache, force=True) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return _save_engine(trt, logger, bytes(serialized), plan, out, identity, gpu, build_time, force, cache_dir, key)


def _sample_shape(plan: Any, tensor: Any) -> tuple[int, ...]:
    """A calibration sample's shape: the profile's opt shape without the batch axis, else the static shape."""
    for p in plan.profiles:
        if p.name == tensor.name:
            return tuple(p.opt[1:])
    return tuple(tensor.shape)[1:]


def _check_onnx_unchanged(plan: Any) -> None:
    from trtopt.files import sha256_file

    if not Path(plan.onnx_path).is_file():
        raise TrtoptError(f"the plan's ONNX {plan.onnx_path} does not exist", "keep the ONNX next to the plan")
    if sha256_file(plan.onnx_path) != plan.onnx_sha256:
        raise TrtoptError(f"{plan.onnx_path} changed since the plan was made (sha256 differs)",
                          "remake the plan (trtopt build --plan-only) for this ONNX")


def _save_engine(trt: Any, logger: Any, data: bytes, plan: Any, out: Path, identity: dict[str, Any], gpu: dict[str, Any],
                 build_time: float, force: bool, cache_dir: Any, key: str) -> EngineBuild:
    """Write engine, layer information and sidecar atomically; copy them into the cache folder."""
    import hashlib

    from trtopt.files import atomic_output, write_json, write_text
    from trtopt.trt_engine import make_sidecar, sidecar_path, summarize_layers

    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise TrtoptError(f"TensorRT built an engine it cannot load: {logger.errors()}", "rebuild with --debug")
    inspector = engine.create_engine_inspector()
    info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    layers = summarize_layers(info)
    layer_path = out.with_name(out.name + ".layers.json")
    sidecar = make_sidecar(plan, identity, hashlib.sha256(data).hexdigest(), len(data), build_time, gpu,
                           {**layers, "layer_info": layer_path.name})
    written: list[Path] = []
    try:
        with atomic_output(out, force) as tmp:
            tmp.write_bytes(data)
        written.append(out)
        written.append(write_text(layer_path, info, force=True))
        written.append(write_json(sidecar_path(out), sidecar, force=True))
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    if cache_dir is not None:
        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        for src, name in ((out, f"{key}.engine"), (sidecar_path(out), f"{key}.engine.json"),
                          (layer_path, f"{key}.engine.layers.json")):
            with atomic_output(cache / name, force=True) as tmp:
                shutil.copyfile(src, tmp)
    return EngineBuild(out, sidecar, layer_path, cache_hit=False)


def _from_cache(cache: Path, key: str, out: Path, identity: dict[str, Any]) -> EngineBuild | None:
    """The cached engine for ``key`` copied to ``out``, or None when there is none (or it is stale)."""
    from trtopt.files import atomic_output
    from trtopt.trt_engine import check_engine_file, check_engine_matches, read_sidecar, sidecar_path

    cached = cache / f"{key}.engine"
    if not cached.is_file() or not sidecar_path(cached).is_file():
        return None
    try:
        sidecar = read_sidecar(cached)
        check_engine_matches(sidecar, identity, str(cached))
        check_engine_file(cached, sidecar)
    except TrtoptError:
        return None  # never serve a stale or damaged entry: rebuild (and overwrite it)
    pairs = [(cached, out), (sidecar_path(cached), out.with_name(out.name + ".json"))]
    layers = cache / f"{key}.engine.layers.json"
    if layers.is_file():
        pairs.append((layers, out.with_name(out.name + ".layers.json")))
    for src, dst in pairs:
        with atomic_output(dst, force=True) as tmp:
            shutil.copyfile(src, tmp)
    return EngineBuild(out, sidecar, pairs[2][1] if len(pairs) > 2 else None, cache_hit=True)


# ---------------------------------------------------------------------------------------- runner


class TensorRTRunner:
    """A TensorRT engine behind the Runner protocol, plus trtexec-style profiling (:meth:`profile`).

    Loading checks the sidecar against this machine (TensorRT version, GPU) and the engine file against the
    sidecar before deserializing. Buffers: one device buffer and one pinned host buffer per I/O tensor,
    grown when a larger shape arrives; ``infer`` does H2D, ``execute_async_v3``, D2H on one stream.
    """

    backend = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike, cuda_library: str = "auto", verbose: bool = False):
        from trtopt.cuda import open_cuda
        from trtopt.trt_engine import check_engine_file, check_engine_matches, read_sidecar

        self.path = Path(engine_path)
        self.sidecar = read_sidecar(self.path)
        check_engine_file(self.path, self.sidecar)
        trt = _import_trt()
        identity, self.gpu = machine(trt)
        check_engine_matches(self.sidecar, identity, self.path.name)
        self.trt = trt
        self.ops = open_cuda(cuda_library)
        self.logger = _make_logger(trt, verbose)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise TrtoptError(f"TensorRT cannot load {self.path.name}: {self.logger.errors()}",
                              "rebuild the engine on this machine (trtopt build --force)")
        self.context = self.engine.create_execution_context()
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.dtypes: dict[str, np.dtype] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            self.dtypes[name] = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(name)
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

    def _prepare(self, feed: Mapping[str, np.ndarray]) -> None:
        missing = [n for n in self.inputs if n not in feed]
        if missing:
            raise TrtoptError(f"engine {self.path.name} needs input {missing[0]!r}", f"provide {', '.join(self.inputs)}")
        for name in self.inputs:
            shape = tuple(np.asarray(feed[name]).shape)
            if self._shapes.get(name) != shape:
                if not self.context.set_input_shape(name, shape):
                    raise TrtoptError(f"input {name!r} shape {shape} is outside engine {self.path.name}'s profile",
                                      "use a shape within the --shapes min..max the engine was built with")
                self._buffer(name, shape)
            host = self.host[name]
            n = int(np.prod(shape, dtype=np.int64))
            host[:n] = np.asarray(feed[name], dtype=self.dtypes[name]).ravel()
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise TrtoptError(f"output {name!r} has a data-dependent shape {shape}",
                                  "trtopt's runner supports outputs whose shape follows from the input shapes")
            if self._shapes.get(name) != shape:
                self._buffer(name, shape)

    def _h2d(self) -> None:
        for name in self.inputs:
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

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
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

        Returns :func:`trtopt.trt_engine.trtexec_stats` (throughput qps; latency/H2D/compute/D2H min, mean,
        median, p90, p95, p99, max; CoV warning). ``cuda_graph`` replays ``execute_async_v3`` captured once
        into a CUDA graph (cuda-python only), as ``trtexec --useCudaGraph``.
        """
        from trtopt.trt_engine import trtexec_stats

        self._prepare(feed)
        batch = int(np.asarray(feed[self.inputs[0]]).shape[0]) if self.inputs else 1
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
        for name, (ptr, _) in list(self.device.items()):
            self.ops.free(ptr)
            self.ops.host_free(self.host[name])
        self.device.clear()
        self.host.clear()
        self.ops.stream_destroy(self.stream)
        self.ops.close()
        self.context = self.engine = None


# ---------------------------------------------------------------------------------------- backend


class TensorRTBackend:
    name = "tensorrt"
    capabilities = Capabilities(model_formats=("onnx", "engine"), precisions=("fp32", "fp16", "bf16", "int8", "fp8"),
                                devices=("cuda",), dynamic_shapes=True)

    def availability(self) -> tuple[bool, str]:
        """Whether the TensorRT Python package is installed (by metadata: TensorRT is not imported) and a GPU seen."""
        version = _installed_version()
        if version is None:
            return False, "TensorRT is not installed (GPU machines only: pip install 'trtopt[tensorrt]')"
        from trtopt.doctor import probe_cuda

        cuda = probe_cuda()
        if not cuda["available"]:
            return False, f"TensorRT {version} is installed but {cuda['reason']}"
        return True, version

    def load(self, model: Any, cuda_library: str = "auto", **options: Any) -> TensorRTRunner:
        """Open an engine file (with its sidecar) for inference; an ``.onnx`` is built first (default
        :class:`~trtopt.trt_plan.BuildOptions` updated by ``options``) through the engine cache in
        ``~/.cache/trtopt/engines``."""
        path = Path(str(getattr(model, "path", model)))
        ok, detail = self.availability()
        if not ok:
            if _installed_version() is None:
                raise missing_dependency("tensorrt", "tensorrt", "the tensorrt backend")
            raise TrtoptError(f"the tensorrt backend cannot run here: {detail}", "run on a machine with an NVIDIA GPU")
        if path.suffix == ".onnx":
            from trtopt.trt_plan import BuildOptions, make_plan

            trt = _import_trt()
            plan = make_plan(path, BuildOptions(**options), trt.__version__)
            cache = Path(os.environ.get("TRTOPT_ENGINE_CACHE", Path.home() / ".cache" / "trtopt" / "engines"))
            built = build_engine(plan, cache / "last" / (path.stem + ".engine"), force=True, cache_dir=cache,
                                 cuda_library=cuda_library)
            path = built.path
        elif options:
            raise TrtoptError(f"engine files take no build option ({next(iter(options))})", "pass an .onnx to build")
        return TensorRTRunner(path, cuda_library=cuda_library)


BACKEND = TensorRTBackend()
