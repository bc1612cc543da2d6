"""PyTorch → ONNX export with dynamic axes, optional onnxslim, and a parity check.

The export is staged: the model is exported, simplified and checked against PyTorch in ONNX Runtime
inside a temporary folder beside the destination, and only a model that passed is moved into place
(``model.onnx`` and, when weights are external, ``model.onnx.data``). A failed export leaves nothing.

Dynamic axes: the batch (axis 0, named ``batch``) unless ``dynamic_batch`` is off, and every axis an
input declares in ``InputSpec.dynamic_axes`` (sequence length, height, width), named by its symbol in the
ONNX signature. Each is checked by parity at two lengths. What the export changes silently is said in
the artifact's notes: inputs the exporter dropped (unused by ``forward``), outputs named after a dict's
keys; an axis the exporter fixed is an error naming the cause.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from trtopt._config import check_choice, check_int, check_ints, field_error
from trtopt.artifacts import OnnxArtifact, inspect_onnx
from trtopt.backends.ort import OrtConfig
from trtopt.data import random_feed, take_batch
from trtopt.errors import TrtoptError, first_line
from trtopt.feeds import Feed, check_feed
from trtopt.files import ensure_writable, staging_dir
from trtopt.measure.compare import Tolerances, compare_outputs, failed_outputs_message
from trtopt.models.spec import InputSpec, LoadedModel, parameter_bytes
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
                on_step: StepCallback | None = None, verbose: bool = False) -> OnnxArtifact:
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
        verbose: let the exporters print their own output and warnings (FX graphs, diagnostics);
            otherwise they are captured (the CLI's ``--debug``).

    Returns:
        The artifact: sizes, hashes, signature, which exporter ran (and why, if it fell back), and
        the parity result per checked batch size.

    Raises:
        TrtoptError: the output exists without ``force`` or its filesystem lacks the space; ``feed`` does
        not fit the model's inputs (the message names the input); both exporters failed (a forward
        parameter the inputs leave out is named with the flag that declares it); the model's outputs are
        per-image lists (detection post-processing); the exporter fixed a dynamic axis (the message names
        the axis and the likely cause, e.g. a per-image loop, and ``--static-batch``); the parity check
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
        feed = check_feed(feed, symbolic_inputs(loaded.inputs), source="export inputs")
    notes: list[str] = []
    example = take_batch(feed, config.example_batch_size)
    loaded = _with_output_names(loaded, example, notes)
    with staging_dir(target) as stage:
        staged = stage / target.name
        step(f"exporting {loaded.spec}")
        exporter = _export(loaded, staged, config, example, notes, verbose)
        step("simplifying and saving")
        _finalize(staged, config, notes, loaded)
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


def symbolic_inputs(inputs: Sequence[InputSpec]) -> tuple[InputSpec, ...]:
    """``inputs`` with each declared dynamic axis as its symbol (a feed may have any length there)."""
    out = []
    for s in inputs:
        axes = dict(s.dynamic_axes)
        out.append(replace(s, shape=tuple(axes.get(i + 1, d) for i, d in enumerate(s.shape))))
    return tuple(out)


def _with_output_names(loaded: LoadedModel, example: Feed, notes: list[str]) -> LoadedModel:
    """``loaded`` with outputs named after what ``forward`` returns (a dict's keys), unless the model names them.

    Raises TrtoptError for outputs that are lists of per-image dicts (detection models' post-processing).
    """
    import torch

    from trtopt.backends.torch import output_names

    args = tuple(torch.from_numpy(example[s.name].copy()) for s in loaded.inputs)
    with torch.inference_mode():
        try:
            result = loaded.module(*args)
        except Exception as e:  # user code: let the exporter report it with the exporter's context
            notes.append(f"forward on the example inputs raised {first_line(e, with_type=True)}")
            return loaded
    if isinstance(result, (list, tuple)) and result and isinstance(result[0], dict):
        raise TrtoptError(f"{loaded.spec} returns a list of per-image results ({', '.join(map(str, result[0]))}): "
                          "detection post-processing (per-image Python loops, NMS, variable box counts) cannot be "
                          "exported as one ONNX graph",
                          "export the network without post-processing, e.g. a factory returning model.backbone "
                          "(or backbone + head), and run box decoding and NMS outside the model")
    if loaded.output_names != ("output",):  # the model names its outputs itself
        return loaded
    names = output_names(result)
    if not names or names == ["output"]:
        return loaded
    if isinstance(result, dict) or hasattr(result, "to_tuple"):
        notes.append(f"outputs named after the dict keys forward returns: {', '.join(names)}")
    return replace(loaded, output_names=tuple(names))


def _export(loaded: LoadedModel, staged: Path, config: ExportConfig, example: Feed, notes: list[str],
            verbose: bool = False) -> str:
    """Run the chosen exporter(s) into ``staged``; returns the name of the one that succeeded."""
    if config.exporter in ("auto", "dynamo"):
        try:
            with _exporter_output(verbose):
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
        with _exporter_output(verbose):
            _torch_export(loaded, staged, config, example, dynamo=False)
    except Exception as e:
        reason = first_line(e, with_type=True)
        missing = re.search(r"missing \d+ required positional arguments?: (.+)$", reason)
        if missing:
            names = re.findall(r"'(\w+)'", missing[1])
            declared = ",".join(f"{s.name}:{'x'.join(map(str, s.dims if isinstance(s.batch, int) else (1, *s.shape)))}"
                                for s in loaded.inputs)
            raise TrtoptError(f"{loaded.spec}'s forward() needs input {names[0]!r}, which its declared inputs "
                              f"({', '.join(s.name for s in loaded.inputs)}) leave out",
                              f"declare it: --input-shape {declared},{names[0]}:1xDIMS --input-dtype {names[0]}:DTYPE "
                              "(README: Declaring inputs)") from e
        floats = [s.name for s in loaded.inputs if s.dtype.startswith("float")]
        if floats and re.search(r"scalar types?: Long|Expected tensor for argument #\d+ 'indices'", reason):
            raise TrtoptError(f"{loaded.spec} takes integer ids (an embedding lookup), but input {floats[0]!r} is "
                              f"declared float32 ({reason})",
                              "declare the dtype and range of id and mask inputs: --input-dtype "
                              + ",".join(f"{n}:int64" for n in floats) + f" --input-range '{floats[0]}:[0,VOCAB-1]'") from e
        raise TrtoptError(f"the TorchScript exporter failed for {loaded.spec} ({reason})",
                          "make the model traceable (no data-dependent Python control flow) or fix the failing op") from e
    return "torchscript"


@contextlib.contextmanager
def _exporter_output(verbose: bool) -> Iterator[None]:
    """The exporters print progress, warnings and FX graphs of their own: shown with ``verbose`` (--debug),
    else captured (trtopt reports what matters itself)."""
    if verbose:
        yield
        return
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


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
    axes = {s.name: ({0: "batch"} if config.dynamic_batch else {}) | dict(s.dynamic_axes) for s in loaded.inputs}
    if any(axes.values()):
        if dynamo:
            # AUTO: the exporter works out which axes are equal (input_ids and attention_mask share one
            # sequence length); _name_axes_ names them and refuses any it fixed
            kwargs["dynamic_shapes"] = tuple({a: torch.export.Dim.AUTO for a in axes[n]} for n in input_names)
        else:
            kwargs["dynamic_axes"] = {**{n: a for n, a in axes.items() if a},
                                      **({n: {0: "batch"} for n in output_names} if config.dynamic_batch else {})}
    if dynamo:
        kwargs.update(dynamo=True, external_data=True, optimize=True, verbose=False)
    else:
        kwargs.update(dynamo=False, do_constant_folding=True)
    torch.onnx.export(loaded.module, args, str(staged), **kwargs)


def _clear(folder: Path) -> None:
    """Empty the staging folder (a failed exporter's or the raw export's files)."""
    for leftover in folder.iterdir():
        leftover.unlink()


def _finalize(staged: Path, config: ExportConfig, notes: list[str], loaded: LoadedModel) -> None:
    """Load the exported model (with any side file), name its outputs and dynamic axes, simplify it, note
    inputs the exporter dropped, and save it per ``external_data``."""
    import onnx

    model = onnx.load(str(staged), load_external_data=True)
    rename_outputs_(model, loaded.output_names)
    _name_axes_(model, loaded, config)
    if config.simplify:
        model = simplify_graph(model, notes)
    kept = {i.name for i in model.graph.input}
    for s in loaded.inputs:
        if s.name not in kept:
            notes.append(f"warning: input {s.name!r} is unused by {loaded.spec}'s forward, so the exporter dropped it: "
                         "the ONNX model takes only " + (", ".join(n.name for n in model.graph.input) or "no inputs")
                         + "; do not feed it in deployment")
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


def _name_axes_(model: Any, loaded: LoadedModel, config: ExportConfig) -> None:
    """Name the dynamic axes of ``model``'s signature in place: ``batch``, and each declared symbol.

    The exporters name the axes themselves (dynamo: ``s72``; shared lengths share a name); every use of
    such a name in inputs, outputs and value_info is renamed. Raises TrtoptError for an axis asked to be
    dynamic that the exporter fixed, naming the cause.
    """
    graph = model.graph
    wanted = {s.name: ({0: "batch"} if config.dynamic_batch else {}) | dict(s.dynamic_axes) for s in loaded.inputs}
    renames: dict[str, str] = {}
    for value in graph.input:
        for axis, symbol in wanted.get(value.name, {}).items():
            dim = value.type.tensor_type.shape.dim[axis]
            if dim.HasField("dim_param"):
                renames.setdefault(dim.dim_param, symbol)
                continue
            if axis == 0:
                raise TrtoptError(f"the exporter fixed the batch axis of input {value.name!r} to {dim.dim_value}: "
                                  f"{loaded.spec}'s forward depends on the batch size (e.g. a per-image Python loop such "
                                  "as `for img in x.unbind(0)`, or a reshape with a literal batch)",
                                  f"export with --static-batch (a model for batches of exactly {dim.dim_value}), or make "
                                  "forward batch-agnostic")
            raise TrtoptError(f"the exporter fixed axis {axis} ({symbol}) of input {value.name!r} to {dim.dim_value}: "
                              f"{loaded.spec}'s forward depends on that length",
                              f"drop --dynamic {value.name}:{axis}={symbol} (export at the fixed length), or make forward "
                              "length-agnostic")
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]


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


def simplify_graph(model: Any, notes: list[str]) -> Any:
    """onnxslim the ONNX ``model`` (a ModelProto); if onnxslim fails, keep the exporter's graph and say so.

    Returns the simplified ModelProto (or ``model`` itself on failure); one line is appended to ``notes``.

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

    A model holding Q/DQ nodes (the export of a fake-quantized model) runs with ONNX Runtime's graph
    optimizations off: the exact Q/DQ arithmetic fake quantization computes, not its fused INT8 kernels.

    Checked at each of ``config.parity_batch_sizes`` (only the example batch without a dynamic batch), and
    for each symbol of the inputs' ``dynamic_axes`` also at half the feed's length along those axes (so
    two lengths of every dynamic axis are checked): an axis specialized during export fails here rather
    than in deployment.

    Returns:
        ``{"batch_<n>": compare_outputs(...) result}`` for each batch size, and ``"<symbol>_<length>"``
        for each dynamic axis (at the first batch size).

    Raises:
        TrtoptError naming the first failing output, its errors and the tolerances; an export that works
        only at the example batch (the cause: forward depends on the batch size; the fix: --static-batch);
        or the first output that holds NaN or inf on either side (NaN weights agree with NaN outputs, but
        no such model is useful).
    """
    from trtopt.backends.ort import OrtRunner
    from trtopt.backends.torch import TorchRunner

    batch_sizes = config.parity_batch_sizes if config.dynamic_batch else (config.example_batch_size,)
    symbolic = replace(loaded, inputs=symbolic_inputs(loaded.inputs))
    checks = [(f"batch_{b}", f"batch {b}", take_batch(feed, b)) for b in batch_sizes]
    for symbol in dict.fromkeys(sym for s in loaded.inputs for _, sym in s.dynamic_axes):
        batch = take_batch(feed, batch_sizes[0])
        length = None
        for s in loaded.inputs:
            for axis, sym in s.dynamic_axes:
                if sym == symbol:
                    length = max(1, batch[s.name].shape[axis] // 2)
                    batch[s.name] = np.ascontiguousarray(np.take(batch[s.name], np.arange(length), axis=axis))
        checks.append((f"{symbol}_{length}", f"batch {batch_sizes[0]} with {symbol} {length}", batch))
    results: dict[str, Any] = {}
    # a Q/DQ export (a fake-quantized model, `trtopt.quant.qat_export`) is compared with the exact float semantics
    # of Q/DQ (graph optimizations off), what fake quantization and TensorRT compute, not with ONNX Runtime's
    # fused S8S8 CPU kernels, which round differently (`trtopt.quant.quantize.evaluation_config`)
    exact = inspect_onnx(onnx_path).precision == "int8"
    ort = OrtConfig(graph_optimization_level="disable") if exact else OrtConfig()
    with TorchRunner(symbolic) as torch_runner, OrtRunner(Path(onnx_path), ort) as ort_runner:
        def run(batch: Feed, where: str) -> dict[str, Any]:
            reference = torch_runner.infer(batch)
            _require_finite(reference, f"{loaded.spec} (PyTorch)", where)
            candidate = ort_runner.infer(batch)
            _require_finite(candidate, f"the exported ONNX model of {loaded.spec}", where)
            return compare_outputs(reference, candidate, config.parity)

        for key, where, batch in checks:
            try:
                result = run(batch, where)
            except TrtoptError:
                result = None
            if (result is None or not result["passed"]) and key.startswith("batch_") and config.dynamic_batch:
                _explain_fixed_batch(loaded, run, batch, config.example_batch_size, where)
            if result is None:
                result = run(batch, where)  # raises the error again, now the cause is known not to be the batch
            results[key] = result
            if not result["passed"]:
                raise TrtoptError(f"ONNX export of {loaded.spec} differs from PyTorch at {where}: "
                                  f"{failed_outputs_message(result)}",
                                  "loosen export.parity tolerances if this is expected, else report the failing op")
    return results


def _explain_fixed_batch(loaded: LoadedModel, run: Any, batch: Feed, example: int, where: str) -> None:
    """When the export fails on ``batch`` (at ``where``) but the same samples pass in batches of the example
    size, the batch got baked into the graph: raise that as the cause (a per-image loop), with --static-batch as
    the fix. Samples that fail at the example size too are not a batch problem (e.g. outputs beyond the parity
    tolerances on those samples): the caller's parity error stands."""
    n = len(next(iter(batch.values())))
    try:
        works = all(run(take_batch(batch, example, start), f"batch {example}")["passed"] for start in range(0, n, example))
    except TrtoptError:
        works = False
    if works:
        raise TrtoptError(f"the exported graph of {loaded.spec} works at the example batch {example} but not at {where}: "
                          "forward depends on the batch size (e.g. a per-image Python loop such as "
                          "`for img in x.unbind(0)` then torch.cat), so the exporter baked batch "
                          f"{example} into the graph",
                          f"export with --static-batch (a model for batches of exactly {example}; the batch comes from "
                          "--input-shape), or make forward batch-agnostic")


def _require_finite(outputs: dict[str, Any], what: str, where: str) -> None:
    for name, value in outputs.items():
        if not np.isfinite(value).all():
            raise TrtoptError(f"{what} computes NaN or inf in output {name!r} at {where} on finite inputs",
                              "check the model's weights (NaN or inf in the checkpoint?) and its arithmetic; "
                              "a model that outputs NaN is not exported")
