"""``trtopt qat``: quantization-aware training (labels) or distillation from the FP32 model (QAD), then INT8 ONNX.

A thin layer over `trtopt.compress.qat.qat` (ModelOpt fake quantization, trtopt's trainer) and
`trtopt.quant.qat_export.export_qat` (TensorRT Q/DQ and ONNX Runtime layouts). Runs the same under
``torchrun --nproc_per_node=N -m trtopt qat ...`` (DDP); then only rank 0 exports and writes files.
Data, label checks and the progress bar are shared with `trtopt distill` (`trtopt.cli._training`).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from trtopt.cli._common import count, ddp_rank, write_json_output
from trtopt.compress.config import QAT_MODES, QATConfig
from trtopt.errors import TrtoptError
from trtopt.quant.quantize import TARGETS

_TRAINING = QATConfig().training


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register this family's subcommands on ``sub`` (``common``: the flags every subcommand takes)."""
    p = sub.add_parser("qat", parents=[common],
                       help="quantization-aware training (QAT, labels) or distillation from FP32 (QAD) with ModelOpt, "
                            "then INT8 ONNX for TensorRT and ONNX Runtime")
    p.add_argument("model", help="FP32 model: spec (zoo:NAME, package.module:factory, ...) or a model file")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="folder for model.tensorrt.onnx, model.onnxruntime.onnx and qat.json")
    p.add_argument("--checkpoint", help="state dict to load into the model's architecture first")
    p.add_argument("--data", required=True, help="training data: digits (train split; evaluated on test) or an .npz "
                   "with one array per input name (+ 'labels' for mode qat)")
    p.add_argument("--eval-data", help="eval data .npz (same layout); default for --data digits: its test split")
    p.add_argument("--mode", choices=QAT_MODES, default=QATConfig.mode,
                   help="qat: cross-entropy on the labels; qad: distil the FP32 model's outputs, no labels (default %(default)s)")
    p.add_argument("--calibration-samples", type=int, default=QATConfig.calibration_samples,
                   help="first training samples that calibrate the quantizers (default %(default)s)")
    p.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS),
                   help="INT8 layouts to write (default: both)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, default=None, help=f"passes over the data (default {_TRAINING.epochs})")
    length.add_argument("--steps", type=int, default=None, help="optimizer steps instead of epochs")
    p.add_argument("--lr", type=float, default=_TRAINING.lr, help="peak learning rate (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=_TRAINING.batch_size,
                   help="global batch size, split across DDP processes (default %(default)s)")
    p.add_argument("--temperature", type=float, default=_TRAINING.temperature,
                   help="softmax temperature of the QAD loss (default %(default)s)")
    p.add_argument("--checkpoint-dir", help="write last.pt / best.pt here")
    p.add_argument("--resume", metavar="DIR", help="continue from DIR/last.pt (and keep checkpointing there)")
    p.add_argument("--seed", type=int, default=_TRAINING.seed, help="seeds the batch order (default %(default)s)")
    p.add_argument("--threads", type=count(), default=None, help="torch CPU threads")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.set_defaults(func=cmd_qat)


def cmd_qat(args: argparse.Namespace) -> int:
    """``trtopt qat``: fake-quantize, train, export both INT8 layouts; exit status."""
    from dataclasses import replace

    import numpy as np

    from trtopt._modelopt import import_modelopt
    from trtopt.cli._training import check_split_labels, training_data, training_progress
    from trtopt.compress.qat import qat
    from trtopt.files import check_outputs
    from trtopt.models.load import load_model
    from trtopt.quant.qat_export import export_qat

    main = ddp_rank() == 0
    out = os.path.join(args.output, "")
    paths = {t: os.path.join(out, f"model.{t}.onnx") for t in args.targets}
    record_path = os.path.join(out, "qat.json")
    if main:
        check_outputs([*paths.values(), record_path], args.force,
                      inputs=[args.model, args.checkpoint, args.data, args.eval_data])
    import_modelopt("modelopt.torch.quantization", "trtopt qat")  # missing extra: fail before loading anything
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    training = replace(_TRAINING, epochs=None if args.steps else (args.epochs or _TRAINING.epochs), max_steps=args.steps,
                       lr=args.lr, batch_size=args.batch_size, temperature=args.temperature,
                       checkpoint_dir=args.checkpoint_dir or args.resume, resume_from=args.resume, seed=args.seed)
    config = QATConfig(mode=args.mode, calibration_samples=args.calibration_samples, training=training)
    from trtopt.compress.trainer import check_checkpoint_dir, load_checkpoint

    if args.resume:
        load_checkpoint(args.resume)  # an unreadable checkpoint fails before the model and data load
    if main and training.checkpoint_dir:
        check_checkpoint_dir(training.checkpoint_dir)
    loaded = load_model(args.model, checkpoint=args.checkpoint)
    train, evaluation = training_data(args.data, args.eval_data, loaded.inputs)
    if args.mode == "qat" and train[1] is None:
        raise TrtoptError(f"--mode qat trains on labels but {args.data} has no 'labels' array",
                          "add labels to the .npz, or use --mode qad (distillation from the FP32 model, no labels)")
    if args.mode == "qat":
        check_split_labels(loaded.module, train, evaluation, args.data, args.eval_data)
    else:
        train = (train[0], None)
        evaluation = None if evaluation is None else (evaluation[0], None)
    progress, update = training_progress(args, main, "qat" if args.mode == "qat" else "qad")
    with progress:
        result = qat(loaded.module, train, config, eval_data=evaluation, progress=update)
    if not main:
        return 0
    inputs = train[0] if isinstance(train[0], tuple) else (train[0],)
    feed = {spec.name: np.asarray(a[:args.calibration_samples]) for spec, a in zip(loaded.inputs, inputs)}
    created = not os.path.isdir(out)
    os.makedirs(out, exist_ok=True)
    try:
        artifacts = export_qat(replace(loaded, module=result.model), paths, feed, force=args.force)
    except BaseException:
        if created and not os.listdir(out):  # leave no empty output folder behind
            os.rmdir(out)
        raise
    record = result.to_dict() | {"model": args.model, "data": args.data, "outputs": {t: a.to_dict() for t, a in artifacts.items()}}
    write_json_output(record_path, record, args.force)
    losses = result.training.step_losses
    metric = "" if result.training.best_metric is None else f", best eval metric {result.training.best_metric:.4f}"
    print(f"wrote {', '.join(paths.values())}: {args.mode} {result.training.steps} steps, loss {losses[0]:.4f} → "
          f"{losses[-1]:.4f}{metric}; {result.quantizers['weight']} weight / {result.quantizers['input']} activation quantizers")
    return 0

