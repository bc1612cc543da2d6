"""Side-by-side latency of several models: open each on its backend, time them interleaved per batch size.

A *candidate* is one model on one backend: a PyTorch spec runs eagerly in PyTorch, an ``.onnx`` file runs
in ONNX Runtime. All candidates get the same inputs and the same thread count, and are timed in one
process, interleaved, so the speedup of each against the first (the baseline) is like for like.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trtopt.artifacts import OnnxArtifact, inspect_onnx
from trtopt.backends.base import Runner
from trtopt.backends.ort import OrtConfig
from trtopt.data import DEFAULT_INTEGER_HIGH, integer_input_limits, take_batch
from trtopt.edge.artifact import edge_format
from trtopt.errors import TrtoptError
from trtopt.feeds import Feed
from trtopt.measure.profile import (
    TimingConfig,
    compare_latency,
    load_average_1min,
    quality_flags,
    speedup_interval,
    time_interleaved,
)
from trtopt.models.inputs import InputDeclaration, declare_inputs
from trtopt.models.load import load_model
from trtopt.models.spec import InputSpec, LoadedModel, is_onnx_path, parameter_bytes, parameter_count
from trtopt.progress import ProgressCallback


@dataclass
class Candidate:
    """One model on one backend, opened and ready to time; ``with`` closes its runner on exit.

    Attributes:
        name: label in reports ("pytorch-fp32", "resnet18.onnx").
        backend / precision: what runs it.
        runner: the open runner.
        inputs: its inputs (without batch axis), used to build feeds.
        size_bytes: deployable size (ONNX incl. side files; parameter bytes for a PyTorch model).
        parameters: parameter count when known.
        source: the spec or path it came from.
    """

    name: str
    backend: str
    precision: str
    runner: Runner
    inputs: tuple[InputSpec, ...]
    size_bytes: int | None = None
    parameters: int | None = None
    source: str = ""
    artifact: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "backend": self.backend, "precision": self.precision, "source": self.source,
                "size_bytes": self.size_bytes, "parameters": self.parameters, "runner": self.runner.describe()}

    def __enter__(self) -> Candidate:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.runner.close()


def torch_candidate(loaded: LoadedModel, name: str = "pytorch-fp32", threads: int | None = None) -> Candidate:
    """The eager PyTorch FP32 model as a candidate (the baseline of every report)."""
    from trtopt.backends import get_backend

    runner = get_backend("torch").load(loaded, threads=threads)
    return Candidate(name, "torch", "fp32", runner, loaded.inputs, size_bytes=parameter_bytes(loaded.module),
                     parameters=parameter_count(loaded.module), source=loaded.spec)


def onnx_candidate(artifact: OnnxArtifact | str | os.PathLike, name: str | None = None,
                   ort: OrtConfig | None = None, inputs: Sequence[InputDeclaration] = (),
                   threads: int | None = None) -> Candidate:
    """An ONNX model in ONNX Runtime as a candidate.

    Without ``ort``, the session computes what the model's target would (`trtopt.quant.quantize.evaluation_config`:
    a TensorRT-target Q/DQ model runs with exact Q/DQ semantics) on ``threads`` threads.
    """
    from trtopt.backends import get_backend
    from trtopt.quant.quantize import evaluation_config

    art = artifact if isinstance(artifact, OnnxArtifact) else inspect_onnx(artifact)
    runner = get_backend("onnxruntime").load(art, config=ort or evaluation_config(art, threads))
    return Candidate(name or art.path.name, "onnxruntime", art.precision, runner, onnx_input_specs(art, inputs),
                     size_bytes=art.size_bytes, source=str(art.path), artifact=art.to_dict())


def onnx_input_specs(art: OnnxArtifact, inputs: Sequence[InputDeclaration] = ()) -> tuple[InputSpec, ...]:
    """Input specs from an ONNX signature, with ``inputs`` (declarations) applied.

    Axes the signature leaves symbolic stay symbolic (their length comes from the data; random data
    needs them declared). Integer inputs that index a table get its size as the upper bound of random ids.
    """
    limits = integer_input_limits(_graph(art)) if any("int" in t.dtype for t in art.inputs) else {}
    specs = []
    for t in art.inputs:
        # integer ids stay inside the table they index (an embedding of 50 rows takes ids 0..49)
        high = 2 if t.dtype == "bool" else (limits.get(t.name, DEFAULT_INTEGER_HIGH) if "int" in t.dtype else 1.0)
        specs.append(replace(InputSpec.from_dims(t.name, t.shape, t.dtype), low=0, high=high))
    return declare_inputs(specs, inputs, art.path.name)


def _graph(art: OnnxArtifact) -> Any:
    import onnx

    return onnx.load(str(art.path), load_external_data=False)


def edge_candidate(path: str | os.PathLike, name: str | None = None, threads: int | None = None) -> Candidate:
    """An ExecuTorch ``.pte`` or LiteRT ``.tflite`` file (with its trtopt sidecar) on its runtime as a candidate."""
    from trtopt.backends import get_backend
    from trtopt.edge.artifact import inspect_edge

    art = inspect_edge(path)
    runner = get_backend(art.backend).load(art, threads=threads)
    inputs = tuple(InputSpec(i["name"], tuple(i["shape"][1:]), i["dtype"], 0, 2 if i["dtype"] == "bool" else
                             (100 if "int" in i["dtype"] else 1.0)) for i in art.inputs)
    return Candidate(name or art.path.name, art.backend, art.precision, runner, inputs, size_bytes=art.size_bytes,
                     source=str(art.path), artifact=art.to_dict())


def open_candidate(source: str, threads: int | None = None, ort: OrtConfig | None = None,
                   inputs: Sequence[InputDeclaration] = (), checkpoint: str | None = None) -> Candidate:
    """Open a spec: ``.onnx`` → ONNX Runtime, ``.pte`` → ExecuTorch, ``.tflite`` → LiteRT, anything else →
    PyTorch eager (see `trtopt.models.load`)."""
    if is_onnx_path(source):
        return onnx_candidate(source, ort=ort, inputs=inputs, threads=threads)
    if edge_format(source):
        return edge_candidate(source, threads=threads)
    loaded = load_model(source, checkpoint=checkpoint, inputs=inputs)
    return torch_candidate(loaded, name=source, threads=threads)


def bench(candidates: Sequence[Candidate], feed: Feed, batch_sizes: Sequence[int], timing: TimingConfig = TimingConfig(),
          on_progress: ProgressCallback | None = None,
          also_versus: Sequence[str] = (), repeats: int = 1) -> dict[str, Any]:
    """Time every candidate at every batch size, interleaved; the first candidate is the baseline.

    Args:
        candidates: opened candidates (all must accept ``feed``'s input names).
        feed: real or random inputs; batches are taken from it (wrapping when it is smaller).
        batch_sizes: batch sizes to time.
        timing: warm-up, iterations or duration, bootstrap settings.
        on_progress: called as ``("timing batch N", rounds done, total rounds)`` while timing (total -1
            with a duration; ``"timing batch N, run R/repeats"`` with repeats).
        also_versus: further reference candidates (e.g. "onnxruntime-fp32"): every other candidate also
            gets ``speedup_vs[<name>]``, from the same interleaved samples.
        repeats: independent timing runs per batch size (each with its own warm-up). Statistics pool
            them; regression gating needs several, because run-to-run variation (measured here: medians
            of one unchanged model 25 % apart between runs) is larger than the noise within a run.

    Returns:
        ``{"baseline": name, "candidates": [describe()...], "per_batch": [compare_latency(...) per batch]}``;
        each per-batch entry also keeps the raw ``samples_ms`` per candidate (round order, runs one after
        the other, ``repeat_lengths`` long), which regression baselines and latency plots need, the highest
        1-minute ``load_average`` seen (before and after timing) with the ``cpu_count`` it is compared with,
        and each candidate's ``quality_flags`` (`trtopt.measure.profile.quality_flags`).
    """
    if not candidates:
        raise TrtoptError("nothing to benchmark", "name at least one model or ONNX file")
    if repeats < 1:
        raise TrtoptError(f"repeats={repeats} must be >= 1", "time at least one run")
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise TrtoptError(f"candidate names repeat: {names}", "give each model once")
    per_batch = []
    for batch_size in batch_sizes:
        batch = take_batch(feed, batch_size)
        loads = [load_average_1min()]
        runs = [time_interleaved({c.name: c.runner for c in candidates}, batch, timing, on_progress=on_progress,
                                 label=f"timing batch {batch_size}" + (f", run {i + 1}/{repeats}" if repeats > 1 else ""))
                for i in range(repeats)]
        samples = {name: [v for run in runs for v in run[name]] for name in names}  # round order kept across runs
        loads.append(load_average_1min())
        result = compare_latency(samples, names[0], batch_size, timing)
        known = [v for v in loads if v is not None]
        result["load_average"] = max(known) if known else None
        result["cpu_count"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        for stats in result["candidates"].values():
            stats["quality_flags"] = quality_flags(stats, result["load_average"], result["cpu_count"])
        result["samples_ms"] = {name: [round(v, 6) for v in values] for name, values in samples.items()}
        result["repeat_lengths"] = [len(run[names[0]]) for run in runs]
        for ref in also_versus:
            if ref not in samples:
                raise TrtoptError(f"reference {ref!r} is not a candidate", f"choose one of {', '.join(names)}")
            for name, stats in result["candidates"].items():
                if name not in (ref, names[0]):
                    stats.setdefault("speedup_vs", {})[ref] = speedup_interval(samples[ref], samples[name], timing)
        per_batch.append(result)
    return {"baseline": names[0], "candidates": [c.describe() for c in candidates], "per_batch": per_batch}


def run_all(candidate: Candidate, feed: Feed, batch_size: int = 8) -> dict[str, Any]:
    """Outputs of ``candidate`` over every sample of ``feed``, concatenated (for accuracy comparisons)."""
    from trtopt.data import iter_batches
    from trtopt.measure.compare import concat_batches

    static = getattr(candidate.runner, "static_batch", None)
    if static is None:
        return concat_batches([candidate.runner.infer(b) for b in iter_batches(feed, batch_size)])
    # A static-shape model (.pte/.tflite) runs its own batch size; the last batch is padded by wrapping
    # around to the first samples, and the padding's outputs are dropped.
    n = len(next(iter(feed.values())))
    outputs = []
    for start in range(0, n, static):
        result = candidate.runner.infer(take_batch(feed, static, start))
        outputs.append({k: v[:min(static, n - start)] for k, v in result.items()})
    return concat_batches(outputs)


def default_output_path(spec: str, out_dir: str | os.PathLike = ".") -> Path:
    """``<out_dir>/<model name>.onnx`` for a spec like ``torchvision:resnet18``."""
    stem = spec.rsplit(":", 1)[-1].rsplit("/", 1)[-1].rsplit(".", 1)[0] if not is_onnx_path(spec) else Path(spec).stem
    return Path(out_dir) / f"{stem}.onnx"
