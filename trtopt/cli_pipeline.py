"""``trtopt optimize``: a recipe's stages into a run directory (see `trtopt.pipeline`)."""

from __future__ import annotations

import argparse

from trtopt import cli


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("optimize", parents=[common],
                       help="run a recipe's stages (export, calibrate, quantize, profile, compare) into a run directory "
                            "with report.json/.md/.html and plots; unchanged stages are reused")
    p.add_argument("recipe", help="YAML recipe (see examples/)")
    p.add_argument("--out", default=None, help="run directory (default runs/<recipe name>)")
    p.add_argument("--force", action="store_true", help="re-run every stage (and use a folder that is not a run directory)")
    p.add_argument("--iterations", type=int, default=None, help="override timing.iterations")
    p.add_argument("--threads", type=int, default=None, help="override threads")
    p.add_argument("--stages", default=None, metavar="A,B", help="override stages, e.g. export,calibrate,quantize")
    p.set_defaults(func=cmd_optimize)


def cmd_optimize(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trtopt.config import load_recipe, merge
    from trtopt.pipeline import optimize
    from trtopt.report import markdown_table

    recipe = load_recipe(args.recipe)
    recipe = merge(recipe, {"threads": args.threads, "timing": {"iterations": args.iterations},
                            "stages": args.stages.split(",") if args.stages else None})
    out = args.out or str(Path("runs") / Path(args.recipe).stem)
    progress, update = cli._progress(args)
    with progress:
        report, paths = optimize(recipe, out, force=args.force, on_step=cli._step_printer(args), on_progress=update)
    if report["rows"]:
        print(markdown_table(report["rows"]))
    print(f"\nreport: {paths['html']} (also {paths['markdown'].name}, data {paths['json'].name}); run directory: {out}")
    return 0
