"""``trtopt optimize`` (a recipe's stages into a run directory, see `trtopt.pipeline`) and ``trtopt demo``.
"""

from __future__ import annotations

import argparse

from trtopt.cli._common import count, print_report, progress_bar, step_printer


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register this family's subcommands on ``sub`` (``common``: the flags every subcommand takes)."""
    p = sub.add_parser("optimize", parents=[common],
                       help="run a recipe's stages (export, calibrate, quantize, profile, compare) into a run directory "
                            "with report.json/.md/.html and plots; unchanged stages are reused")
    p.add_argument("recipe", help="YAML recipe (see examples/)")
    p.add_argument("--out", default=None, help="run directory (default runs/<recipe name>)")
    p.add_argument("--force", action="store_true", help="re-run every stage of the run directory (a folder trtopt did not create is refused)")
    p.add_argument("--iterations", type=int, default=None, help="override timing.iterations")
    p.add_argument("--threads", type=count(), default=None, help="override threads")
    p.add_argument("--stages", default=None, metavar="A,B", help="override stages, e.g. export,calibrate,quantize "
                   "(a partial rerun writes its report into partial/, beside the fuller one)")
    p.add_argument("--markdown", action="store_true", help="print the full Markdown report instead of the summary tables")
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser("demo", parents=[common], help="the main job: the full pipeline on a real pretrained model and real photos → report.html")
    p.add_argument("--out", default="runs/demo", help="folder for the demo's run directories (default runs/demo)")
    p.add_argument("--iterations", type=int, default=100, help="timed calls per variant and batch size")
    p.add_argument("--force", action="store_true", help="re-run every stage (without it, unchanged stages are reused)")
    p.add_argument("--markdown", action="store_true", help="print the full Markdown reports instead of the summary tables")
    p.set_defaults(func=cmd_demo)


def cmd_optimize(args: argparse.Namespace) -> int:
    """``trtopt optimize``: run a recipe's stages into a run directory and print the results table; exit status."""
    from pathlib import Path

    from trtopt._config import merge
    from trtopt.config import load_recipe
    from trtopt.pipeline import optimize

    recipe = load_recipe(args.recipe)
    recipe = merge(recipe, {"threads": args.threads, "timing": {"iterations": args.iterations},
                            "stages": [s.strip() for s in args.stages.split(",")] if args.stages is not None else None,
                            "trust_code": True if args.trust_code else None})
    out = args.out or str(Path("runs") / Path(args.recipe).stem)
    progress, update = progress_bar(args)
    with progress:
        report, paths = optimize(recipe, out, force=args.force, on_step=step_printer(args), on_progress=update)
    print_report(report, args)
    print(f"\nreport: {paths['html']} (also {paths['markdown'].name}, data {paths['json'].name}); run directory: {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``trtopt demo``: the built-in recipes through `trtopt.pipeline.optimize`; exit status."""
    from pathlib import Path

    from trtopt.demo import demo_recipes, run_demo

    written = []
    for name, recipe in demo_recipes(iterations=args.iterations).items():
        progress, update = progress_bar(args)
        with progress:
            report, paths = run_demo(recipe, Path(args.out) / name, force=args.force, on_step=step_printer(args),
                                     on_progress=update)
        print_report(report, args)
        written.append(paths["html"])
    print("\nreports: " + ", ".join(map(str, written)) + " (each with report.md, report.json and its artifacts)")
    return 0
