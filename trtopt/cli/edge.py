"""``trtopt edge-export``: a PyTorch model → ExecuTorch ``.pte`` or LiteRT ``.tflite`` (FP32 or INT8).

The result is timed and compared like any other model: ``trtopt bench zoo:efficientnet_lite0 m.pte m.tflite``
and ``trtopt compare zoo:efficientnet_lite0 m.pte`` open ``.pte``/``.tflite`` files on their runtimes.
"""

from __future__ import annotations

import argparse

from trtopt.cli._common import add_data, feed_for, input_declarations, step_printer, write_json_output
from trtopt.edge.convert import PRECISIONS, EdgeConfig


def cmd_edge_export(args: argparse.Namespace) -> int:
    """``trtopt edge-export``: PyTorch → ``.pte`` / ``.tflite`` with its sidecar; exit status."""
    from trtopt.edge.artifact import edge_format, sidecar_path
    from trtopt.edge.export import export_edge
    from trtopt.errors import TrtoptError
    from trtopt.files import check_outputs
    from trtopt.models.load import load_model

    if edge_format(args.output) is None:  # before loading anything
        raise TrtoptError(f"output {args.output} has no edge suffix", "name it *.pte (ExecuTorch) or *.tflite (LiteRT)")
    check_outputs([args.output, sidecar_path(args.output), args.json], args.force,
                  inputs=[args.model, args.checkpoint, args.data])
    config = EdgeConfig(precision=args.precision, batch_size=args.batch_size, per_channel=not args.per_tensor,
                        calibration_samples=args.samples)
    loaded = load_model(args.model, checkpoint=args.checkpoint, inputs=input_declarations(args))
    feed = feed_for(args, loaded.inputs, loaded.preprocess, count=args.samples or max(args.batch_size, 8)) \
        if args.precision == "int8" or args.data else None
    artifact = export_edge(loaded, args.output, config, calibration=feed, force=args.force, on_step=step_printer(args))
    write_json_output(args.json, artifact.to_dict(), args.force)
    print(f"wrote {artifact.path} ({artifact.size_bytes / 1e6:.2f} MB, {artifact.backend}, {artifact.precision}, "
          f"batch {args.batch_size}) and {artifact.sidecar.name}")
    for note in artifact.notes:
        print(f"  note: {note}")
    return 0


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register this family's subcommands on ``sub`` (``common``: the flags every subcommand takes)."""
    p = sub.add_parser("edge-export", parents=[common],
                       help="export a PyTorch model to ExecuTorch .pte (XNNPACK) or LiteRT .tflite, FP32 or INT8")
    p.add_argument("model", help="torchvision:NAME, timm:NAME, zoo:NAME, package.module:factory, or a TorchScript file")
    p.add_argument("-o", "--output", required=True, help="destination: *.pte (ExecuTorch) or *.tflite (LiteRT)")
    p.add_argument("--precision", choices=PRECISIONS, default=EdgeConfig.precision,
                   help="int8: PT2E static quantization calibrated on --data (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=EdgeConfig.batch_size,
                   help="the (static) batch size the file is built for (default %(default)s)")
    p.add_argument("--per-tensor", action="store_true", help="int8 weights per tensor instead of per channel")
    p.add_argument("--checkpoint", help="state dict / checkpoint to load into the architecture")
    p.add_argument("--json", help="write the artifact record here")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    add_data(p)
    p.set_defaults(func=cmd_edge_export)
