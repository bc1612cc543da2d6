"""Engine records in pure Python: sidecars, the engine-cache key, and layer-precision summaries.

An engine is bound to the TensorRT version and the GPU that built it (TENSORRT.md). Its JSON sidecar
records both, plus the plan and the ONNX hash; :func:`check_engine_matches` refuses an engine whose
sidecar names another TensorRT version or GPU, saying which field differs, before TensorRT is asked to
deserialize it (a mismatched plan either fails there or, worse, runs wrongly). Nothing here imports
TensorRT or CUDA, so all of it is unit-tested without a GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trtopt.errors import TrtoptError

SIDECAR_FORMAT = 1

def sidecar_path(engine: str | os.PathLike) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    p = Path(engine)
    return p.with_name(p.name + ".json")

def machine_identity(trt_version: str, gpu: Mapping[str, Any]) -> dict[str, Any]:
    """The fields an engine is bound to: TensorRT version, GPU name and compute capability."""
    return {"trt_version": str(trt_version), "gpu_name": str(gpu.get("name", "")),
            "compute_capability": str(gpu.get("compute_capability", ""))}

def engine_cache_key(onnx_sha256: str, plan_sha256: str, identity: Mapping[str, Any]) -> str:
    """Cache key of an engine: ONNX content + plan + TensorRT version + GPU name/compute capability.

    Any change of any of these gives another key, so a cached engine is never served for a changed model,
    plan, TensorRT or GPU.
    """
    payload = {"onnx_sha256": onnx_sha256, "plan_sha256": plan_sha256, "trt_version": identity["trt_version"],
               "gpu_name": identity["gpu_name"], "compute_capability": identity["compute_capability"]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]

def make_sidecar(plan: Any, identity: Mapping[str, Any], engine_sha256: str, engine_size_bytes: int,
                 build_time_s: float, cuda: Mapping[str, Any], layers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON written beside an engine (see the module docstring)."""
    from trtopt._version import __version__

    return {"format": SIDECAR_FORMAT, **identity, "cuda_runtime_version": cuda.get("runtime_version"),
            "driver_version": cuda.get("driver_version"), "onnx_sha256": plan.onnx_sha256,
            "plan_sha256": plan.plan_hash(), "engine_sha256": engine_sha256, "engine_size_bytes": engine_size_bytes,
            "build_time_s": round(build_time_s, 3), "built_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "trtopt": __version__, "plan": plan.to_dict(), "layers": dict(layers or {})}

def read_sidecar(engine: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of ``engine``; TrtoptError when it is missing or unreadable (then nothing vouches for it)."""
    path = sidecar_path(engine)
    if not path.is_file():
        raise TrtoptError(f"engine {engine} has no sidecar {path.name}, so the TensorRT version and GPU that built it "
                          "are unknown", "rebuild it with trtopt build (engines only run where they were built)")
    from trtopt.files import read_json

    data = read_json(path, "engine sidecar", "rebuild the engine with trtopt build")
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise TrtoptError(f"{path} is not a trtopt engine sidecar (format {SIDECAR_FORMAT})", "rebuild with trtopt build")
    return data

def check_engine_matches(sidecar: Mapping[str, Any], identity: Mapping[str, Any], engine: str = "engine") -> None:
    """Refuse an engine built for another TensorRT version or GPU, naming the field that differs.

    Portability the build asked for is honoured: a VERSION_COMPATIBLE engine runs on the same or a later
    TensorRT (same major or later); an AMPERE_PLUS engine runs on any GPU of compute capability >= 8.0.
    """
    plan = sidecar.get("plan", {})
    flags = plan.get("builder_flags", [])
    differences = []
    if sidecar.get("trt_version") != identity["trt_version"]:
        built, here = _version_tuple(sidecar.get("trt_version", "0")), _version_tuple(identity["trt_version"])
        if not ("VERSION_COMPATIBLE" in flags and here >= built):
            differences.append(("TensorRT version", sidecar.get("trt_version"), identity["trt_version"]))
    portable = plan.get("hardware_compatibility_level") == "AMPERE_PLUS" and \
        _version_tuple(identity["compute_capability"] or "0") >= (8, 0)
    if not portable:
        for field, label in (("gpu_name", "GPU"), ("compute_capability", "compute capability")):
            if sidecar.get(field) != identity[field]:
                differences.append((label, sidecar.get(field), identity[field]))
    if differences:
        label, built, here = differences[0]
        more = f" (also {', '.join(d[0] for d in differences[1:])})" if len(differences) > 1 else ""
        raise TrtoptError(f"engine {engine} was built for {label} {built}, this machine has {here}{more}; TensorRT "
                          "engines only run on the TensorRT version and GPU that built them",
                          "rebuild it here from its ONNX (trtopt build, or the bundle's build script)")

def _version_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in str(text).split("."))
    except ValueError:
        return (0,)

def check_engine_file(engine: str | os.PathLike, sidecar: Mapping[str, Any]) -> None:
    """The engine file is the one the sidecar describes (size and sha256), not a stale or partial copy."""
    from trtopt.files import require_file, sha256_file

    p = require_file(engine, "engine", "build it with trtopt build")
    if p.stat().st_size != sidecar.get("engine_size_bytes") or sha256_file(p) != sidecar.get("engine_sha256"):
        raise TrtoptError(f"engine {p} does not match its sidecar (size or sha256 differ): it was replaced or truncated",
                          "rebuild it with trtopt build --force")

_PRECISION_TOKENS = (("int8", "INT8"), ("fp8", "FP8"), ("bf16", "BF16"), ("fp16", "FP16"), ("half", "FP16"),
                     ("fp32", "FP32"), ("float", "FP32"), ("int32", "INT32"), ("int64", "INT64"), ("bool", "BOOL"))

def summarize_layers(info: str | Mapping[str, Any]) -> dict[str, Any]:
    """Layers per output precision from the engine inspector's JSON (``LayerInformationFormat.JSON``).

    With ``ProfilingVerbosity.DETAILED`` each layer lists ``Outputs`` whose ``"Format/Datatype"`` reads
    e.g. "Channel major FP16 format where ..." or "Row major linear Int8 format"; the first output's type
    is the layer's precision. Returns ``{"layers": n, "by_precision": {"FP16": k, ...}}``; layers without
    that detail (lower verbosity) count as "unknown".
    """
    data = json.loads(info) if isinstance(info, str) else info
    layers = data.get("Layers", []) if isinstance(data, Mapping) else []
    counts: dict[str, int] = {}
    for layer in layers:
        precision = "unknown"
        if isinstance(layer, Mapping) and layer.get("Outputs"):
            text = str(layer["Outputs"][0].get("Format/Datatype", "")).lower()
            for token, label in _PRECISION_TOKENS:
                if token in text.replace(" ", ""):
                    precision = label
                    break
        counts[precision] = counts.get(precision, 0) + 1
    return {"layers": len(layers), "by_precision": dict(sorted(counts.items()))}
