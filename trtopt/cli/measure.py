"""``trtopt bench`` (interleaved timing, regression gating against a baseline) and ``trtopt compare``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from trtopt.cli._common import (
    EXIT_CHECK_FAILED,
    JSON_HELP,
    add_data,
    add_timing,
    add_tolerances,
    check_batch_sizes,
    check_fits_memory,
    count,
    feed_for,
    input_declarations,
    print_report,
    progress_bar,
    timing_config,
    write_json_output,
)
from trtopt.errors import TrtoptError
from trtopt.measure.baseline import GateConfig
from trtopt.measure.compare import Tolerances


def cmd_bench(args: argparse.Namespace) -> int:
    """``trtopt bench``: time models interleaved (and gate against a baseline); exit status (1 on a regression)."""
    from trtopt.measure.bench import bench, open_candidate, run_all
    from trtopt.report.model import build_report

    declared = input_declarations(args)
    check_batch_sizes(args.batch_sizes)
    gate = _gate_setup(args)  # a bad baseline or an unwritable output fails before any timing
    candidates = [open_candidate(m, threads=args.threads, inputs=declared, checkpoint=args.checkpoint)
                  for m in args.models]
    for candidate in candidates:
        if not candidate.inputs:
            raise TrtoptError(f"{candidate.source} has no inputs, so there is nothing to feed it and nothing to time",
                              "bench models that take inputs")
    check_fits_memory(candidates[0].inputs, max(args.batch_sizes), "the largest batch")
    shapes_named = {s.name: s.shape for s in candidates[0].inputs}
    preprocess = getattr(getattr(candidates[0].runner, "loaded", None), "preprocess", None)
    feed = feed_for(args, candidates[0].inputs, preprocess)
    if gate:
        from trtopt.measure.baseline import control_candidate

        candidates.append(control_candidate(args.threads))
    progress, update = progress_bar(args)
    with progress:
        repeats = args.repeats or (5 if gate else 1)
        result = bench(candidates, feed, args.batch_sizes, timing_config(args), on_progress=update, repeats=repeats)
    settings = {"models": args.models, "batch_sizes": args.batch_sizes, "threads": args.threads,
                "data": args.data or "random", "input_shapes": shapes_named, "repeats": repeats}
    report = build_report("trtopt bench", result, recipe=settings)
    write_json_output(args.json, report, args.force)
    if gate is None:
        print_report(report, args)
        return 0
    outputs = {c.name: run_all(c, feed) for c in candidates if c.inputs}  # the control has no inputs
    return _gate_finish(args, gate, result, report["environment"], settings, outputs)

def _gate_setup(args: argparse.Namespace) -> dict[str, Any] | None:
    """Check every output of ``bench`` and its regression-gating flags, and read the baseline (and its golden
    outputs), before anything is timed."""
    from trtopt.files import check_outputs
    from trtopt.measure.baseline import check_environment, golden_path, load_baseline, load_golden

    if args.save_baseline and args.baseline:
        raise TrtoptError("--save-baseline and --baseline were both given", "record a baseline or compare with one, not both")
    outputs = [args.json, args.summary]
    if args.save_baseline:
        outputs += [args.save_baseline, golden_path(args.save_baseline)]
    inputs = [*args.models, args.checkpoint, args.data]
    if args.baseline:
        inputs += [args.baseline, golden_path(args.baseline)]
    check_outputs(outputs, args.force, inputs=inputs, appended=[args.history])
    if not (args.save_baseline or args.baseline):
        return None
    if args.save_baseline:
        return {"mode": "save"}
    from trtopt.environment import environment

    config = GateConfig(tolerance=args.tolerance, allow_environment_mismatch=args.allow_env_mismatch)
    baseline = load_baseline(args.baseline)
    check_environment(baseline["environment"], environment(), config.allow_environment_mismatch,
                      baseline.get("settings"), {"threads": args.threads})
    if baseline.get("golden"):  # missing, edited or unreadable golden outputs fail here, not after the timing
        load_golden(args.baseline, baseline["golden"])
    return {"mode": "compare", "baseline": baseline, "config": config, "golden_tolerances": _golden_tolerances(args)}

def _gate_finish(args: argparse.Namespace, gate: dict[str, Any], result: dict[str, Any], env: dict[str, Any],
                 settings: dict[str, Any], outputs: dict[str, Any]) -> int:
    """Save the run as a baseline, or judge it against one (latency and golden outputs); exit 1 on failure."""
    from trtopt.measure.baseline import (
        append_history,
        baseline_from_bench,
        compare_with_baseline,
        gate_failures,
        golden_path,
        judge_golden,
        markdown_summary,
        save_baseline,
        save_golden,
    )

    if gate["mode"] == "save":
        golden = save_golden(outputs, golden_path(args.save_baseline), force=args.force)
        save_baseline(baseline_from_bench(result, env, settings, golden), args.save_baseline, force=args.force)
        print(f"wrote baseline {args.save_baseline} ({len(result['candidates'])} candidates × "
              f"{len(result['per_batch'])} batch sizes) and golden outputs {golden_path(args.save_baseline)}")
        return 0
    baseline = gate["baseline"]
    comparison = compare_with_baseline(baseline, baseline_from_bench(result, env, settings), gate["config"])
    golden = judge_golden(args.baseline, baseline, outputs, *gate["golden_tolerances"])
    summary = markdown_summary(comparison, golden)
    print(summary)
    if args.summary:
        from trtopt.files import write_text

        write_text(args.summary, summary, force=args.force)
    if args.history:
        append_history(args.history, comparison, env, golden)
    failures = gate_failures(comparison, golden)
    if failures:
        print(f"trtopt: regression gate failed: {'; '.join(failures)}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    return 0

def _golden_tolerances(args: argparse.Namespace):
    """--golden-atol/--golden-rtol values: ``1e-4`` (every output) or ``NAME:1e-3`` (one output)."""
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
    default = Tolerances(atol=Tolerances.atol if atol is None else atol, rtol=Tolerances.rtol if rtol is None else rtol)
    per_output = {name: Tolerances(atol=atols.get(name, default.atol), rtol=rtols.get(name, default.rtol),
                                   min_cosine=default.min_cosine) for name in set(atols) | set(rtols)}
    return default, per_output

def cmd_compare(args: argparse.Namespace) -> int:
    """``trtopt compare``: run both models on the same inputs and compare every output; exit status (1 on a mismatch)."""
    from trtopt.files import check_outputs
    from trtopt.measure.bench import open_candidate, run_all
    from trtopt.measure.compare import compare_outputs, measured

    check_outputs([args.json], args.force, inputs=[args.reference, args.candidate, args.checkpoint, args.data])
    declared = input_declarations(args)
    reference = open_candidate(args.reference, threads=args.threads, inputs=declared, checkpoint=args.checkpoint)
    candidate = open_candidate(args.candidate, threads=args.threads, inputs=declared)
    preprocess = getattr(getattr(reference.runner, "loaded", None), "preprocess", None)
    feed = feed_for(args, reference.inputs, preprocess)
    tol = Tolerances(atol=args.atol, rtol=args.rtol, min_cosine=args.min_cosine)
    result = compare_outputs(run_all(reference, feed), run_all(candidate, feed), tol)
    result.update(reference=args.reference, candidate=args.candidate, samples=len(next(iter(feed.values()))))
    write_json_output(args.json, result, args.force)
    for out in result["outputs"]:
        agree = "" if out["top1_agreement"] is None else f", top-1 agreement {out['top1_agreement']:.3f}"
        print(f"{'PASS' if out['passed'] else 'FAIL'} {out['output']}: max abs {measured(out['max_abs_error'], 3, 'e')}, "
              f"max rel {measured(out['max_rel_error'], 3, 'e')}, p99 abs {measured(out['abs_error_p99'], 3, 'e')}, "
              f"cosine {measured(out['cosine'], 6)}{agree}"
              + (f", {out['nan_count']} NaN/inf in the candidate" if out["nan_count"] else ""))
    for out in result["outputs"]:
        if out["reference_nan_count"]:
            print(f"trtopt: warning: the reference gives {out['reference_nan_count']} NaN/inf in output "
                  f"'{out['output']}' on these inputs, compared as equal where the candidate matches; check the "
                  "reference model and the inputs (--data)", file=sys.stderr)
    if not result["passed"]:
        from trtopt.measure.compare import failed_outputs_message

        print(f"trtopt: outputs differ beyond tolerances: {failed_outputs_message(result)}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    return 0


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register this family's subcommands on ``sub`` (``common``: the flags every subcommand takes)."""
    p = sub.add_parser("bench", parents=[common], help="time models side by side (interleaved); the first is the baseline")
    p.add_argument("models", nargs="+", help="model specs (PyTorch eager) and/or .onnx files (ONNX Runtime)")
    p.add_argument("--checkpoint", help="checkpoint for the PyTorch model specs")
    p.add_argument("--json", metavar="FILE", help=JSON_HELP)
    p.add_argument("--markdown", action="store_true", help="print the full Markdown report instead of the summary tables")
    p.add_argument("--force", action="store_true", help="overwrite --json (and --save-baseline, --summary)")
    g = p.add_argument_group("regression gating")
    g.add_argument("--save-baseline", metavar="FILE", help="record this run (samples, environment, golden outputs) as a baseline")
    g.add_argument("--baseline", metavar="FILE", help="compare with a baseline; exit 1 on a significant regression "
                   "beyond --tolerance or outputs that differ from the golden ones")
    g.add_argument("--repeats", type=count(), default=None, metavar="N",
                   help="independent timing runs per batch size (default 5 with --save-baseline/--baseline, else 1)")
    g.add_argument("--tolerance", type=float, default=GateConfig.tolerance,
                   help="allowed slowdown before a regression, as a fraction: 0.1 = 10%% slower (default %(default)s)")
    g.add_argument("--allow-env-mismatch", action="store_true", help="compare even if the baseline came from another environment")
    g.add_argument("--history", metavar="FILE", help="append this comparison to a JSON Lines history file")
    g.add_argument("--summary", metavar="FILE", help="also write the Markdown summary here (e.g. $GITHUB_STEP_SUMMARY)")
    g.add_argument("--golden-atol", action="append", metavar="[OUTPUT:]ATOL",
                   help=f"golden output absolute tolerance (default {Tolerances.atol})")
    g.add_argument("--golden-rtol", action="append", metavar="[OUTPUT:]RTOL",
                   help=f"golden output relative tolerance (default {Tolerances.rtol})")
    add_timing(p)
    add_data(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("compare", parents=[common], help="compare a candidate's outputs with a reference's (exit 1 if they differ)")
    p.add_argument("reference", help="model spec or .onnx file")
    p.add_argument("candidate", help="model spec or .onnx file")
    p.add_argument("--checkpoint", help="checkpoint for a PyTorch reference")
    p.add_argument("--threads", type=count(), default=None)
    p.add_argument("--json", help="write the comparison JSON here")
    p.add_argument("--force", action="store_true", help="overwrite --json")
    add_data(p)
    add_tolerances(p, Tolerances.atol, Tolerances.rtol, Tolerances.min_cosine)
    p.set_defaults(func=cmd_compare)
