"""Records passed between stages: files with their hashes, sizes and how they were made.

An artifact is a frozen record, never a live object: it names files on disk and describes them, so it
can be written to JSON, moved to another machine, and checked later (the hash says whether the file is
still the one that was measured).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trtopt.errors import TrtoptError
from trtopt.files import sha256_file


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape and element type of a graph input or output.

    ``shape`` holds ints for fixed axes and strings for symbolic ones (e.g. "batch").
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class OnnxArtifact:
    """An ONNX model on disk.

    Attributes:
        path: the ``.onnx`` file.
        data_files: external-data side files it references (e.g. ``model.onnx.data``), which move with it.
        sha256: hash of the ``.onnx`` file (the side files are covered by their names inside it).
        size_bytes: ``.onnx`` plus all side files: the deployable size used by compression ratios.
        opset: default-domain opset.
        inputs / outputs: graph signature.
        producer: what wrote it ("pytorch 2.14.1", "onnxslim", ...).
        precision: "int8" when it holds Q/DQ nodes, "fp16" when its weights are half precision, else "fp32".
        metadata: the model's ``trtopt.*`` metadata properties (e.g. the quantization target).
        exporter: "dynamo" or "torchscript" when trtopt exported it, else None.
        notes: how it was made, e.g. why the exporter fell back, whether it was simplified.
        parity: the parity-check result (see `trtopt.measure.compare.compare_outputs`), per batch size.
    """

    path: Path
    data_files: tuple[Path, ...]
    sha256: str
    size_bytes: int
    opset: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    producer: str = ""
    precision: str = "fp32"
    metadata: dict[str, str] = field(default_factory=dict)
    exporter: str | None = None
    notes: tuple[str, ...] = ()
    parity: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["data_files"] = [str(p) for p in self.data_files]
        d["inputs"] = [t.to_dict() for t in self.inputs]
        d["outputs"] = [t.to_dict() for t in self.outputs]
        d["notes"] = list(self.notes)
        return d


def _tensor_infos(values: Any) -> tuple[TensorInfo, ...]:
    import onnx

    infos = []
    for v in values:
        tt = v.type.tensor_type
        dims: list[int | str] = []
        for d in tt.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type else "unknown"
        infos.append(TensorInfo(v.name, tuple(dims), dtype))
    return tuple(infos)


def _all_tensors(graph: Any) -> Any:
    """Every TensorProto in a graph: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def external_data_files(model: Any, base_dir: Path) -> tuple[Path, ...]:
    """The side files an ONNX ModelProto (loaded without its external data) refers to.

    Raises TrtoptError for a ``location`` that is absolute or climbs out of ``base_dir`` (``..``): ONNX
    Runtime refuses such paths too, and following one would read, link or copy files outside the
    model's folder (calibration links the side files into a temporary folder by these names).
    """
    import onnx

    locations: list[str] = []
    for tensor in _all_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location" and entry.value not in locations:
                    _check_location(tensor.name, entry.value, base_dir)
                    locations.append(entry.value)
    return tuple(base_dir / loc for loc in locations)


def _check_location(tensor: str, location: str, base_dir: Path) -> None:
    """Refuse an external-data location that is empty, absolute, or has a ``..`` part (POSIX or Windows form)."""
    from pathlib import PurePosixPath, PureWindowsPath

    posix, windows = PurePosixPath(location), PureWindowsPath(location)
    if (not location or posix.is_absolute() or windows.is_absolute() or windows.drive or windows.root
            or ".." in posix.parts or ".." in windows.parts):
        raise TrtoptError(f"tensor {tensor!r} stores its data at {location!r}, which is not a relative path inside "
                          f"the model's folder {base_dir} (ONNX Runtime refuses it too)",
                          "re-save the model with its external data beside it, e.g. "
                          "onnx.save(model, path, save_as_external_data=True, location='model.onnx.data')")


def inspect_onnx(path: str | os.PathLike, **extra: Any) -> OnnxArtifact:
    """Describe an ONNX file on disk, checking that it and its side files are usable.

    Raises TrtoptError for a missing file, a file that is not ONNX, a missing ``.onnx.data``, or an external-data
    location outside the file's folder (see :func:`external_data_files`).
    ``extra`` fills the provenance fields (exporter, notes, parity).
    """
    import onnx

    from trtopt.files import require_file

    p = require_file(path, "ONNX file", "check the path or export the model first (trtopt export)")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError, onnx raises its own; both mean "not ONNX"
        raise TrtoptError(f"{p} is not a readable ONNX model ({type(e).__name__})",
                          "re-export it; the file is corrupt or not ONNX") from e
    if not model.graph.node and not model.graph.output:
        raise TrtoptError(f"{p} is not a readable ONNX model (empty graph)", "re-export it; the file is corrupt or not ONNX")
    if not model.opset_import:  # required by the ONNX spec; a file cut off at its end loses it last
        raise TrtoptError(f"{p} is not a readable ONNX model (no opset imports; truncated?)",
                          "re-export it; the file is corrupt or not ONNX")
    data_files = external_data_files(model, p.parent)
    missing = [f for f in data_files if not f.is_file()]
    if missing:
        raise TrtoptError(f"{p} refers to external data {missing[0].name}, which is missing",
                          f"keep {missing[0].name} next to {p.name}")
    initializer_names = {t.name for t in model.graph.initializer}
    graph_inputs = [v for v in model.graph.input if v.name not in initializer_names]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    size = p.stat().st_size + sum(f.stat().st_size for f in data_files)
    producer = f"{model.producer_name} {model.producer_version}".strip()
    metadata = {m.key: m.value for m in model.metadata_props if m.key.startswith("trtopt.")}
    return OnnxArtifact(
        path=p, data_files=data_files, sha256=sha256_file(p), size_bytes=size, opset=opset,
        inputs=_tensor_infos(graph_inputs), outputs=_tensor_infos(model.graph.output), producer=producer,
        precision=_precision(model), metadata=metadata, **extra,
    )


def _precision(model: Any) -> str:
    """"int8" if the graph quantizes (Q/DQ), "fp16" if most weights are float16, else "fp32"."""
    import onnx

    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        return "int8"
    types = [t.data_type for t in model.graph.initializer]
    half = sum(t == onnx.TensorProto.FLOAT16 for t in types)
    return "fp16" if types and half > len(types) // 2 else "fp32"


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
              "tensor(bool)": "bool", "tensor(int16)": "int16", "tensor(uint16)": "uint16", "tensor(uint32)": "uint32",
              "tensor(uint64)": "uint64"}


def numpy_dtype_of_onnx_type(ort_type: str) -> str:
    """numpy dtype name for an ONNX Runtime type string such as "tensor(float)"."""
    if ort_type not in _ORT_TYPES:
        raise TrtoptError(f"input type {ort_type} is not supported", f"use one of {', '.join(_ORT_TYPES)}")
    return _ORT_TYPES[ort_type]


RANGES_VERSION = 1


@dataclass(frozen=True)
class TensorRange:
    """Calibrated range of one tensor.

    Attributes:
        amax: symmetric range, max |x| kept after the method's clipping (scale = amax / 127 for int8).
        min / max: observed extremes, clipped to [-amax, amax] (asymmetric uint8 activations use these).
    """

    amax: float
    min: float
    max: float

    def to_dict(self) -> dict[str, float]:
        return {"amax": self.amax, "min": self.min, "max": self.max}


@dataclass(frozen=True)
class Ranges:
    """Per-tensor activation ranges: what calibration produces once and every quantization target reads.

    Attributes:
        tensors: tensor name → range.
        method: "auto", "minmax", "entropy", "percentile" or "mse" (or "tensorrt-cache" when read from a cache).
        samples: calibration samples seen.
        data_sha256: fingerprint of the calibration data (the exact arrays, in order).
        model_sha256: sha256 of the FP32 ONNX file calibrated.
        settings: method parameters (bins, percentile, ...).
        choice: how the ranges were chosen: ``fallbacks`` (tensors whose method's answer was implausible,
            why, and what was used instead) and, for method "auto", the evidence (candidates' scores,
            the model's method, per-tensor changes); see `trtopt.quant.calibrate.calibrate`.
        channels: per-channel statistics (``{"axis", "absmax", "mean"}``) of the inputs of GEMM-like
            layers with constant weights, for accuracy recovery (`trtopt.quant.recovery`).
    """

    tensors: dict[str, TensorRange]
    method: str
    samples: int
    data_sha256: str = ""
    model_sha256: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    choice: dict[str, Any] = field(default_factory=dict)
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"version": RANGES_VERSION, "method": self.method, "samples": self.samples,
                "data_sha256": self.data_sha256, "model_sha256": self.model_sha256, "settings": dict(self.settings),
                "choice": dict(self.choice), "tensors": {name: r.to_dict() for name, r in self.tensors.items()},
                "channels": dict(self.channels)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "ranges") -> Ranges:
        """Parse :meth:`to_dict` output; raises TrtoptError naming the field that is missing, of the wrong
        type, or holds an unusable range (see :func:`check_ranges`)."""
        if not isinstance(data, dict) or data.get("version") != RANGES_VERSION or "tensors" not in data:
            raise TrtoptError(f"{where} is not a trtopt ranges file (version {RANGES_VERSION})",
                              "create it with trtopt calibrate")
        for key, kind, what in _RANGES_FIELDS:
            value = data.get(key)
            if key in data and (not isinstance(value, kind) or isinstance(value, bool)
                                or (kind is int and value < 0)):
                raise TrtoptError(f"{where}: field {key!r} is {_short(value)} ({type(value).__name__}), "
                                  f"expected {what}", "recreate it with trtopt calibrate")
        tensors = {name: _tensor_range(name, entry, where) for name, entry in data["tensors"].items()}
        check_ranges(tensors, where)
        return cls(tensors, data.get("method", ""), data.get("samples", 0), data.get("data_sha256", ""),
                   data.get("model_sha256", ""), dict(data.get("settings", {})), dict(data.get("choice", {})),
                   dict(data.get("channels", {})))

    def check_model(self, model: OnnxArtifact, fix: str | None = None) -> None:
        """Raise TrtoptError when these ranges were calibrated on another model than ``model`` (their
        ``model_sha256`` differs from its sha256; ranges without one are not checked): their tensor names and
        values would describe another graph. ``fix`` replaces the default advice (calibrate ``model`` itself)."""
        if self.model_sha256 and self.model_sha256 != model.sha256:
            raise TrtoptError(f"the ranges were calibrated on another model than {model.path.name} (sha256 "
                              f"{self.model_sha256[:12]}…, {model.path.name} is {model.sha256[:12]}…)",
                              fix or f"calibrate {model.path.name} itself (trtopt calibrate)")

    def save(self, path: str | os.PathLike, force: bool = False) -> Path:
        """Write the ranges as JSON atomically; refuses ranges :func:`check_ranges` rejects."""
        from trtopt.files import write_json

        check_ranges(self.tensors, f"ranges for {path}")
        return write_json(path, self.to_dict(), force=force)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Ranges:
        """Read a ranges JSON file written by :meth:`save`; every defect is a TrtoptError naming the file."""
        from trtopt.files import read_json

        return cls.from_dict(read_json(path, "ranges file", "create it with trtopt calibrate"), where=str(path))


#: (key, type, description) of the top-level fields of a ranges file besides "version".
_RANGES_FIELDS = (("tensors", dict, "an object of tensor name → {amax, min, max}"), ("method", str, "a string"),
                  ("samples", int, "a non-negative integer"), ("data_sha256", str, "a string"),
                  ("model_sha256", str, "a string"), ("settings", dict, "an object"), ("choice", dict, "an object"),
                  ("channels", dict, "an object of tensor name → per-channel statistics"))
_RANGE_FIX = "recalibrate (trtopt calibrate); a range is finite numbers with -amax <= min <= max <= amax"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _tensor_range(name: str, entry: Any, where: str) -> TensorRange:
    """One ``tensors`` entry as a TensorRange; its fields must be numbers (not strings, not booleans)."""
    if not isinstance(entry, dict):
        raise TrtoptError(f"{where}: tensor {name!r} is {_short(entry)}, not an object with amax, min and max",
                          _RANGE_FIX)
    values = []
    for key in ("amax", "min", "max"):
        value = entry.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TrtoptError(f"{where}: tensor {name!r} field {key!r} is {_short(value)}, not a number", _RANGE_FIX)
        values.append(float(value))
    return TensorRange(*values)


#: float32's largest value and smallest normal value: INT8 scales (amax / 127, (max - min) / 255) are float32 in
#: ONNX and in TensorRT calibration caches, so a range outside these bounds has an infinite or zero scale.
_FLOAT32_MAX = 3.4028234663852886e38
_FLOAT32_TINY = 1.1754943508222875e-38


def check_ranges(tensors: dict[str, TensorRange], where: str = "ranges") -> None:
    """Raise TrtoptError naming the first tensor whose range no quantizer can use.

    A range must be finite with ``-amax <= min <= max <= amax``, and ``amax`` within float32's range (from 255 times
    its smallest normal value up to its largest: the scale is a float32), so ``amax`` is positive except for
    ``amax == min == max == 0``, the range calibration gives a tensor that was zero on every sample
    (quantizers treat it as a constant). NaN ranges fail inside ONNX Runtime's quantizer; zero, negative or infinite
    ones give an INT8 model that outputs NaN or garbage without any error, so none is read or written.
    """
    for name, r in tensors.items():
        values = (r.amax, r.min, r.max)
        if not all(math.isfinite(v) for v in values):
            problem = "a value is NaN or infinite"
        elif r.amax < 0:
            problem = "amax is negative"
        elif not -r.amax <= r.min <= r.max <= r.amax:  # with amax 0, only min == max == 0 passes
            problem = "min and max must satisfy -amax <= min <= max <= amax"
        elif r.amax > _FLOAT32_MAX or 0 < r.amax < 255 * _FLOAT32_TINY:
            problem = "amax is outside float32's range, so its INT8 scale would be infinite or zero"
        else:
            continue
        raise TrtoptError(f"{where}: tensor {name!r} has amax {r.amax:.6g}, min {r.min:.6g}, max {r.max:.6g}: "
                          f"{problem}", _RANGE_FIX)
