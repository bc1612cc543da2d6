"""The ``trtopt`` command: a thin layer of flags over the library's functions.

User errors (`TrtoptError`) print one line, ``trtopt: error: <problem>; fix: <what to do>``, and exit 2
with no traceback; ``--debug`` shows it. Logging and progress display are configured here, never in the
library.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trtopt._version import __version__
from trtopt.errors import TrtoptError

EXIT_USAGE = 2
EXIT_CHECK_FAILED = 1

# Subcommands of each area live beside it, in a module with ``add_commands(sub, common)``; listing them
# here keeps this file the one place that builds the parser. They import their heavy libraries lazily.
COMMAND_MODULES: tuple[str, ...] = ("trtopt.cli_pipeline", "trtopt.cli_trt", "trtopt.cli_prune", "trtopt.cli_distill",
                                     "trtopt.cli_edge", "trtopt.cli_compress")


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


def _console(args: argparse.Namespace):
    from rich.console import Console

    return Console(stderr=True, quiet=args.quiet)


def _step_printer(args: argparse.Namespace):
    from rich.markup import escape

    console = _console(args)
    # escape: messages hold brackets ("pip install 'trtopt[tensorrt]'") that rich would read as markup
    return lambda msg: console.print(f"[dim]·[/dim] {escape(msg)}")


def _progress(args: argparse.Namespace):
    """A rich progress bar fed by ``(label, done, total)`` callbacks; returns (context, callback)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=_console(args), transient=True, disable=args.quiet)
    tasks: dict[str, Any] = {}

    def update(label: str, done: int, total: int) -> None:
        if label not in tasks:
            tasks[label] = progress.add_task(f"timing {label}", total=total if total > 0 else None)
        progress.update(tasks[label], completed=done)

    return progress, update


def _write_json(path: str | None, data: Any, force: bool) -> None:
    if path:
        from trtopt.files import write_json

        write_json(path, data, force=force)


def _timing(args: argparse.Namespace):
    from trtopt.profile import TimingConfig

    return TimingConfig(warmup_iterations=args.warmup, iterations=args.iterations, duration_s=args.duration,
                        min_iterations=min(10, args.iterations))


def _feed_for(args: argparse.Namespace, inputs, preprocess=None, count=None):
    from trtopt.data import load_feed

    return load_feed(args.data, inputs, count=count or args.samples, seed=args.seed, preprocess=preprocess)


def cmd_export(args: argparse.Namespace) -> int:
    from trtopt.compare import Tolerances
    from trtopt.config import ExportConfig
    from trtopt.export import export_onnx
    from trtopt.models import load_model

    shapes = parse_shapes(args.input_shape)
    loaded = load_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained,
                        input_shape=next(iter(shapes.values())) if len(shapes) == 1 else None)
    config = ExportConfig(opset=args.opset, dynamic_batch=not args.static_batch, exporter=args.exporter,
                          simplify=not args.no_simplify, external_data=args.external_data, check_parity=not args.no_parity,
                          parity=Tolerances(atol=args.atol, rtol=args.rtol, min_cosine=args.min_cosine))
    feed = _feed_for(args, loaded.inputs, loaded.preprocess, count=max(args.samples or 8, 8))
    artifact = export_onnx(loaded, args.output, config, feed=feed, force=args.force, on_step=_step_printer(args))
    result = artifact.to_dict()
    _write_json(args.json, result, args.force)
    parity = ", ".join(f"{k}: max abs {v['outputs'][0]['max_abs_error']:.2e}, cosine {v['outputs'][0]['cosine']:.6f}"
                       for k, v in artifact.parity.items())
    print(f"wrote {artifact.path} ({artifact.size_bytes / 1e6:.2f} MB, {artifact.exporter} exporter, opset {artifact.opset})"
          + (f"; parity {parity}" if parity else ""))
    for note in artifact.notes:
        print(f"  note: {note}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from trtopt.bench import bench, open_candidate, run_all
    from trtopt.report import build_report, markdown_table, render_markdown

    shapes = parse_shapes(args.input_shape)
    gate = _gate_setup(args)  # a bad baseline or an existing output fails before any timing
    candidates = [open_candidate(m, threads=args.threads, input_shapes=_named(shapes), checkpoint=args.checkpoint)
                  for m in args.models]
    shapes_named = {s.name: s.shape for s in candidates[0].inputs}
    preprocess = getattr(getattr(candidates[0].runner, "loaded", None), "preprocess", None)
    feed = _feed_for(args, candidates[0].inputs, preprocess)
    if gate:
        from trtopt.baseline import control_candidate

        candidates.append(control_candidate(args.threads))
    progress, update = _progress(args)
    with progress:
        repeats = args.repeats or (5 if gate else 1)
        result = bench(candidates, feed, args.batch_sizes, _timing(args), on_progress=update, repeats=repeats)
    settings = {"models": args.models, "batch_sizes": args.batch_sizes, "threads": args.threads,
                "data": args.data or "random", "input_shapes": shapes_named, "repeats": repeats}
    report = build_report("trtopt bench", result, recipe=settings)
    _write_json(args.json, report, args.force)
    if gate is None:
        print(render_markdown(report) if args.markdown else markdown_table(report["rows"]))
        return 0
    outputs = {c.name: run_all(c, feed) for c in candidates if c.inputs}  # the control has no inputs
    return _gate_finish(args, gate, result, report["environment"], settings, outputs)


def _gate_setup(args: argparse.Namespace) -> dict[str, Any] | None:
    """Validate the regression-gating flags of ``bench`` and read the baseline, before anything is timed."""
    from trtopt.baseline import GateConfig, check_environment, check_outputs_writable, golden_path, load_baseline

    if args.save_baseline and args.baseline:
        raise TrtoptError("--save-baseline and --baseline were both given", "record a baseline or compare with one, not both")
    if not (args.save_baseline or args.baseline):
        return None
    outputs = [args.json, args.summary]
    if args.save_baseline:
        outputs += [args.save_baseline, golden_path(args.save_baseline)]
    check_outputs_writable(outputs, args.force)
    if args.save_baseline:
        return {"mode": "save"}
    from trtopt.environment import environment

    config = GateConfig(tolerance=args.tolerance, allow_environment_mismatch=args.allow_env_mismatch)
    baseline = load_baseline(args.baseline)
    check_environment(baseline["environment"], environment(), config.allow_environment_mismatch)
    return {"mode": "compare", "baseline": baseline, "config": config}


def _gate_finish(args: argparse.Namespace, gate: dict[str, Any], result: dict[str, Any], env: dict[str, Any],
                 settings: dict[str, Any], outputs: dict[str, Any]) -> int:
    """Save the run as a baseline, or judge it against one (latency and golden outputs); exit 1 on failure."""
    from trtopt.baseline import (
        append_history,
        baseline_from_bench,
        compare_with_baseline,
        golden_path,
        load_golden,
        markdown_summary,
        save_baseline,
        save_golden,
    )
    from trtopt.compare import compare_outputs

    if gate["mode"] == "save":
        golden = save_golden(outputs, golden_path(args.save_baseline), force=args.force)
        save_baseline(baseline_from_bench(result, env, settings, golden), args.save_baseline, force=args.force)
        print(f"wrote baseline {args.save_baseline} ({len(result['candidates'])} candidates × "
              f"{len(result['per_batch'])} batch sizes) and golden outputs {golden_path(args.save_baseline)}")
        return 0
    baseline = gate["baseline"]
    comparison = compare_with_baseline(baseline, baseline_from_bench(result, env, settings), gate["config"])
    golden_results = None
    if baseline.get("golden"):
        default, per_output = _golden_tolerances(args)
        golden = load_golden(args.baseline, baseline["golden"])
        golden_results = {name: compare_outputs(golden[name], outputs[name], default, per_output)
                          for name in golden if name in outputs}
    summary = markdown_summary(comparison, golden_results)
    print(summary)
    if args.summary:
        from trtopt.files import write_text

        write_text(args.summary, summary, force=args.force)
    golden_passed = None if golden_results is None else all(r["passed"] for r in golden_results.values())
    if args.history:
        append_history(args.history, comparison, env, golden_passed)
    return 0 if comparison["passed"] and golden_passed is not False else EXIT_CHECK_FAILED


def _golden_tolerances(args: argparse.Namespace):
    """--golden-atol/--golden-rtol values: ``1e-4`` (every output) or ``NAME:1e-3`` (one output)."""
    from trtopt.compare import Tolerances

    def parse(values, flag):
        default, named = None, {}
        for value in values or []:
            name, _, number = value.rpartition(":")
            try:
                parsed = float(number)
            except ValueError:
                raise TrtoptError(f"{flag} {value!r} is not a number", f"write {flag} 1e-4 or {flag} OUTPUT:1e-4") from None
            if name:
                named[name] = parsed
            else:
                default = parsed
        return default, named

    atol, atols = parse(args.golden_atol, "--golden-atol")
    rtol, rtols = parse(args.golden_rtol, "--golden-rtol")
    default = Tolerances(atol=1e-4 if atol is None else atol, rtol=1e-3 if rtol is None else rtol, min_cosine=0.999)
    per_output = {name: Tolerances(atol=atols.get(name, default.atol), rtol=rtols.get(name, default.rtol),
                                   min_cosine=default.min_cosine) for name in set(atols) | set(rtols)}
    return default, per_output


def _named(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]] | None:
    """--input-shape values keyed by input name (an unnamed shape is for "input"); None when none given."""
    if not shapes:
        return None
    return {(k or "input"): v for k, v in shapes.items()}


def cmd_compare(args: argparse.Namespace) -> int:
    from trtopt.bench import open_candidate, run_all
    from trtopt.compare import Tolerances, compare_outputs

    shapes = _named(parse_shapes(args.input_shape))
    reference = open_candidate(args.reference, threads=args.threads, input_shapes=shapes, checkpoint=args.checkpoint)
    candidate = open_candidate(args.candidate, threads=args.threads, input_shapes=shapes)
    preprocess = getattr(getattr(reference.runner, "loaded", None), "preprocess", None)
    feed = _feed_for(args, reference.inputs, preprocess)
    tol = Tolerances(atol=args.atol, rtol=args.rtol, min_cosine=args.min_cosine)
    result = compare_outputs(run_all(reference, feed), run_all(candidate, feed), tol)
    result.update(reference=args.reference, candidate=args.candidate, samples=len(next(iter(feed.values()))))
    _write_json(args.json, result, args.force)
    for out in result["outputs"]:
        agree = "" if out["top1_agreement"] is None else f", top-1 agreement {out['top1_agreement']:.3f}"
        print(f"{'PASS' if out['passed'] else 'FAIL'} {out['output']}: max abs {out['max_abs_error']:.3e}, "
              f"max rel {out['max_rel_error']:.3e}, p99 abs {out['abs_error_p99']:.3e}, cosine {out['cosine']}{agree}")
    if not result["passed"]:
        from trtopt.compare import failed_outputs_message

        print(f"trtopt: outputs differ beyond tolerances: {failed_outputs_message(result)}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from trtopt.doctor import diagnose

    found = diagnose()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    env = found["environment"]
    print(f"trtopt {__version__} · Python {env['python']} · {env['cpu_model']} ({env['cpu_count_logical']} CPUs)")
    for name, pkg in sorted(env["packages"].items()):
        print(f"  {name:18} {pkg}")
    print("backends:")
    for name, b in found["backends"].items():
        print(f"  {name:12} {'yes' if b['available'] else 'no ':3}  {b['detail']}")
    ort = found["onnxruntime"]
    if ort["available"]:
        print(f"onnxruntime providers: {', '.join(ort['providers'])}")
    cuda = found["cuda"]
    print(f"CUDA: {str(cuda['device_count']) + ' device(s)' if cuda['available'] else cuda['reason']}")
    print(f"GPU: {', '.join(g['name'] for g in found['gpus']) or 'none'}")
    trt = found["tensorrt"]
    print(f"TensorRT: {trt['version'] or 'not installed'}; CUDA libraries: {', '.join(trt['cuda_libraries']) or 'none'}; "
          f"GPUs (CUDA): {', '.join(d['name'] + ' sm_' + d['compute_capability'] for d in cuda.get('devices', [])) or 'none'}")
    for line in found["advice"]:
        print(f"advice: {line}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trtopt.demo import demo_recipes, run_demo
    from trtopt.report import markdown_table

    written = []
    for name, recipe in demo_recipes(iterations=args.iterations).items():
        progress, update = _progress(args)
        with progress:
            report, paths = run_demo(recipe, Path(args.out) / name, force=args.force, on_step=_step_printer(args),
                                     on_progress=update)
        print(f"\n## {report['title']}\n\n{markdown_table(report['rows'])}")
        written.append(paths["html"])
    print("\nreports: " + ", ".join(map(str, written)) + " (each with report.md, report.json and its artifacts)")
    return 0


def _onnx_feed(args: argparse.Namespace, onnx_path: str):
    """Inputs for an ONNX model: its signature (with --input-shape overrides) and --data/--samples."""
    from trtopt.artifacts import inspect_onnx
    from trtopt.bench import onnx_input_specs

    specs = onnx_input_specs(inspect_onnx(onnx_path), _named(parse_shapes(args.input_shape)))
    return _feed_for(args, specs)


def _calibration_config(args: argparse.Namespace):
    from trtopt.calibrate import CalibrationConfig

    return CalibrationConfig(method=args.method, percentile=args.percentile, batch_size=args.batch_size)


def _calibrate(args: argparse.Namespace, onnx_path: str):
    from trtopt.calibrate import calibrate

    feed = _onnx_feed(args, onnx_path)
    progress, update = _progress(args)
    with progress:
        return calibrate(onnx_path, feed, _calibration_config(args),
                         on_progress=lambda done, total: update("calibration", done, total))


def cmd_calibrate(args: argparse.Namespace) -> int:
    from trtopt.files import ensure_writable

    ensure_writable(args.output, args.force)
    if args.cache:
        ensure_writable(args.cache, args.force)
    ranges = _calibrate(args, args.model)
    ranges.save(args.output, force=args.force)
    print(f"wrote {args.output}: {len(ranges.tensors)} tensor ranges ({ranges.method}, {ranges.samples} samples, "
          f"data sha256 {ranges.data_sha256[:12]}…)")
    if args.cache:
        from trtopt.trt_cache import ranges_to_cache, write_cache

        cache = ranges_to_cache(ranges, trt_version=args.trt_version)
        write_cache(cache, args.cache, force=args.force)
        print(f"wrote {args.cache}: TensorRT {cache.trt_version} calibration cache ({cache.header})")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from trtopt.artifacts import Ranges, inspect_onnx
    from trtopt.files import ensure_writable
    from trtopt.quantize import QuantizeConfig, quantize

    ensure_writable(args.output, args.force)
    if args.precision == "fp16":
        from trtopt.quantize import to_fp16

        artifact = to_fp16(args.model, args.output, exclude_op_types=tuple(args.exclude or ()), force=args.force)
        print(f"wrote {artifact.path} ({artifact.size_bytes / 1e6:.2f} MB); {artifact.notes[0]}")
        return 0
    if args.ranges and args.data:
        raise TrtoptError("both --ranges and --data given", "use --ranges FILE (calibrated) or --data SRC (calibrate now)")
    ranges = Ranges.load(args.ranges) if args.ranges else _calibrate(args, args.model)
    names, op_types = _split_excludes(args.model, args.exclude or [])
    config = QuantizeConfig(target=args.target, per_channel=args.per_channel, reduce_range=args.reduce_range,
                            op_types=tuple(args.op_types.split(",")) if args.op_types else None, exclude_nodes=names,
                            exclude_op_types=op_types)
    if args.max_accuracy_drop is not None:
        config = _mixed_precision(args, ranges, config)
    artifact = quantize(args.model, ranges, args.output, config, force=args.force, on_step=_step_printer(args))
    source = inspect_onnx(args.model)
    print(f"wrote {artifact.path} ({artifact.size_bytes / 1e6:.2f} MB, {source.size_bytes / artifact.size_bytes:.2f}× "
          f"smaller than {source.path.name})")
    for note in artifact.notes:
        print(f"  {note}")
    if args.json:
        _write_json(args.json, artifact.to_dict(), args.force)
    return 0


def _split_excludes(onnx_path: str, values: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """--exclude values as (node names, op types): a node name wins, else an op type present in the model."""
    import onnx

    nodes = onnx.load(onnx_path, load_external_data=False).graph.node
    names = {n.name for n in nodes}
    ops = {n.op_type for n in nodes}
    unknown = [v for v in values if v not in names and v not in ops]
    if unknown:
        raise TrtoptError(f"--exclude {unknown[0]!r} is neither a node name nor an op type in {onnx_path}",
                          f"op types there: {', '.join(sorted(ops))}")
    return tuple(v for v in values if v in names), tuple(v for v in values if v not in names)


def _mixed_precision(args: argparse.Namespace, ranges, config):
    """Keep the fewest layers in FP32 so that agreement (or cosine) with FP32 drops by at most --max-accuracy-drop."""
    from dataclasses import replace

    from trtopt.sensitivity import choose_mixed_precision, make_scorer, model_outputs

    feed = _onnx_feed(args, args.model)
    scorer = make_scorer(args.metric, feed, model_outputs(Path(args.model), feed, None))
    choice = choose_mixed_precision(args.model, ranges, config, scorer, args.max_accuracy_drop,
                                    on_step=_step_printer(args))
    print(f"mixed precision: {len(choice['exclude_nodes'])} layer(s) kept in FP32 "
          f"({', '.join(choice['exclude_nodes']) or 'none'}); {args.metric} {choice['score']:.4f} "
          f"(bar: ≥ {1 - args.max_accuracy_drop:.4f}{'' if choice['met'] else ', NOT met'})")
    return replace(config, exclude_nodes=tuple(config.exclude_nodes) + tuple(choice["exclude_nodes"]))


def cmd_cache(args: argparse.Namespace) -> int:
    from trtopt import trt_cache

    if args.action == "inspect":
        found = trt_cache.inspect_cache(trt_cache.read_cache(args.file), onnx_path=args.onnx,
                                        expected_trt_version=args.trt_version)
        if args.json:
            print(json.dumps(found, indent=2))
        else:
            print(f"TensorRT {found['trt_version']} ({found['version_code']}), {found['algorithm']}, "
                  f"{found['tensor_count']} tensors, amax {found['amax_min']:.4g}..{found['amax_max']:.4g}")
            for warning in found["warnings"]:
                print(f"warning: {warning}")
        return 0
    if not args.output:
        raise TrtoptError(f"trtopt cache {args.action} needs -o/--output", "name the file to write")
    if args.action == "convert":
        cache = trt_cache.convert_cache(trt_cache.read_cache(args.file), trt_version=args.trt_version)
        trt_cache.write_cache(cache, args.output, force=args.force)
    elif args.action == "from-ranges":
        from trtopt.artifacts import Ranges

        cache = trt_cache.ranges_to_cache(Ranges.load(args.file), trt_version=args.trt_version or "10.3.0")
        trt_cache.write_cache(cache, args.output, force=args.force)
    else:  # to-ranges
        trt_cache.cache_to_ranges(trt_cache.read_cache(args.file)).save(args.output, force=args.force)
    print(f"wrote {args.output}")
    return 0


def _add_timing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], metavar="N", help="batch sizes (default 1 8)")
    p.add_argument("--iterations", type=int, default=100, help="timed calls per candidate and batch size (default 100)")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="time for S seconds per candidate instead")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls first (default 10)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch and ONNX Runtime alike")


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="inputs: .npy/.npz, an image folder, skimage:photos (default: random)")
    p.add_argument("--samples", type=int, default=None, help="number of samples (random data: default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed for random inputs")
    p.add_argument("--input-shape", action="append", metavar="[NAME:]DIMS",
                   help="input shape without batch, e.g. 3x224x224 (repeat per input)")


def _add_calibration(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=("entropy", "minmax", "percentile", "mse"), default="entropy",
                   help="range method (default entropy, TensorRT's EntropyCalibration2)")
    p.add_argument("--percentile", type=float, default=99.99, help="for --method percentile (default 99.99)")
    p.add_argument("--batch-size", type=int, default=16, help="samples per calibration run (memory bound)")


def _add_tolerances(p: argparse.ArgumentParser, atol: float, rtol: float, cosine: float) -> None:
    p.add_argument("--atol", type=float, default=atol, help=f"absolute tolerance (default {atol})")
    p.add_argument("--rtol", type=float, default=rtol, help=f"relative tolerance (default {rtol})")
    p.add_argument("--min-cosine", type=float, default=cosine, help=f"minimum cosine similarity (default {cosine})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trtopt", description="Make PyTorch models small and fast for NVIDIA "
                                     "inference, and prove it with numbers.")
    parser.add_argument("--version", action="version", version=f"trtopt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    # The same two flags after the subcommand too (``trtopt export ... -q``); SUPPRESS keeps the global value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress display")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("export", parents=[common], help="export a PyTorch model to ONNX and check parity with PyTorch")
    p.add_argument("model", help="torchvision:NAME, timm:NAME, zoo:NAME, package.module:factory, or a TorchScript file")
    p.add_argument("-o", "--output", required=True, help="destination .onnx file")
    p.add_argument("--checkpoint", help="state dict / checkpoint to load into the architecture")
    p.add_argument("--pretrained", action="store_true", help="hub weights (must already be in the local cache)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto")
    p.add_argument("--static-batch", action="store_true", help="fix the batch axis instead of making it dynamic")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    p.add_argument("--external-data", choices=("auto", "always", "never"), default="auto")
    p.add_argument("--no-parity", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument("--json", help="write the artifact record (sizes, hashes, parity) here")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    _add_data(p)
    _add_tolerances(p, 1e-4, 1e-3, 0.9999)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", parents=[common], help="time models side by side (interleaved); the first is the baseline")
    p.add_argument("models", nargs="+", help="model specs (PyTorch eager) and/or .onnx files (ONNX Runtime)")
    p.add_argument("--checkpoint", help="checkpoint for the PyTorch model specs")
    p.add_argument("--json", help="write the report JSON here")
    p.add_argument("--markdown", action="store_true", help="print the full Markdown report")
    p.add_argument("--force", action="store_true", help="overwrite --json (and --save-baseline, --summary)")
    g = p.add_argument_group("regression gating")
    g.add_argument("--save-baseline", metavar="FILE", help="record this run (samples, environment, golden outputs) as a baseline")
    g.add_argument("--baseline", metavar="FILE", help="compare with a baseline; exit 1 on a significant regression "
                   "beyond --tolerance or outputs that differ from the golden ones")
    g.add_argument("--repeats", type=int, default=None, metavar="N",
                   help="independent timing runs per batch size (default 5 with --save-baseline/--baseline, else 1)")
    g.add_argument("--tolerance", type=float, default=0.10, help="allowed slowdown before a regression (default 0.10 = 10%%)")
    g.add_argument("--allow-env-mismatch", action="store_true", help="compare even if the baseline came from another environment")
    g.add_argument("--history", metavar="FILE", help="append this comparison to a JSON Lines history file")
    g.add_argument("--summary", metavar="FILE", help="also write the Markdown summary here (e.g. $GITHUB_STEP_SUMMARY)")
    g.add_argument("--golden-atol", action="append", metavar="[OUTPUT:]ATOL", help="golden output tolerance (default 1e-4)")
    g.add_argument("--golden-rtol", action="append", metavar="[OUTPUT:]RTOL", help="golden output tolerance (default 1e-3)")
    _add_timing(p)
    _add_data(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("compare", parents=[common], help="compare a candidate's outputs with a reference's (exit 1 if they differ)")
    p.add_argument("reference", help="model spec or .onnx file")
    p.add_argument("candidate", help="model spec or .onnx file")
    p.add_argument("--checkpoint", help="checkpoint for a PyTorch reference")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", help="write the comparison JSON here")
    p.add_argument("--force", action="store_true", help="overwrite --json")
    _add_data(p)
    _add_tolerances(p, 1e-4, 1e-3, 0.999)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("calibrate", parents=[common], help="streaming INT8 calibration of an FP32 ONNX model → ranges JSON")
    p.add_argument("model", help="FP32 .onnx file")
    p.add_argument("-o", "--output", required=True, help="ranges JSON to write")
    p.add_argument("--cache", help="also write a TensorRT calibration cache here")
    p.add_argument("--trt-version", default="10.3.0", help="TensorRT version the cache is for (default 10.3.0, JetPack 6)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    _add_calibration(p)
    _add_data(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("quantize", parents=[common], help="ranges → INT8 Q/DQ ONNX for a target (onnxruntime or tensorrt), or FP16 by casts")
    p.add_argument("model", help="FP32 .onnx file (the one the ranges were calibrated on)")
    p.add_argument("-o", "--output", required=True, help="INT8 .onnx to write")
    p.add_argument("--ranges", help="ranges JSON from trtopt calibrate (else calibrate now on --data)")
    p.add_argument("--precision", choices=("int8", "fp16"), default="int8",
                   help="int8 (Q/DQ from ranges) or fp16 (casts: TensorRT 11's FP16 route; --exclude takes op types)")
    p.add_argument("--target", choices=("onnxruntime", "tensorrt"), default="onnxruntime",
                   help="onnxruntime: U8S8 for CPUs; tensorrt: symmetric S8S8 Q/DQ on Conv/MatMul/Gemm inputs")
    p.add_argument("--exclude", action="append", metavar="NAME|OPTYPE", help="keep a node (or every node of an op type) in FP32")
    p.add_argument("--op-types", default=None, metavar="A,B",
                   help="op types to quantize (default: the target's set; transformers on onnxruntime: MatMul,Gemm)")
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True,
                   help="per-channel weight scales (default on)")
    p.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=None,
                   help="7-bit weights (default: on for onnxruntime, whose x86 U8S8 kernels can saturate; off for tensorrt)")
    p.add_argument("--max-accuracy-drop", type=float, default=None, metavar="FRACTION",
                   help="keep the fewest layers in FP32 so --metric vs FP32 drops by at most this (e.g. 0.01)")
    p.add_argument("--metric", choices=("agreement", "cosine"), default="agreement",
                   help="score for --max-accuracy-drop: top-1 agreement (classifiers) or mean cosine (embeddings)")
    p.add_argument("--json", help="write the artifact record here")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    _add_calibration(p)
    _add_data(p)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("cache", parents=[common], help="TensorRT calibration caches: inspect, convert, from/to ranges")
    p.add_argument("action", choices=("inspect", "convert", "from-ranges", "to-ranges"))
    p.add_argument("file", help="a cache (inspect, convert, to-ranges) or a ranges JSON (from-ranges)")
    p.add_argument("-o", "--output", help="file to write (convert, from-ranges, to-ranges)")
    p.add_argument("--onnx", help="inspect: check tensor names against this model")
    p.add_argument("--trt-version", default=None, help="inspect: expected version; convert/from-ranges: target version")
    p.add_argument("--json", action="store_true", help="inspect: print JSON")
    p.add_argument("--force", action="store_true", help="overwrite the output")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("doctor", parents=[common], help="what this machine can run and what to install")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("demo", parents=[common], help="the main job: the full pipeline on a real pretrained model and real photos → report.html")
    p.add_argument("--out", default="runs/demo", help="folder for the demo's run directories (default runs/demo)")
    p.add_argument("--iterations", type=int, default=100, help="timed calls per variant and batch size")
    p.add_argument("--force", action="store_true", help="re-run every stage (without it, unchanged stages are reused)")
    p.set_defaults(func=cmd_demo)

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_commands(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # trtopt's own warnings show; third-party libraries' (exporters, optimizers) only with --debug.
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("trtopt").setLevel(logging.DEBUG if args.debug else logging.WARNING)
    # Third-party deprecation chatter (torch.jit, exporters) would bury trtopt's one-line messages;
    # route Python warnings into logging and show them only with --debug.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.DEBUG if args.debug else logging.ERROR)
    try:
        return args.func(args)
    except TrtoptError as e:
        if args.debug:
            raise
        print(f"trtopt: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("trtopt: interrupted; no partial outputs were kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
