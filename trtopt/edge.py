"""Edge formats: a PyTorch model → ExecuTorch ``.pte`` (XNNPACK) or LiteRT ``.tflite``, FP32 or INT8.

These are the other deployment systems the seed article names (PyTorch Mobile, whose successor is
ExecuTorch; TensorFlow Lite, now LiteRT), next to ONNX Runtime and TensorRT. Both convert from
``torch.export`` graphs, and both quantize with PyTorch's PT2E flow: ``prepare_pt2e`` inserts observers
for the runtime's quantizer, the observers see trtopt's calibration data, ``convert_pt2e`` folds them
into quantize/dequantize pairs, and the converter lowers those to int8 kernels (XNNPACK's QS8 ops in
ExecuTorch; full-integer TFLite ops in LiteRT, int8 tensors in and out).

Both formats are built for one input shape (the batch size included): ``EdgeConfig.batch_size``.
A JSON sidecar next to the model (``model.pte.json``) records what the file itself does not: input
names, shapes and dtypes, output names, precision, and how it was made. Both are written atomically.

The runtimes are optional extras, imported only here and in their backends:
``pip install 'trtopt[executorch]'``, ``'trtopt[litert]'`` or ``'trtopt[edge]'`` for both.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trtopt.errors import TrtoptError

# file suffix → (backend name, the extra that installs it)
FORMATS = {"pte": ("executorch", "executorch"), "tflite": ("litert", "litert")}
PRECISIONS = ("fp32", "int8")
SIDECAR_VERSION = 1
Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class EdgeConfig:
    """How a model becomes a ``.pte`` / ``.tflite`` file.

    Attributes:
        precision: "fp32" or "int8" (PT2E static quantization: int8 weights and activations).
        batch_size: the batch the file is built for (both formats are static-shape here).
        per_channel: per-output-channel weight scales for int8 (depthwise convolutions need them).
        calibration_samples: samples of the calibration feed the observers see (None: all of it).
    """

    precision: str = "fp32"
    batch_size: int = 1
    per_channel: bool = True
    calibration_samples: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise TrtoptError(f"edge precision {self.precision!r} is not supported", f"use one of {', '.join(PRECISIONS)}")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise TrtoptError(f"edge batch_size {self.batch_size!r} is not a positive integer", "use e.g. 1")
        if self.calibration_samples is not None and (not isinstance(self.calibration_samples, int)
                                                     or self.calibration_samples < 1):
            raise TrtoptError(f"edge calibration_samples {self.calibration_samples!r} is not a positive integer",
                              "give a sample count, or None for all the data")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EdgeArtifact:
    """A ``.pte`` or ``.tflite`` file and what its sidecar says about it.

    Attributes:
        path: the model file; ``sidecar`` is ``<path>.json``.
        format: "pte" or "tflite"; ``backend``: "executorch" or "litert".
        precision: "fp32" or "int8".
        sha256 / size_bytes: of the model file (its deployable size).
        inputs: name, full shape (batch included) and dtype of each input, in call order.
        output_names: names of the outputs, in order.
        source: the PyTorch spec it was made from; ``notes``: how.
    """

    path: Path
    format: str
    backend: str
    precision: str
    sha256: str
    size_bytes: int
    inputs: tuple[dict[str, Any], ...]
    output_names: tuple[str, ...]
    source: str = ""
    notes: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def sidecar(self) -> Path:
        return sidecar_path(self.path)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(path=str(self.path), inputs=list(self.inputs), output_names=list(self.output_names), notes=list(self.notes))
        return d


def sidecar_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".json")


def edge_format(path: str | os.PathLike) -> str | None:
    """"pte" / "tflite" for a path with that suffix, else None."""
    suffix = Path(path).suffix.lower().lstrip(".")
    return suffix if suffix in FORMATS else None


def inspect_edge(path: str | os.PathLike) -> EdgeArtifact:
    """Read an edge model's sidecar and check the file is the one it describes.

    Raises TrtoptError for an unknown suffix, a missing file or sidecar, or a file changed since.
    """
    from trtopt.files import sha256_file

    p = Path(path)
    fmt = edge_format(p)
    if fmt is None:
        raise TrtoptError(f"{p.name} is not an edge model", "give a .pte (ExecuTorch) or .tflite (LiteRT) file")
    if not p.is_file():
        raise TrtoptError(f"edge model {p} does not exist", "create it with trtopt edge-export")
    side = sidecar_path(p)
    if not side.is_file():
        raise TrtoptError(f"{p.name} has no sidecar {side.name} (input names and shapes)",
                          "create the model with trtopt edge-export, which writes both")
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
        if data.get("version") != SIDECAR_VERSION:
            raise ValueError(f"version {data.get('version')!r}")
        art = EdgeArtifact(path=p, format=fmt, backend=FORMATS[fmt][0], precision=data["precision"],
                           sha256=data["sha256"], size_bytes=p.stat().st_size,
                           inputs=tuple(data["inputs"]), output_names=tuple(data["output_names"]),
                           source=data.get("source", ""), notes=tuple(data.get("notes", ())),
                           config=dict(data.get("config", {})))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise TrtoptError(f"sidecar {side} is not a trtopt edge sidecar ({e})", "re-create the model with trtopt edge-export") from e
    if sha256_file(p) != art.sha256:
        raise TrtoptError(f"{p.name} changed since {side.name} was written", "re-create the model with trtopt edge-export")
    return art


def require(module: str, backend: str) -> None:
    """Raise the missing-extra error for ``backend`` when ``module`` is not importable."""
    import importlib.util

    from trtopt.errors import missing_dependency

    if importlib.util.find_spec(module) is None:
        extra = next(extra for name, extra in FORMATS.values() if name == backend)
        raise missing_dependency(module, extra, f"the {backend} backend")


def export_edge(loaded: Any, out_path: str | os.PathLike, config: EdgeConfig = EdgeConfig(),
                calibration: Feed | None = None, force: bool = False,
                on_step: Callable[[str], None] | None = None) -> EdgeArtifact:
    """Convert a `LoadedModel` to the format named by ``out_path``'s suffix (.pte or .tflite).

    Args:
        loaded: the PyTorch model and its input specs (`trtopt.models.load_model`).
        out_path: ``*.pte`` (ExecuTorch, XNNPACK delegate) or ``*.tflite`` (LiteRT).
        config: precision, batch size, per-channel weights.
        calibration: for int8: a feed (input name → array, samples on axis 0) the observers see,
            ``config.batch_size`` samples per forward pass; a trailing partial batch is dropped.
        force: overwrite an existing output (and its sidecar).

    Returns:
        The written file's :class:`EdgeArtifact`. Nothing is left behind when conversion fails.

    Raises:
        TrtoptError: unknown suffix; the extra is not installed (names it); int8 without calibration
        data or with fewer samples than one batch; the converter rejects the model (naming the op
        and the target where the converter says which).
    """
    from trtopt.files import ensure_writable, sha256_file, staging_dir, write_json

    step = on_step or (lambda _msg: None)
    target = ensure_writable(out_path, force)
    fmt = edge_format(target)
    if fmt is None:
        raise TrtoptError(f"output {target.name} has no edge suffix", "name it *.pte (ExecuTorch) or *.tflite (LiteRT)")
    ensure_writable(sidecar_path(target), force)
    backend = FORMATS[fmt][0]
    module = importlib.import_module(f"trtopt.backends.{backend}")
    example = example_inputs(loaded, config.batch_size, calibration)
    batches: list[tuple[Any, ...]] = []
    if config.precision == "int8":
        if calibration is None:
            raise TrtoptError("int8 needs calibration data", "pass --data (e.g. skimage:photos) for the observers")
        batches = list(calibration_batches(loaded, calibration, config))
        if not batches:
            raise TrtoptError(f"the calibration data hold fewer samples than one batch ({config.batch_size})",
                              "give more samples or a smaller batch size")
    step(f"converting to {fmt} ({backend}, {config.precision}, batch {config.batch_size})")
    data, notes = module.convert(loaded.module, example, config, batches)
    with staging_dir(target) as stage:
        staged = stage / target.name
        staged.write_bytes(data)
        digest = sha256_file(staged)
        inputs = tuple({"name": s.name, "shape": [config.batch_size, *s.shape], "dtype": s.dtype} for s in loaded.inputs)
        meta = {"version": SIDECAR_VERSION, "format": fmt, "backend": backend, "precision": config.precision,
                "sha256": digest, "inputs": list(inputs), "output_names": list(loaded.output_names),
                "source": loaded.spec, "config": config.to_dict(), "notes": list(notes),
                "calibration_batches": len(batches)}
        write_json(stage / sidecar_path(target).name, meta)
        os.replace(staged, target)
        os.replace(stage / sidecar_path(target).name, sidecar_path(target))
    return inspect_edge(target)


def example_inputs(loaded: Any, batch_size: int, feed: Feed | None = None) -> tuple[Any, ...]:
    """One batch of inputs as torch tensors, in the model's input order (from ``feed`` or seeded random)."""
    import torch

    from trtopt.data import random_feed, take_batch

    source = feed if feed is not None else random_feed(loaded.inputs, batch_size, seed=0)
    batch = take_batch(source, batch_size)
    return tuple(torch.from_numpy(np.ascontiguousarray(batch[s.name]).astype(s.dtype)) for s in loaded.inputs)


def calibration_batches(loaded: Any, feed: Feed, config: EdgeConfig) -> Iterator[tuple[Any, ...]]:
    """Full batches of ``config.batch_size`` samples (static shapes) as torch tensors, in input order."""
    import torch

    names = [s.name for s in loaded.inputs]
    total = len(feed[names[0]])
    if config.calibration_samples is not None:
        total = min(total, config.calibration_samples)
    for start in range(0, total - config.batch_size + 1, config.batch_size):
        yield tuple(torch.from_numpy(np.ascontiguousarray(feed[n][start:start + config.batch_size]).astype(s.dtype))
                    for n, s in zip(names, loaded.inputs))


def pt2e_quantize(module: Any, example: tuple[Any, ...], quantizer: Any, batches: list[tuple[Any, ...]],
                  fold_quantize: bool = True) -> Any:
    """PT2E static quantization: export, insert ``quantizer``'s observers, run ``batches``, convert.

    ``fold_quantize`` stores weights as int8 constants (what ExecuTorch needs: it has no kernel for
    quantizing a weight at run time); LiteRT's converter wants the float weights with their Q/DQ ops.
    Returns the converted graph module (quantize/dequantize pairs around int8-capable ops).
    """
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = torch.export.export(module, example).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for batch in batches:
            prepared(*batch)
    return convert_pt2e(prepared, fold_quantize=fold_quantize)


def converter_error(error: Exception, target: str, stage: str) -> TrtoptError:
    """A converter's exception as one line naming the op (``aten.X``) and the target, when it names one."""
    import re

    text = " ".join(str(error).split())
    found = re.search(r"(aten[.:]{1,2}[A-Za-z_0-9]+(?:\.[A-Za-z_0-9]+)?)", text)
    what = f"op {found.group(1)} is not supported by target {target}" if found else f"target {target} rejects the model"
    return TrtoptError(f"{stage}: {what} ({type(error).__name__}: {text[:220]})",
                       "replace or remove that op in the model, or deploy it with onnxruntime")


def check_static_feed(feed: dict[str, np.ndarray], inputs: list[tuple[str, tuple[int, ...], str]],
                      model_name: str) -> dict[str, np.ndarray]:
    """Feed checked against static input shapes (batch included) and cast to the inputs' dtypes."""
    out = {}
    for name, shape, dtype in inputs:
        if name not in feed:
            raise TrtoptError(f"{model_name} needs input {name!r}, the feed has {', '.join(feed) or 'none'}",
                              f"provide {', '.join(n for n, _, _ in inputs)}")
        arr = np.asarray(feed[name])
        if tuple(arr.shape) != shape:
            raise TrtoptError(f"input {name!r} of {model_name} is built for shape {shape}, got {tuple(arr.shape)}",
                              f"use batch size {shape[0]} (edge models are static), or re-export with --batch-size")
        out[name] = np.ascontiguousarray(arr.astype(dtype, copy=False))
    return out
