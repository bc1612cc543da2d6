"""What every command family shares: shape parsing, feeds, timing flags, progress display, JSON output.

Command modules import from here, never from `trtopt.cli.main` (the entry point imports them). Flags that
set a config field take their default (and choices) from the config class, never a retyped value; help
texts quote it with ``%(default)s``. The configs are torch-free, so importing them keeps ``--help`` light.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any, TextIO

from trtopt._config import MAX_BATCH_SIZE
from trtopt.config import Recipe
from trtopt.errors import TrtoptError
from trtopt.measure.profile import TimingConfig
from trtopt.quant.calibrate import METHODS, CalibrationConfig

EXIT_USAGE = 2

EXIT_CHECK_FAILED = 1

def count(minimum: int = 1):
    """An argparse ``type`` for a count flag (``--samples``, ``--threads``, ``--repeats``): an integer of at least
    ``minimum``, refused while parsing (one line, exit 2) instead of reaching numpy as a negative dimension or a
    runtime as a thread count it reads as "all cores"."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}: give {minimum} or more")
        return value

    parse.__name__ = "count"  # argparse names the type in some messages
    return parse

def input_declarations(args: argparse.Namespace):
    """The input declarations of the flags ``--input-shape/--input-dtype/--input-range/--dynamic`` (see
    `trtopt.models.inputs.parse_declarations`)."""
    from trtopt.models.inputs import parse_declarations

    return parse_declarations(args.input_shape, getattr(args, "input_dtype", None), getattr(args, "input_range", None),
                              getattr(args, "dynamic", None))

def check_batch_sizes(values: Sequence[int], flag: str = "--batch-sizes") -> None:
    """Batch sizes in 1..MAX_BATCH_SIZE (exported models declare their batch axis as that range)."""
    bad = [b for b in values if not 1 <= b <= MAX_BATCH_SIZE]
    if bad:
        raise TrtoptError(f"{flag} {bad[0]} is outside 1..{MAX_BATCH_SIZE}",
                          f"give batch sizes from 1 to {MAX_BATCH_SIZE}")

def check_fits_memory(inputs, samples: int, what: str) -> None:
    """Refuse, before allocating, ``samples`` samples of ``inputs`` (InputSpecs) this machine cannot hold.

    The limit is a third of the memory available now: inputs exist in more than one copy while they are made
    and used (random data is drawn in float64, then cast; batches are sliced out; runtimes copy them again).
    """
    import numpy as np

    # a symbolic axis (an ONNX input fed from --data) counts as 1: the data's own size is known to fit
    need = samples * sum(math.prod(d if isinstance(d, int) else 1 for d in s.shape) * np.dtype(s.dtype).itemsize
                         for s in inputs)
    available = _available_memory()
    if available is not None and 3 * need > available:
        shapes = ", ".join(f"{s.name} {'x'.join(map(str, s.shape))}" for s in inputs)
        raise TrtoptError(f"{what}: {samples} samples of {shapes} take {need / 1e9:,.1f} GB, more than this machine "
                          f"can hold while working ({available / 1e9:,.1f} GB of memory available)",
                          "use fewer samples, smaller batch sizes or a smaller --input-shape")

def _available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux MemAvailable), else physical memory; None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # not Linux: fall back to the physical memory
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):  # no sysconf (Windows)
        return None

def console(args: argparse.Namespace):
    """The stderr console for step lines and progress; soft_wrap: a line is never broken at the console
    width (a CI log is not 80 columns wide), a terminal wraps it itself."""
    from rich.console import Console

    return Console(stderr=True, quiet=args.quiet, soft_wrap=True)

def step_printer(args: argparse.Namespace):
    from rich.markup import escape

    out = console(args)
    # escape: messages hold brackets ("pip install 'trtopt[tensorrt]'") that rich would read as markup
    return lambda msg: out.print(f"[dim]·[/dim] {escape(msg)}")

def progress_bar(args: argparse.Namespace):
    """A rich progress bar fed by ``(label, done, total)`` callbacks; returns (context, callback).

    Each label gets its own bar, which is retired once it reaches a known total (so a finished step is
    not redrawn under every later one); a total of -1 shows activity and elapsed time (`trtopt.progress.running`).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console(args), transient=True, disable=args.quiet)
    tasks: dict[str, Any] = {}

    def update(label: str, done: int, total: int) -> None:
        if label not in tasks:
            tasks[label] = progress.add_task(label, total=total if total > 0 else None)
        progress.update(tasks[label], completed=done)
        if 0 < total <= done:
            progress.remove_task(tasks.pop(label))

    return progress, update

def onnx_outputs(path: str | None) -> list[str | None]:
    """The files writing the ONNX model ``path`` may replace: the model and its ``.data`` side file, if one exists."""
    if path is None:
        return []
    side = path + ".data"
    return [path, side] if os.path.exists(side) else [path]

#: Where ``--json -`` writes: the process's standard output while `trtopt.cli.main` sends the command's
#: human-readable lines to standard error (so ``trtopt bench ... --json - | jq`` reads JSON only).
JSON_STDOUT: ContextVar[TextIO | None] = ContextVar("JSON_STDOUT", default=None)

JSON_HELP = "write the results as JSON to FILE (- for standard output; the human-readable output then goes to stderr)"


def write_json_output(path: str | None, data: Any, force: bool) -> None:
    """The ``--json FILE`` convention of every command: FILE written atomically (refused if it exists,
    unless ``force``); ``-`` prints the JSON on standard output; None (flag not given) does nothing."""
    if path == "-":
        import json

        stream = JSON_STDOUT.get() or sys.stdout
        stream.write(json.dumps(data, indent=2, default=str) + "\n")
        stream.flush()
    elif path:
        from trtopt.files import write_json

        write_json(path, data, force=force)


def print_report(report: Any, args: argparse.Namespace) -> None:
    """A report's results on standard output, for people.

    With ``--markdown``: the full Markdown report. Otherwise a compact summary, one table per batch size
    (`trtopt.report.markdown.summary_tables`: variant, backend, size, compression, p50, speedup [CI], the
    headline metric), rendered by rich: on a terminal, aligned and sized to its width; elsewhere (a pipe,
    a CI log) as plain text as wide as the table needs, never wrapped. Measurement quality warnings go to
    standard error as ``warning:`` lines (`trtopt.report.model.quality_warnings`).
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from trtopt.report.markdown import render_markdown, summary_columns, summary_tables
    from trtopt.report.model import quality_warnings

    if getattr(args, "markdown", False):
        print(render_markdown(report))
    else:
        tty = sys.stdout.isatty()
        columns = summary_columns(report, compact=True)
        for heading, rows in summary_tables(report):
            table = Table(title=f"{report['title']}: {heading}", title_justify="left", box=box.SIMPLE_HEAD,
                          header_style="bold" if tty else "", pad_edge=False, padding=(0, 1))
            for i, (header, _) in enumerate(columns):  # only the variant name may wrap, at a dash
                table.add_column(header, justify="left" if i < 2 else "right", no_wrap=i > 0,
                                 overflow="fold" if i == 0 else "ellipsis", min_width=12 if i == 0 else None)
            for row in rows:
                table.add_row(*(f(row) for _, f in columns),
                              style=("bold" if row["variant"] == report["baseline"] else "dim" if not row["timed"] else "")
                              if tty else "")
            if tty:
                out = Console(file=sys.stdout)
            else:  # as wide as the table needs: a log viewer scrolls, a wrapped table is unreadable
                width = Console(file=sys.stdout, width=100_000).measure(table).maximum
                out = Console(file=sys.stdout, width=max(width, 40), no_color=True, highlight=False,
                              force_terminal=False)
            out.print(table)
    warnings = quality_warnings(report)
    if warnings:
        print("warning: unstable timing (rerun on an idle machine, or with more --iterations):", file=sys.stderr)
        for line in warnings:
            print(f"  {line}", file=sys.stderr)

def speedup_search_outcome(search: Any) -> int:
    """Print one line on a `trtopt.speedup_search.SpeedupSearchResult`; the exit status.

    Reached: the chosen step's speedup and interval, status 0. Missed: one ``warning:`` line naming the
    kept (closest) step and the best measured speedup, status 1 (the closest model has been written).
    """
    chosen, target, knob = search.chosen_step, search.config, search.knob
    window = f"{target.target_speedup}× ± {target.tolerance:.0%}"
    measured = (f"{chosen.speedup:.2f}× [{chosen.speedup_ci_low:.2f}, {chosen.speedup_ci_high:.2f}] at {knob} "
                f"{chosen.compression[knob]:.4g}")
    if search.reached:
        print(f"speedup {measured} (target {window} reached)")
        return 0
    best = search.fastest_step
    print(f"warning: target {window} not reached in {len(search.steps)} steps: best measured speedup {best.speedup:.2f}× "
          f"at {knob} {best.compression[knob]:.4g}; kept the closest, {measured}")
    return EXIT_CHECK_FAILED

def timing_config(args: argparse.Namespace) -> TimingConfig:
    return TimingConfig(warmup_iterations=args.warmup, iterations=args.iterations, duration_s=args.duration,
                        min_iterations=min(TimingConfig.min_iterations, args.iterations))

def feed_for(args: argparse.Namespace, inputs, preprocess=None, count=None):
    from trtopt.data import load_feed

    count = count or args.samples
    if args.data in (None, "random"):
        check_fits_memory(inputs, count or 8, "random inputs")
    return load_feed(args.data, inputs, count=count, seed=args.seed, preprocess=preprocess)

def onnx_feed(args: argparse.Namespace, onnx_path: str):
    """Inputs for an ONNX model: its signature (with the declaration flags applied) and --data/--samples.

    Axes the ONNX file leaves symbolic take their length from --data; only random data needs them declared.
    """
    from trtopt.artifacts import inspect_onnx
    from trtopt.measure.bench import onnx_input_specs

    specs = onnx_input_specs(inspect_onnx(onnx_path), input_declarations(args))
    return feed_for(args, specs)

def add_timing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-sizes", type=int, nargs="+", default=list(Recipe.batch_sizes), metavar="N",
                   help="batch sizes (default %(default)s)")
    p.add_argument("--iterations", type=int, default=TimingConfig.iterations,
                   help="timed calls per candidate and batch size (default %(default)s)")
    p.add_argument("--duration", type=float, default=TimingConfig.duration_s, metavar="S",
                   help="time for S seconds per candidate instead")
    p.add_argument("--warmup", type=int, default=TimingConfig.warmup_iterations, help="untimed calls first (default %(default)s)")
    p.add_argument("--threads", type=count(), default=None, help="CPU threads for PyTorch and ONNX Runtime alike")

def add_data(p: argparse.ArgumentParser, dynamic: bool = False) -> None:
    """--data/--samples/--seed and the input declaration flags (``dynamic``: with ``--dynamic``, for export)."""
    p.add_argument("--data", default=None, help="inputs: .npy/.npz, an image folder, skimage:photos (default: random)")
    p.add_argument("--samples", type=count(), default=None, help="number of samples (random data: default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed for random inputs")
    add_input_declarations(p, dynamic)


def add_input_declarations(p: argparse.ArgumentParser, dynamic: bool = False) -> None:
    """The flags that declare a model's inputs (README "Declaring inputs"); read with :func:`input_declarations`."""
    p.add_argument("--input-shape", action="append", metavar="NAME:DIMS",
                   help="example shape per input, batch included, trtexec style: input:1x3x224x224 or "
                        "input_ids:8x64,attention_mask:8x64 (Polygraphy's input:[1,3,224,224] works too)")
    p.add_argument("--input-dtype", action="append", metavar="NAME:DTYPE", help="dtype per input, e.g. input_ids:int64")
    p.add_argument("--input-range", action="append", metavar="NAME:[LOW,HIGH]",
                   help="value range of random data per input, both ends included, e.g. input_ids:[0,30521]")
    if dynamic:
        p.add_argument("--dynamic", action="append", metavar="NAME:AXIS=SYMBOL",
                       help="export this axis beyond the batch as dynamic, e.g. input_ids:1=seq,attention_mask:1=seq")

def add_calibration(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=METHODS, default=CalibrationConfig.method,
                   help="range method (default %(default)s: each method scored by output fidelity on held-out calibration "
                        "samples; entropy is TensorRT's EntropyCalibration2)")
    p.add_argument("--percentile", type=float, default=CalibrationConfig.percentile,
                   help="for --method percentile (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=CalibrationConfig.batch_size,
                   help="samples per calibration run (memory bound; default %(default)s)")

def add_speedup_search(p: argparse.ArgumentParser, target_help: str) -> None:
    """--target-speedup and the search's timing flags, with the defaults of `SpeedupSearchConfig` (prune, factorize)."""
    from trtopt.speedup_search import SpeedupSearchConfig as C

    p.add_argument("--target-speedup", type=float, default=None, metavar="X", help=target_help)
    p.add_argument("--tolerance", type=float, default=C.tolerance,
                   help="accept a speedup within X × (1 ± this) (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=C.batch_size, help="batch timed by --target-speedup (default %(default)s)")
    p.add_argument("--iterations", type=int, default=C.iterations,
                   help="timed calls per candidate and step (--target-speedup, default %(default)s)")
    p.add_argument("--warmup", type=int, default=C.warmup_iterations,
                   help="untimed calls first (--target-speedup, default %(default)s)")
    p.add_argument("--threads", type=count(), default=C.threads,
                   help="ONNX Runtime threads (--target-speedup, default %(default)s)")


def speedup_search_config(args: argparse.Namespace):
    """The `SpeedupSearchConfig` the flags of :func:`add_speedup_search` ask for, or None without --target-speedup."""
    if args.target_speedup is None:
        return None
    from trtopt.speedup_search import SpeedupSearchConfig

    return SpeedupSearchConfig(target_speedup=args.target_speedup, tolerance=args.tolerance, batch_size=args.batch_size,
                               threads=args.threads, warmup_iterations=args.warmup, iterations=args.iterations)


def add_tolerances(p: argparse.ArgumentParser, atol: float, rtol: float, cosine: float) -> None:
    """--atol/--rtol/--min-cosine with the defaults of the `Tolerances` the command fills."""
    p.add_argument("--atol", type=float, default=atol, help="absolute tolerance (default %(default)s)")
    p.add_argument("--rtol", type=float, default=rtol, help="relative tolerance (default %(default)s)")
    p.add_argument("--min-cosine", type=float, default=cosine, help="minimum cosine similarity, per sample then averaged (default %(default)s)")


def ddp_rank() -> int:
    """This process's rank under torchrun (``RANK``; 0 in a single process): rank 0 alone prints and writes."""
    return int(os.environ.get("RANK", "0"))
