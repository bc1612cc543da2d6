"""``trtopt export``: PyTorch → ONNX with a parity check, over `trtopt.export.export_onnx`.
"""

from __future__ import annotations

import argparse
import os

from trtopt._config import field_default
from trtopt.cli._common import (
    add_data,
    add_tolerances,
    feed_for,
    input_declarations,
    onnx_outputs,
    progress_bar,
    step_printer,
    write_json_output,
)
from trtopt.export import EXPORTERS, EXTERNAL_DATA, ExportConfig
from trtopt.progress import running


def cmd_export(args: argparse.Namespace) -> int:
    """``trtopt export``: PyTorch → ONNX, parity-checked before the file is kept; exit status."""
    from trtopt.export import export_onnx
    from trtopt.files import check_outputs, check_suffix
    from trtopt.measure.compare import Tolerances
    from trtopt.models.inputs import example_batch
    from trtopt.models.load import load_model

    check_suffix(args.output, (".onnx",), "an ONNX model")
    check_outputs([*onnx_outputs(args.output), args.json], args.force, inputs=[args.model, args.checkpoint, args.data])
    declared = input_declarations(args)
    loaded = load_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained, inputs=declared)
    batch = example_batch(declared)  # a declared batch is the example batch (static: the model's batch)
    sizes = {} if batch is None else {"example_batch_size": batch if args.static_batch else max(batch, 2)}
    config = ExportConfig(**sizes, opset=args.opset, dynamic_batch=not args.static_batch, exporter=args.exporter,
                          simplify=not args.no_simplify, external_data=args.external_data, check_parity=not args.no_parity,
                          parity=Tolerances(atol=args.atol, rtol=args.rtol, min_cosine=args.min_cosine))
    feed = feed_for(args, loaded.inputs, loaded.preprocess, count=max(args.samples or 8, 8))
    progress, update = progress_bar(args)
    with progress, running(update, f"exporting {os.path.basename(args.output)}"):
        artifact = export_onnx(loaded, args.output, config, feed=feed, force=args.force, on_step=step_printer(args),
                               verbose=getattr(args, "debug", False))
    result = artifact.to_dict()
    write_json_output(args.json, result, args.force)
    parity = ", ".join(f"{k}: max abs {v['outputs'][0]['max_abs_error']:.2e}, cosine {v['outputs'][0]['cosine']:.6f}"
                       for k, v in artifact.parity.items())
    print(f"wrote {artifact.path} ({artifact.size_bytes / 1e6:.2f} MB, {artifact.exporter} exporter, opset {artifact.opset})"
          + (f"; parity {parity}" if parity else ""))
    for note in artifact.notes:
        print(f"  {note}" if note.startswith("warning: ") else f"  note: {note}")
    return 0


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register this family's subcommands on ``sub`` (``common``: the flags every subcommand takes)."""
    p = sub.add_parser("export", parents=[common], help="export a PyTorch model to ONNX and check parity with PyTorch")
    p.add_argument("model", help="torchvision:NAME, timm:NAME, zoo:NAME, package.module:factory, or a TorchScript file")
    p.add_argument("-o", "--output", required=True, help="destination .onnx file")
    p.add_argument("--checkpoint", help="state dict / checkpoint to load into the architecture")
    p.add_argument("--pretrained", action="store_true", help="hub weights (must already be in the local cache)")
    p.add_argument("--opset", type=int, default=ExportConfig.opset, help="ONNX opset (default %(default)s)")
    p.add_argument("--exporter", choices=EXPORTERS, default=ExportConfig.exporter,
                   help="auto: dynamo, falling back to TorchScript (default %(default)s)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch axis instead of making it dynamic")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    p.add_argument("--external-data", choices=EXTERNAL_DATA, default=ExportConfig.external_data,
                   help="weights in a .onnx.data side file: auto (only near protobuf's 2 GB limit), always or never "
                        "(default %(default)s)")
    p.add_argument("--no-parity", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument("--json", help="write the artifact record (sizes, hashes, parity) here")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    add_data(p, dynamic=True)
    parity = field_default(ExportConfig, "parity")
    add_tolerances(p, parity.atol, parity.rtol, parity.min_cosine)
    p.set_defaults(func=cmd_export)
