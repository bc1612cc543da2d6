"""The edge-export stage: a PyTorch model → ExecuTorch ``.pte`` (XNNPACK) or LiteRT ``.tflite``, FP32 or INT8.

These are the other deployment systems the seed article names (PyTorch Mobile, whose successor is
ExecuTorch; TensorFlow Lite, now LiteRT), next to ONNX Runtime and TensorRT. Both convert from
``torch.export`` graphs and quantize with PyTorch's PT2E flow (`trtopt.edge.convert`); the format's
converter (`trtopt.edge.executorch`, `trtopt.edge.litert`) is imported for the suffix asked for. The model
file and its sidecar are written atomically. The runtimes are optional extras:
``pip install 'trtopt[executorch]'``, ``'trtopt[litert]'`` or ``'trtopt[edge]'`` for both.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from trtopt.edge.artifact import FORMATS, SIDECAR_VERSION, EdgeArtifact, edge_format, inspect_edge, sidecar_path
from trtopt.edge.convert import EdgeConfig
from trtopt.errors import TrtoptError
from trtopt.feeds import Feed
from trtopt.progress import StepCallback

# backend name → the module whose ``convert(module, example, config, batches)`` writes that format
_CONVERTERS = {"executorch": "trtopt.edge.executorch", "litert": "trtopt.edge.litert"}

def export_edge(loaded: Any, out_path: str | os.PathLike, config: EdgeConfig = EdgeConfig(),
                calibration: Feed | None = None, force: bool = False,
                on_step: StepCallback | None = None) -> EdgeArtifact:
    """Convert a `LoadedModel` to the format named by ``out_path``'s suffix (.pte or .tflite).

    Args:
        loaded: the PyTorch model and its input specs (`trtopt.models.load.load_model`).
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
    module = importlib.import_module(_CONVERTERS[backend])
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
