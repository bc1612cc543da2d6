"""What every command family shares: shape parsing, feeds, timing flags, progress display, JSON output.

Command modules import from here, never from `trtopt.cli.main` (the entry point imports them).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from trtopt.errors import TrtoptError


EXIT_USAGE = 2

EXIT_CHECK_FAILED = 1

def parse_shapes(values: Sequence[str] | None) -> dict[str, tuple[int, ...]]:
    """``["3x224x224"]`` or ``["input_ids:64", "attention_mask:64"]`` → {name or "": dims}."""
    shapes: dict[str, tuple[int, ...]] = {}
    for value in values or []:
        name, _, dims = value.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().replace(",", "x").split("x") if d)
        except ValueError:
            raise TrtoptError(f"cannot read input shape {value!r}", "write it as 3x224x224 or NAME:3x224x224") from None
        if not shape or any(d <= 0 for d in shape):
            raise TrtoptError(f"input shape {value!r} has no or non-positive dimensions", "e.g. 3x224x224")
        shapes[name] = shape
    return shapes

def console(args: argparse.Namespace):
    from rich.console import Console

    return Console(stderr=True, quiet=args.quiet)

def step_printer(args: argparse.Namespace):
    from rich.markup import escape

    out = console(args)
    # escape: messages hold brackets ("pip install 'trtopt[tensorrt]'") that rich would read as markup
    return lambda msg: out.print(f"[dim]·[/dim] {escape(msg)}")

def progress_bar(args: argparse.Namespace):
    """A rich progress bar fed by ``(label, done, total)`` callbacks; returns (context, callback)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console(args), transient=True, disable=args.quiet)
    tasks: dict[str, Any] = {}

    def update(label: str, done: int, total: int) -> None:
        if label not in tasks:
            tasks[label] = progress.add_task(f"timing {label}", total=total if total > 0 else None)
        progress.update(tasks[label], completed=done)

    return progress, update

def write_json_output(path: str | None, data: Any, force: bool) -> None:
    if path:
        from trtopt.files import write_json

        write_json(path, data, force=force)

def timing_config(args: argparse.Namespace):
    from trtopt.measure.profile import TimingConfig

    return TimingConfig(warmup_iterations=args.warmup, iterations=args.iterations, duration_s=args.duration,
                        min_iterations=min(10, args.iterations))

def feed_for(args: argparse.Namespace, inputs, preprocess=None, count=None):
    from trtopt.data import load_feed

    return load_feed(args.data, inputs, count=count or args.samples, seed=args.seed, preprocess=preprocess)

def named_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]] | None:
    """--input-shape values keyed by input name (an unnamed shape is for "input"); None when none given."""
    if not shapes:
        return None
    return {(k or "input"): v for k, v in shapes.items()}

def onnx_feed(args: argparse.Namespace, onnx_path: str):
    """Inputs for an ONNX model: its signature (with --input-shape overrides) and --data/--samples."""
    from trtopt.artifacts import inspect_onnx
    from trtopt.measure.bench import onnx_input_specs

    specs = onnx_input_specs(inspect_onnx(onnx_path), named_shapes(parse_shapes(args.input_shape)))
    return feed_for(args, specs)

def add_timing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], metavar="N", help="batch sizes (default 1 8)")
    p.add_argument("--iterations", type=int, default=100, help="timed calls per candidate and batch size (default 100)")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="time for S seconds per candidate instead")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls first (default 10)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch and ONNX Runtime alike")

def add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="inputs: .npy/.npz, an image folder, skimage:photos (default: random)")
    p.add_argument("--samples", type=int, default=None, help="number of samples (random data: default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed for random inputs")
    p.add_argument("--input-shape", action="append", metavar="[NAME:]DIMS",
                   help="input shape without batch, e.g. 3x224x224 (repeat per input)")

def add_calibration(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=("auto", "entropy", "minmax", "percentile", "mse"), default="auto",
                   help="range method (default auto: each method scored by output fidelity on held-out calibration "
                        "samples; entropy is TensorRT's EntropyCalibration2)")
    p.add_argument("--percentile", type=float, default=99.99, help="for --method percentile (default 99.99)")
    p.add_argument("--batch-size", type=int, default=16, help="samples per calibration run (memory bound)")

def add_tolerances(p: argparse.ArgumentParser, atol: float, rtol: float, cosine: float) -> None:
    p.add_argument("--atol", type=float, default=atol, help=f"absolute tolerance (default {atol})")
    p.add_argument("--rtol", type=float, default=rtol, help=f"relative tolerance (default {rtol})")
    p.add_argument("--min-cosine", type=float, default=cosine, help=f"minimum cosine similarity (default {cosine})")
