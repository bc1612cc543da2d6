"""PyTorch → ONNX export with a dynamic batch axis, optional onnxslim, and a parity check.

The export is staged: the model is exported, simplified and checked against PyTorch in ONNX Runtime
inside a temporary folder beside the destination, and only a model that passed is moved into place
(``model.onnx`` and, when weights are external, ``model.onnx.data``). A failed export leaves nothing.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtopt._config import MAX_BATCH_SIZE, check_choice, check_int, check_ints, field_error
from trtopt.artifacts import OnnxArtifact, inspect_onnx
from trtopt.backends.ort import OrtConfig
from trtopt.data import random_feed, take_batch
from trtopt.errors import TrtoptError, first_line
from trtopt.feeds import Feed, check_feed
from trtopt.files import ensure_writable, staging_dir
from trtopt.measure.compare import Tolerances, compare_outputs, failed_outputs_message
from trtopt.models.spec import LoadedModel, parameter_bytes
from trtopt.progress import StepCallback

# Protobuf cannot serialize a message over 2 GiB; stay clear of it when weights are inline.
INLINE_LIMIT_BYTES = 1_800_000_000


EXPORTERS = ("auto", "dynamo", "torchscript")

EXTERNAL_DATA = ("auto", "always", "never")

@dataclass(frozen=True)
class ExportConfig:
    """How a PyTorch model becomes ONNX.

    Attributes:
        opset: ONNX opset; the dynamo exporter needs >= 18.
        dynamic_batch: make axis 0 of every input and output symbolic ("batch").
        exporter: "dynamo" (torch.export based), "torchscript" (the legacy tracer), or "auto": dynamo,
            falling back to TorchScript when dynamo fails; the artifact records which one ran and why.
        example_batch_size: batch of the example inputs used for tracing. At least 2, otherwise the
            exporter may specialize the batch axis to 1.
        simplify: run onnxslim (constant folding, dead-node removal, fusion of trivial patterns).
        external_data: "auto" keeps weights inline unless the model is near protobuf's 2 GB limit,
            "always" writes them to ``<name>.onnx.data``, "never" forbids the side file.
        check_parity: run the exported model in ONNX Runtime and compare it with PyTorch before the
            file is moved into place; a failing export is never written.
        parity_batch_sizes: batch sizes checked (proves the dynamic batch axis works).
        parity: error tolerances for the parity check (FP32 vs FP32: tight).
    """

    opset: int = 18
    dynamic_batch: bool = True
    exporter: str = "auto"
    example_batch_size: int = 2
    simplify: bool = True
    external_data: str = "auto"
    check_parity: bool = True
    parity_batch_sizes: tuple[int, ...] = (1, 8)
    parity: Tolerances = field(default_factory=lambda: Tolerances(atol=1e-4, rtol=1e-3, min_cosine=0.9999))

    def __post_init__(self) -> None:
        check_choice("exporter", self.exporter, EXPORTERS)
        check_choice("external_data", self.external_data, EXTERNAL_DATA)
        check_int("opset", self.opset, 7, 25, fix="use an opset such as 17 or 18")
        if self.exporter == "dynamo" and self.opset < 18:
            raise field_error("opset", self.opset, "is below 18, the lowest opset the dynamo exporter emits",
                              "use opset 18+ or exporter 'torchscript'")
        check_int("example_batch_size", self.example_batch_size)
        check_ints("parity_batch_sizes", self.parity_batch_sizes)


def export_onnx(loaded: LoadedModel, path: str | os.PathLike, config: ExportConfig = ExportConfig(),
                feed: Feed | None = None, force: bool = False,
                on_step: StepCallback | None = None) -> OnnxArtifact:
    """Export ``loaded`` to ONNX at ``path`` and return the checked artifact.

    Args:
        loaded: the model and its input specs (see `trtopt.models.load.load_model`).
        path: destination ``.onnx`` file; a ``<path>.data`` side file is written beside it when the
            weights are external.
        config: exporter, opset, dynamic batch, simplification, external data, parity tolerances.
        feed: real inputs for tracing and the parity check (axis 0 = samples); seeded random inputs
            of the model's input specs when None.
        force: overwrite existing outputs.
        on_step: called with a short description as each step starts (for progress display).

    Returns:
        The artifact: sizes, hashes, signature, which exporter ran (and why, if it fell back), and
        the parity result per checked batch size.

    Raises:
        TrtoptError: the output exists without ``force`` or its filesystem lacks the space; ``feed`` does
        not fit the model's inputs (the message names the input); both exporters failed; the parity check
        failed (the message names the output and its errors), including a model that computes NaN or inf.
    """
    step = on_step or (lambda _msg: None)
    # The staging folder holds the exporter's file and the final one: about twice the weights at the peak.
    target = ensure_writable(path, force, size_bytes=2 * parameter_bytes(loaded.module))
    data_target = target.with_name(target.name + ".data")
    if data_target.exists() and not force:
        raise TrtoptError(f"output {data_target} already exists", "pass --force to overwrite it or choose another path")
    if feed is None:
        feed = random_feed(loaded.inputs, max(8, config.example_batch_size), seed=0)
    else:  # a feed that does not fit would otherwise surface as an exporter failure (KeyError, shape error)
        feed = check_feed(feed, loaded.inputs, source="export inputs")
    notes: list[str] = []
    with staging_dir(target) as stage:
        staged = stage / target.name
        step(f"exporting {loaded.spec}")
        exporter = _export(loaded, staged, config, take_batch(feed, config.example_batch_size), notes)
        step("simplifying and saving")
        _finalize(staged, config, notes, loaded.output_names)
        parity: dict[str, Any] = {}
        if config.check_parity:
            step("checking parity with PyTorch in ONNX Runtime")
            parity = check_parity(loaded, staged, feed, config)
        step("writing")
        staged_data = staged.with_name(staged.name + ".data")
        if data_target.exists():
            data_target.unlink()
        if staged_data.exists():
            os.replace(staged_data, data_target)
        os.replace(staged, target)
    return inspect_onnx(target, exporter=exporter, notes=tuple(notes), parity=parity)


def _export(loaded: LoadedModel, staged: Path, config: ExportConfig, example: Feed, notes: list[str]) -> str:
    """Run the chosen exporter(s) into ``staged``; returns the name of the one that succeeded."""
    if config.exporter in ("auto", "dynamo"):
        try:
            _torch_export(loaded, staged, config, example, dynamo=True)
            return "dynamo"
        except Exception as e:  # the dynamo exporter raises many types (torch._dynamo, onnxscript, ...)
            reason = first_line(e, with_type=True)
            if config.exporter == "dynamo":
                raise TrtoptError(f"the dynamo exporter failed for {loaded.spec} ({reason})",
                                  "try exporter: torchscript (--exporter torchscript)") from e
            notes.append(f"dynamo exporter failed ({reason}); fell back to the TorchScript exporter")
            _clear(staged.parent)
    try:
        _torch_export(loaded, staged, config, example, dynamo=False)
    except Exception as e:
        reason = first_line(e, with_type=True)
        raise TrtoptError(f"the TorchScript exporter failed for {loaded.spec} ({reason})",
                          "make the model traceable (no data-dependent Python control flow) or fix the failing op") from e
    return "torchscript"


def _torch_export(loaded: LoadedModel, staged: Path, config: ExportConfig, example: Feed, dynamo: bool) -> None:
    import torch

    # Distinct tensor objects per input: the exporter can silently merge an input passed twice.
    args = tuple(torch.from_numpy(example[s.name].copy()) for s in loaded.inputs)
    input_names = [s.name for s in loaded.inputs]
    output_names = list(loaded.output_names)
    # The dynamo exporter can give an output's new name to an internal value as well (seen with
    # all-MiniLM: two definitions of "embedding"), so its outputs are renamed afterwards instead.
    kwargs: dict[str, Any] = dict(input_names=input_names, opset_version=config.opset)
    if not dynamo:
        kwargs["output_names"] = output_names
    if config.dynamic_batch:
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=MAX_BATCH_SIZE)
            kwargs["dynamic_shapes"] = tuple({0: batch} for _ in args)
        else:
            kwargs["dynamic_axes"] = {n: {0: "batch"} for n in input_names + output_names}
    if dynamo:
        kwargs.update(dynamo=True, external_data=True, optimize=True, verbose=False)
    else:
        kwargs.update(dynamo=False, do_constant_folding=True)
    # The exporters print progress and warnings of their own; trtopt reports what matters itself.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(loaded.module, args, str(staged), **kwargs)


def _clear(folder: Path) -> None:
    """Empty the staging folder (a failed exporter's or the raw export's files)."""
    for leftover in folder.iterdir():
        leftover.unlink()


def _finalize(staged: Path, config: ExportConfig, notes: list[str], output_names: Sequence[str]) -> None:
    """Load the exported model (with any side file), simplify it, and save it per ``external_data``."""
    import onnx

    model = onnx.load(str(staged), load_external_data=True)
    rename_outputs_(model, output_names)
    if config.simplify:
        model = _simplify(model, notes)
    _clear(staged.parent)
    size = model.ByteSize()
    external = config.external_data == "always" or (config.external_data == "auto" and size > INLINE_LIMIT_BYTES)
    if not external and size > INLINE_LIMIT_BYTES:
        raise TrtoptError(f"the model is {size / 1e9:.2f} GB, too large for an ONNX file without external data",
                          "set export.external_data to auto or always")
    if external:
        onnx.save_model(model, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=staged.name + ".data", size_threshold=1024)
        notes.append(f"weights in external data file {staged.name}.data")
    else:
        onnx.save_model(model, str(staged))
    try:
        onnx.checker.check_model(str(staged))
    except onnx.checker.ValidationError as e:
        raise TrtoptError(f"the exported ONNX model is invalid: {first_line(e)}",
                          "try --exporter torchscript or another opset") from e


def rename_outputs_(model: Any, names: Sequence[str]) -> None:
    """Rename the graph outputs of ``model`` in place to ``names`` (positionally), keeping names unique.

    An internal value that already carries a wanted name is renamed first (``<name>__0``), then every
    reference to the old output name (node inputs/outputs, value_info, graph outputs) is rewritten.
    """
    graph = model.graph
    for output, new in zip(graph.output, names):
        old = output.name
        if old == new:
            continue
        taken = {v for node in graph.node for v in node.output} | {i.name for i in graph.input} | {
            t.name for t in graph.initializer}
        if new in taken:
            _rename_value(graph, new, f"{new}__0")
        _rename_value(graph, old, new)


def _rename_value(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if v == old else v for v in node.input]
        node.output[:] = [new if v == old else v for v in node.output]
    for info in list(graph.output) + list(graph.value_info) + list(graph.input):
        if info.name == old:
            info.name = new
    for init in graph.initializer:
        if init.name == old:
            init.name = new


def _simplify(model: Any, notes: list[str]) -> Any:
    """onnxslim the model; if onnxslim fails, keep the exporter's graph and say so in the notes.

    onnxslim walks the graph recursively, so deep graphs (transformers) need more than Python's default
    recursion limit; it is raised for the call and restored afterwards.
    """
    import onnxslim

    nodes_before = len(model.graph.node)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            slim = onnxslim.slim(model)
    except Exception as e:  # a simplifier bug must not lose a valid export
        notes.append(f"onnxslim failed ({type(e).__name__}); kept the exporter's graph")
        return model
    finally:
        sys.setrecursionlimit(limit)
    notes.append(f"onnxslim: {nodes_before} -> {len(slim.graph.node)} nodes")
    return slim


def check_parity(loaded: LoadedModel, onnx_path: str | os.PathLike, feed: Feed,
                 config: ExportConfig = ExportConfig()) -> dict[str, Any]:
    """Run PyTorch and ONNX Runtime (CPU, FP32) on the same real inputs and compare every output.

    Checked at each of ``config.parity_batch_sizes`` (only the first one without a dynamic batch), so
    a batch axis that was specialized during export fails here rather than in deployment.

    Returns:
        ``{"batch_<n>": compare_outputs(...) result}`` for each batch size.

    Raises:
        TrtoptError naming the first failing output, its errors and the tolerances; or the first output
        that holds NaN or inf on either side (NaN weights agree with NaN outputs, but no such model is useful).
    """
    from trtopt.backends.ort import OrtRunner
    from trtopt.backends.torch import TorchRunner

    batch_sizes = config.parity_batch_sizes if config.dynamic_batch else (config.example_batch_size,)
    results: dict[str, Any] = {}
    with TorchRunner(loaded) as torch_runner, OrtRunner(Path(onnx_path), OrtConfig()) as ort_runner:
        for batch_size in batch_sizes:
            batch = take_batch(feed, batch_size)
            reference = torch_runner.infer(batch)
            _require_finite(reference, f"{loaded.spec} (PyTorch)", batch_size)
            candidate = ort_runner.infer(batch)
            _require_finite(candidate, f"the exported ONNX model of {loaded.spec}", batch_size)
            result = compare_outputs(reference, candidate, config.parity)
            results[f"batch_{batch_size}"] = result
            if not result["passed"]:
                raise TrtoptError(f"ONNX export of {loaded.spec} differs from PyTorch at batch {batch_size}: "
                                  f"{failed_outputs_message(result)}",
                                  "loosen export.parity tolerances if this is expected, else report the failing op")
    return results


def _require_finite(outputs: dict[str, Any], what: str, batch_size: int) -> None:
    import numpy as np

    for name, value in outputs.items():
        if not np.isfinite(value).all():
            raise TrtoptError(f"{what} computes NaN or inf in output {name!r} at batch {batch_size} on finite inputs",
                              "check the model's weights (NaN or inf in the checkpoint?) and its arithmetic; "
                              "a model that outputs NaN is not exported")
