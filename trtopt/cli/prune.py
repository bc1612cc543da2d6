"""``trtopt prune`` and ``trtopt check-2to4``: the CLI over `trtopt.compress.prune` (heavy imports inside handlers)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from trtopt.cli._common import (
    EXIT_CHECK_FAILED,
    add_input_declarations,
    add_speedup_search,
    input_declarations,
    speedup_search_config,
    speedup_search_outcome,
    step_printer,
    write_json_output,
)
from trtopt.compress.config import IMPORTANCES, PRUNE_METHODS, PruneConfig


def cmd_prune(args: argparse.Namespace) -> int:
    """``trtopt prune``: prune (or search a measured speedup) and save the module; exit status."""
    from trtopt.compress.prune import prune_loaded
    from trtopt.files import check_outputs, check_suffix
    from trtopt.models.load import load_model
    from trtopt.models.module_file import MODULE_FILE_SUFFIXES, save_module
    from trtopt.speedup_search import search_speedup

    check_suffix(args.output, MODULE_FILE_SUFFIXES, "a trtopt model file")
    config = PruneConfig(method=args.method, ratio=args.ratio, global_pruning=args.global_pruning,
                         importance=args.importance, round_to=args.round_to, ignored_layers=tuple(args.ignore or ()),
                         protect_first_last=not args.no_protect)
    target = speedup_search_config(args)
    check_outputs([args.output, args.json], args.force, inputs=[args.model, args.checkpoint])  # before any work
    loaded = load_model(args.model, checkpoint=args.checkpoint, inputs=input_declarations(args))
    step = step_printer(args)
    report: dict[str, Any] = {"model": args.model}
    if target is not None:
        step(f"searching the channel ratio for a {target.target_speedup}× speedup on ONNX Runtime "
             f"(batch {target.batch_size}, {target.threads} threads)")
        search = search_speedup(loaded, config, target, on_step=lambda s: step(
            f"ratio {s.compression['ratio']:.3f}: MACs ÷{s.compression['macs_reduction']:.2f}, speedup {s.speedup:.2f}× "
            f"[{s.speedup_ci_low:.2f}, {s.speedup_ci_high:.2f}]"))
        result = search.result
        pruned = dataclasses.replace(loaded, module=search.module)
        report["speedup_search"] = search.to_dict()
    else:
        step(f"pruning {args.model} ({config.method}, ratio {config.ratio})")
        pruned, result = prune_loaded(loaded, config)
    report["result"] = result.to_dict()
    save_module(pruned, args.output, force=args.force, metadata={"prune": result.to_dict()})
    write_json_output(args.json, report, args.force)
    print(f"wrote {args.output}: parameters {result.parameters_before:,} → {result.parameters_after:,} "
          f"(pruning rate {result.pruning_rate_percent:.1f} % of parameters), MACs/sample {result.macs_before / 1e6:.1f} M → "
          f"{result.macs_after / 1e6:.1f} M, channel ratio {result.channel_ratio:.3f}")
    if result.equivalence is not None:
        print(f"checked: equals the original with the removed channels masked (relative max error: outputs "
              f"{result.equivalence.output_residual:.1e}, worst of {result.equivalence.layers_compared} layers "
              f"{result.equivalence.max_layer_residual:.1e})")
    for note in result.ratio_notes[:3]:
        print(f"note: {note['layer']!r} lost {note['ratio_got']:.3f} of its channels, not {note['ratio_asked']}: {note['reason']}")
    if len(result.ratio_notes) > 3:
        print(f"note: {len(result.ratio_notes) - 3} more layers with another ratio (ratio_notes in --json)")
    return 0 if target is None else speedup_search_outcome(search)


def cmd_check_2to4(args: argparse.Namespace) -> int:
    """``trtopt check-2to4``: prove the 2:4 pattern in an ONNX model; exit status (1 naming violating nodes)."""
    from trtopt.files import check_outputs
    from trtopt.trt.sparsity import check_2to4

    check_outputs([args.json], args.force, inputs=[args.model])
    check = check_2to4(args.model)
    write_json_output(args.json, check.to_dict(), args.force)
    print(f"{args.model}: {len(check.layers)} layers checked, {len(check.skipped)} skipped (input dim not a multiple of 4)")
    if check.ok:
        print("2:4 pattern holds in every checked layer")
        return 0
    names = check.violating
    print(f"2:4 pattern violated in {len(names)} layer(s): {', '.join(names[:10])}{' …' if len(names) > 10 else ''}"
          if names else "no Conv/Gemm/MatMul with a constant weight to check")
    return EXIT_CHECK_FAILED


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``prune`` and ``check-2to4``."""
    p = sub.add_parser("prune", parents=[common], help="prune a PyTorch model (unstructured, structured channels, 2:4) → a loadable .pt")
    p.add_argument("model", help="torchvision:NAME, timm:NAME, zoo:NAME, package.module:factory, or a saved model file")
    p.add_argument("-o", "--output", required=True, help="pruned model file (.pt; trtopt export/bench/compare load it)")
    p.add_argument("--checkpoint", help="state dict / checkpoint to load into the architecture first")
    p.add_argument("--method", choices=PRUNE_METHODS, default=PruneConfig.method,
                   help="structured: remove channels/heads (smaller, faster); unstructured: zero weights; 2:4: "
                        "TensorRT sparse pattern (default %(default)s)")
    p.add_argument("--ratio", type=float, default=PruneConfig.ratio, help="fraction of channels (structured) or weights "
                   "(unstructured) to remove, in [0, 1) (default %(default)s)")
    p.add_argument("--global", dest="global_pruning", action="store_true", help="rank across all layers instead of per layer")
    p.add_argument("--importance", choices=IMPORTANCES, default=PruneConfig.importance,
                   help="channel importance (structured): l1/l2 weight magnitude, bn BatchNorm scale, taylor "
                        "|weight × gradient| (default %(default)s)")
    p.add_argument("--ignore", action="append", metavar="NAME", help="module name never pruned (repeat)")
    p.add_argument("--round-to", type=int, default=PruneConfig.round_to,
                   help="keep channel counts multiples of this (default %(default)s)")
    p.add_argument("--no-protect", action="store_true", help="also prune the first layer's and last layer's outputs")
    add_speedup_search(p, "raise the ratio step by step until the ONNX model is X× faster on ONNX Runtime (measured)")
    add_input_declarations(p)
    p.add_argument("--json", help="write the pruning report (and search steps) here")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("check-2to4", parents=[common], help="prove the 2:4 sparsity pattern in an ONNX model's weights (exit 1 if not)")
    p.add_argument("model", help=".onnx file")
    p.add_argument("--json", help="write per-layer results here")
    p.add_argument("--force", action="store_true", help="overwrite --json")
    p.set_defaults(func=cmd_check_2to4)
