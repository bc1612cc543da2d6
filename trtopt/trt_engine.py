"""Engine records in pure Python: sidecars, the engine cache, parser-error text, calibration batches,
layer-precision summaries and trtexec-style statistics. Nothing here imports TensorRT or CUDA, so all of
it is unit-tested on machines without a GPU; :mod:`trtopt.backends.trt` calls it around TensorRT.

An engine is bound to the TensorRT version and the GPU that built it (TENSORRT.md). Its JSON sidecar
records both, plus the plan and the ONNX hash; :func:`check_engine_matches` refuses an engine whose
sidecar names another TensorRT version or GPU, saying which field differs, before TensorRT is asked to
deserialize it (a mismatched plan either fails there or, worse, runs wrongly).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trtopt.errors import TrtoptError

SIDECAR_FORMAT = 1
COV_WARNING_PERCENT = 2.5  # trtexec warns when GPU compute time's coefficient of variation exceeds this
_STAT_POINTS = (("min", None), ("mean", None), ("median", 50.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0),
                ("max", None))


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
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise TrtoptError(f"sidecar {path} is unreadable ({e})", "rebuild the engine with trtopt build") from e
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
    from trtopt.files import sha256_file

    p = Path(engine)
    if not p.is_file():
        raise TrtoptError(f"engine {p} does not exist", "build it with trtopt build")
    if p.stat().st_size != sidecar.get("engine_size_bytes") or sha256_file(p) != sidecar.get("engine_sha256"):
        raise TrtoptError(f"engine {p} does not match its sidecar (size or sha256 differ): it was replaced or truncated",
                          "rebuild it with trtopt build --force")


# ---------------------------------------------------------------------------------------- parser errors


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


# ---------------------------------------------------------------------------------------- calibration data


@dataclass(frozen=True)
class CalibrationInput:
    """One network input the calibrator feeds: name, per-sample shape (no batch axis), numpy dtype."""

    name: str
    sample_shape: tuple[int, ...]
    dtype: str


class CalibrationBatches:
    """Fixed-size batches for an INT8 calibrator, streamed from trtopt data (feeds or arrays).

    TensorRT's calibrator asks for one batch at a time (``get_batch``) of exactly ``batch_size`` samples
    per input. This regroups any iterable of feeds (dict name -> array, axis 0 = samples; e.g.
    :func:`trtopt.data.iter_batches` or :func:`trtopt.data.iter_photo_crops`) into such batches, holding at
    most one batch plus one source chunk in memory, checks names/shapes/dtypes, stops after
    ``max_samples`` and drops a final partial batch (counted in ``dropped``).
    """

    def __init__(self, source: Iterable[Mapping[str, Any]], inputs: Sequence[CalibrationInput], batch_size: int,
                 max_samples: int | None = None):
        if batch_size < 1:
            raise TrtoptError(f"calibration batch size {batch_size} is below 1", "use e.g. 8")
        self.inputs = tuple(inputs)
        self.batch_size = batch_size
        self.max_samples = max_samples
        self.batches_served = 0
        self.dropped = 0
        self._iter = self._generate(iter(source))

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self._iter

    def next_batch(self) -> dict[str, np.ndarray] | None:
        """The next full batch, or None when the data is exhausted (what ``get_batch`` turns into None)."""
        batch = next(self._iter, None)
        if batch is not None:
            self.batches_served += 1
        return batch

    def _check(self, feed: Mapping[str, Any], index: int) -> dict[str, np.ndarray]:
        if not isinstance(feed, Mapping):
            if len(self.inputs) != 1:
                raise TrtoptError(f"calibration item {index} is an array but the network has {len(self.inputs)} inputs",
                                  "yield dicts keyed by input name")
            feed = {self.inputs[0].name: feed}
        out = {}
        counts = set()
        for spec in self.inputs:
            if spec.name not in feed:
                raise TrtoptError(f"calibration item {index} has no input {spec.name!r} (has {', '.join(feed)})",
                                  f"yield every input: {', '.join(s.name for s in self.inputs)}")
            arr = np.asarray(feed[spec.name])
            if tuple(arr.shape[1:]) != spec.sample_shape:
                raise TrtoptError(f"calibration input {spec.name!r} has samples of shape {tuple(arr.shape[1:])}, the "
                                  f"calibration profile needs {spec.sample_shape}",
                                  "give data of the profile's opt shape (without the batch axis)")
            out[spec.name] = arr.astype(spec.dtype, copy=False)
            counts.add(arr.shape[0])
        if len(counts) != 1:
            raise TrtoptError(f"calibration item {index} has inputs with different sample counts {sorted(counts)}",
                              "give every input the same number of samples")
        return out

    def _generate(self, source: Iterator[Mapping[str, Any]]) -> Iterator[dict[str, np.ndarray]]:
        pending: dict[str, list[np.ndarray]] = {s.name: [] for s in self.inputs}
        have = 0
        taken = 0
        for index, item in enumerate(source):
            feed = self._check(item, index)
            n = next(iter(feed.values())).shape[0]
            if self.max_samples is not None:
                n = min(n, self.max_samples - taken)
            start = 0
            while start < n:
                take = min(self.batch_size - have, n - start)
                for name, arr in feed.items():
                    pending[name].append(arr[start:start + take])
                have += take
                start += take
                taken += take
                if have == self.batch_size:
                    yield {name: np.ascontiguousarray(np.concatenate(parts)) for name, parts in pending.items()}
                    pending = {s.name: [] for s in self.inputs}
                    have = 0
            if self.max_samples is not None and taken >= self.max_samples:
                break
        self.dropped = have


# ---------------------------------------------------------------------------------------- layer information


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


# ---------------------------------------------------------------------------------------- statistics


def distribution(samples_ms: Sequence[float]) -> dict[str, float]:
    """min / mean / median / p90 / p95 / p99 / max of millisecond samples (linear-interpolated percentiles)."""
    values = np.asarray(samples_ms, dtype=np.float64)
    if values.size == 0:
        raise TrtoptError("no timed iterations", "time at least one iteration")
    out = {}
    for key, pct in _STAT_POINTS:
        if key == "min":
            out[key] = float(values.min())
        elif key == "max":
            out[key] = float(values.max())
        elif key == "mean":
            out[key] = float(values.mean())
        else:
            out[key] = float(np.percentile(values, pct))
    return out


def trtexec_stats(h2d_ms: Sequence[float], compute_ms: Sequence[float], d2h_ms: Sequence[float], wall_s: float,
                  batch_size: int, transfers: bool, cuda_graph: bool) -> dict[str, Any]:
    """Statistics as trtexec reports them.

    ``latency`` is trtexec's host latency (H2D + GPU compute + D2H per iteration); ``throughput_qps`` is
    iterations / host wall time of the timed loop (``throughput_samples_per_s`` multiplies by the batch).
    A warning is added when the GPU compute time's coefficient of variation exceeds 2.5 % (trtexec's
    threshold: the numbers are unstable; lock clocks or use spin-wait).
    """
    compute = np.asarray(compute_ms, dtype=np.float64)
    h2d = np.asarray(h2d_ms, dtype=np.float64) if transfers else np.zeros_like(compute)
    d2h = np.asarray(d2h_ms, dtype=np.float64) if transfers else np.zeros_like(compute)
    if not (compute.size == h2d.size == d2h.size) or compute.size == 0:
        raise TrtoptError("H2D, compute and D2H need one sample each per iteration", "time at least one iteration")
    if wall_s <= 0:
        raise TrtoptError(f"wall time {wall_s} s is not positive", "time a longer run")
    n = int(compute.size)
    std = float(compute.std(ddof=1)) if n > 1 else 0.0
    cov = std / float(compute.mean()) * 100.0 if compute.mean() > 0 else 0.0
    result: dict[str, Any] = {
        "iterations": n, "batch_size": batch_size, "transfers_included": transfers, "cuda_graph": cuda_graph,
        "throughput_qps": n / wall_s, "throughput_samples_per_s": n * batch_size / wall_s,
        "latency_ms": distribution(h2d + compute + d2h), "h2d_ms": distribution(h2d),
        "compute_ms": distribution(compute), "d2h_ms": distribution(d2h),
        "compute_cov_percent": cov, "warnings": [],
    }
    if cov > COV_WARNING_PERCENT:
        result["warnings"].append(f"GPU compute time is unstable: coefficient of variation {cov:.1f} % > "
                                  f"{COV_WARNING_PERCENT} %; lock the GPU clocks or use spin-wait")
    return result
