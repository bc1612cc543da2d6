"""Records passed between stages: files with their hashes, sizes and how they were made.

An artifact is a frozen record, never a live object: it names files on disk and describes them, so it
can be written to JSON, moved to another machine, and checked later (the hash says whether the file is
still the one that was measured).
"""

from __future__ import annotations

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
        exporter: "dynamo" or "torchscript" when trtopt exported it, else None.
        notes: how it was made, e.g. why the exporter fell back, whether it was simplified.
        parity: the parity-check result (see `trtopt.compare.compare_outputs`), per batch size.
    """

    path: Path
    data_files: tuple[Path, ...]
    sha256: str
    size_bytes: int
    opset: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    producer: str = ""
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
    """The side files an ONNX ModelProto (loaded without its external data) refers to."""
    import onnx

    locations: list[str] = []
    for tensor in _all_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location" and entry.value not in locations:
                    locations.append(entry.value)
    return tuple(base_dir / loc for loc in locations)


def inspect_onnx(path: str | os.PathLike, **extra: Any) -> OnnxArtifact:
    """Describe an ONNX file on disk, checking that it and its side files are usable.

    Raises TrtoptError for a missing file, a file that is not ONNX, or a missing ``.onnx.data``.
    ``extra`` fills the provenance fields (exporter, notes, parity).
    """
    import onnx

    p = Path(path)
    if not p.is_file():
        raise TrtoptError(f"ONNX file {p} does not exist", "check the path or export the model first (trtopt export)")
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
    return OnnxArtifact(
        path=p, data_files=data_files, sha256=sha256_file(p), size_bytes=size, opset=opset,
        inputs=_tensor_infos(graph_inputs), outputs=_tensor_infos(model.graph.output), producer=producer, **extra,
    )


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
              "tensor(bool)": "bool"}


def numpy_dtype_of_onnx_type(ort_type: str) -> str:
    """numpy dtype name for an ONNX Runtime type string such as "tensor(float)"."""
    if ort_type not in _ORT_TYPES:
        raise TrtoptError(f"input type {ort_type} is not supported", f"use one of {', '.join(_ORT_TYPES)}")
    return _ORT_TYPES[ort_type]
