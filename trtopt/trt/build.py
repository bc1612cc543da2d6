"""The build stage: executes a :class:`~trtopt.trt.plan.BuildPlan` into an engine file + JSON sidecar.

Nothing here imports TensorRT at module level; :func:`build_engine` calls
:func:`~trtopt.trt.runtime.import_trt` after :func:`trtopt.trt.cuda.require_gpu` has checked there is a
GPU. The code follows NVIDIA's Python samples and uses only names present in the API manifests of every
version its route claims (tests/trt/test_contract.py scans this package):

- both 10.x and 11.x: Builder / OnnxParser / IBuilderConfig / Runtime / ICudaEngine / EngineInspector
  APIs, BuilderFlag.SPARSE_WEIGHTS, GPU_FALLBACK, VERSION_COMPATIBLE, EXCLUDE_LEAN_RUNTIME,
  NetworkDefinitionCreationFlag.STRONGLY_TYPED (10.x only sets it);
- 10.x only (`trtopt.trt.calibrator.make_calibrator`, ``set_calibration_profile``, ``int8_calibrator``,
  BuilderFlag.FP16/INT8): reached only for plans whose ``trt_major`` is 10
  (:func:`trtopt.trt.plan.make_plan` refuses them on 11).

Engines go through a content-keyed cache that never serves a stale engine (ONNX, plan and machine hashes).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trtopt.errors import TrtoptError
from trtopt.trt.calibrator import make_calibrator
from trtopt.trt.runtime import import_trt, machine, make_logger


@dataclass(frozen=True)
class EngineArtifact:
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
                 cuda_library: str = "auto", verbose: bool = False) -> EngineArtifact:
    """Build the engine ``plan`` describes into ``output`` (+ ``output.json`` sidecar, ``output.layers.json``).

    Args:
        plan: a :class:`~trtopt.trt.plan.BuildPlan` made for the installed TensorRT version.
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
    from trtopt.files import ensure_writable
    from trtopt.models.spec import InputSpec
    from trtopt.trt.build import format_parser_errors
    from trtopt.trt.calibrator import CalibrationBatches
    from trtopt.trt.cuda import open_cuda
    from trtopt.trt.engine import engine_cache_key

    out = ensure_writable(output, force)
    trt = import_trt()
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

    logger = make_logger(trt, verbose)
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
        inputs = [InputSpec(network.get_input(i).name, _sample_shape(plan, network.get_input(i)),
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
        calibrator = make_calibrator(trt, ops, batches, plan.calib_cache, calib_cache_out)
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
                 build_time: float, force: bool, cache_dir: Any, key: str) -> EngineArtifact:
    """Write engine, layer information and sidecar atomically; copy them into the cache folder."""
    import hashlib

    from trtopt.files import atomic_output, write_json, write_text
    from trtopt.trt.engine import make_sidecar, sidecar_path, summarize_layers

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
    return EngineArtifact(out, sidecar, layer_path, cache_hit=False)

def _from_cache(cache: Path, key: str, out: Path, identity: dict[str, Any]) -> EngineArtifact | None:
    """The cached engine for ``key`` copied to ``out``, or None when there is none (or it is stale)."""
    from trtopt.files import atomic_output
    from trtopt.trt.engine import check_engine_file, check_engine_matches, read_sidecar, sidecar_path

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
    return EngineArtifact(out, sidecar, pairs[2][1] if len(pairs) > 2 else None, cache_hit=True)


def format_parser_errors(parser: Any, onnx_name: str, limit: int = 3) -> str:
    """One line from TensorRT's ONNX parser errors: node name, operator and description of the first few.

    ``parser`` is a ``trt.OnnxParser`` (``num_errors``, ``get_error(i)`` giving a ``ParserError`` whose
    ``node_name()``, ``node_operator()``, ``desc()`` are methods); a stand-in with the same shape works.
    """
    count = int(parser.num_errors)
    parts = []
    for i in range(min(count, limit)):
        err = parser.get_error(i)
        node, op, desc = _call(err, "node_name"), _call(err, "node_operator"), _call(err, "desc")
        where = f"node {node!r}" if node else f"node #{_call(err, 'node')}"
        parts.append(f"{where}{f' ({op})' if op else ''}: {' '.join(str(desc).split())}")
    more = f"; and {count - limit} more" if count > limit else ""
    return f"TensorRT's ONNX parser rejected {onnx_name}: " + "; ".join(parts or ["no error recorded"]) + more


def _call(obj: Any, name: str) -> Any:
    value = getattr(obj, name, "")
    return value() if callable(value) else value
