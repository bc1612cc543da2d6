"""``trtopt cluster`` (weight sharing) and ``trtopt factorize`` (low-rank), over `trtopt.compress.share` / `trtopt.compress.lowrank`.

Both read a model spec (+ ``--checkpoint``), write their outputs atomically (refusing existing files
without ``--force``) and can write a JSON report. ``cluster`` writes the compact shared-weights file
and optionally the decoded weights as a checkpoint (``--checkpoint-out``, for ``trtopt export MODEL
--checkpoint`` and every later stage) and/or an ONNX export; ``factorize`` changes the architecture,
so its deployable output is the exported ONNX model.
"""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

from trtopt.cli._common import (
    add_data,
    add_speedup_search,
    count,
    ddp_rank,
    feed_for,
    input_declarations,
    onnx_outputs,
    speedup_search_config,
    speedup_search_outcome,
    step_printer,
    write_json_output,
)
from trtopt.compress.config import (
    CONV_SCHEMES,
    SHARE_GRANULARITIES,
    TIED_FINETUNE_BATCH_SIZE,
    TIED_FINETUNE_LR,
    DistillConfig,
    LowRankConfig,
    ShareConfig,
    tied_finetune,
)
from trtopt.errors import TrtoptError


def _load(args: argparse.Namespace):
    from trtopt.models.load import load_model

    return load_model(args.model, checkpoint=args.checkpoint, inputs=input_declarations(args))


def _check_outputs(args: argparse.Namespace, files: tuple[str | None, ...], onnx: str | None) -> None:
    """Check every output (and an ONNX model's ``.data`` side file) before any work starts."""
    from trtopt.files import check_outputs, check_suffix

    check_suffix(onnx, (".onnx",), "an ONNX model", "-o" if onnx == getattr(args, "output", None) else "--onnx")
    check_outputs([*files, *onnx_outputs(onnx)], args.force, inputs=[args.model, args.checkpoint, args.data])


def _export(args: argparse.Namespace, loaded, path: str) -> Any:
    from trtopt.export import ExportConfig, export_onnx

    feed = feed_for(args, loaded.inputs, loaded.preprocess, count=max(args.samples or 8, 8))
    return export_onnx(loaded, path, ExportConfig(), feed=feed, force=args.force, on_step=step_printer(args))


def _model_data(args: argparse.Namespace, loaded, source: str | None, count: int | None) -> tuple[Any, Any]:
    """(inputs in ``forward`` order or by keyword, labels or None) of a data source, for the torch-side stages."""
    from trtopt.data import labels_for

    feed = feed_for(argparse.Namespace(**{**vars(args), "data": source}), loaded.inputs, loaded.preprocess, count=count)
    names = [spec.name for spec in loaded.inputs]
    inputs = feed[names[0]] if len(names) == 1 else {n: feed[n] for n in names}
    labels = labels_for(source) if args.labels else None
    if labels is not None:
        labels = labels[:len(feed[names[0]])]
    return inputs, labels


def cmd_cluster(args: argparse.Namespace) -> int:
    """``trtopt cluster``: k-means weight sharing (uniform or mixed bits, optionally tied fine-tuning) → the
    compact codebook file, with its output fidelity on --data; exit status."""
    from trtopt.compress.distill import fidelity_probe
    from trtopt.compress.share import save_shared, share_weights

    config = ShareConfig(bits=args.bits, granularity=args.granularity, layers=tuple(args.layer or ()),
                         exclude=tuple(args.exclude or ()), min_elements=args.min_elements, int8_grid=args.int8_grid,
                         seed=args.seed, target_ratio=args.target_ratio, max_accuracy_drop=args.max_accuracy_drop,
                         protect_first_last=not args.no_protect, protect_depthwise=not args.no_protect,
                         finetune=tied_finetune(args.finetune_steps, args.lr, args.batch_size))
    needs_data = config.target_ratio is not None or config.max_accuracy_drop is not None or config.finetune is not None
    if needs_data and args.data in (None, "random") and args.train_data is None:
        given = "--data random is made-up inputs" if args.data == "random" else "no --data was given"
        raise TrtoptError(f"mixed bits and fine-tuning need real data, but {given}",
                          "give --data (evaluation) and --train-data (fine-tuning), e.g. --data skimage:photos --train-data skimage:crops:256")
    if args.labels and not all(str(s).startswith("dataset:") for s in (args.data, args.train_data or args.data)):
        raise TrtoptError("--labels needs labelled sources (dataset:NAME:SPLIT)", "use e.g. --data dataset:digits:test, or drop --labels")
    main = ddp_rank() == 0
    if main:
        from trtopt.files import check_suffix

        check_suffix(args.output, (".npz",), "a shared-weights archive (codebooks + indices, numpy .npz)")
        check_suffix(args.checkpoint_out, (".pt", ".pth"), "a state dict", "--checkpoint-out")
        _check_outputs(args, (args.output, args.json, args.checkpoint_out), args.onnx)
    if args.resume and args.checkpoint_dir is None:
        raise TrtoptError("--resume needs --checkpoint-dir", "give the folder of the interrupted run's checkpoints")
    if main and args.checkpoint_dir and config.finetune is not None:
        from trtopt.compress.trainer import check_checkpoint_dir

        check_checkpoint_dir(args.checkpoint_dir)
    loaded = _load(args)
    embeddings = "embedding" in loaded.output_names
    probe = None
    if args.data not in (None, "random"):
        probe = fidelity_probe(loaded.module, _model_data(args, loaded, args.data, args.samples), embeddings)
    train = _model_data(args, loaded, args.train_data or args.data, args.train_samples) if config.finetune else None
    outcome = share_weights(loaded.module, config, probe, train, embeddings, args.checkpoint_dir, bool(args.resume),
                           on_step=step_printer(args))
    if not main:
        return 0
    module = outcome.model
    info = save_shared(module, args.output, force=args.force)
    result: dict[str, Any] = {"model": args.model, "data": args.data, "train_data": args.train_data or args.data,
                              "report": outcome.to_dict(), "file": info.to_dict()}
    if args.checkpoint_out:
        import io

        import torch

        from trtopt.files import atomic_output

        buf = io.BytesIO()
        torch.save(module.state_dict(), buf)
        with atomic_output(args.checkpoint_out, args.force) as tmp:
            tmp.write_bytes(buf.getvalue())
        result["checkpoint"] = args.checkpoint_out
    if args.onnx:
        loaded.module = module
        result["onnx"] = _export(args, loaded, args.onnx).to_dict()
    write_json_output(args.json, result, args.force)
    report = outcome.result
    clustered = [la for la in report.layers if la.skipped is None]
    used = sorted({la.bits for la in clustered})
    bits = f"{used[0]} bits" if len(used) == 1 else f"mixed {min(used)}-{max(used)} bits"
    print(f"wrote {info.path}: {len(clustered)} weights shared at {bits} ({config.granularity}); "
          f"{info.file_bytes / 1e6:.3f} MB vs {info.state_bytes_fp32 / 1e6:.3f} MB FP32 state "
          f"({info.compression_ratio:.2f}× smaller)")
    for label, fid in (("fidelity", outcome.fidelity), ("after tied fine-tuning", outcome.fidelity_finetuned)):
        if fid:
            print(f"  {label} on {args.data} ({fid['samples']} samples): {_fidelity_text(fid)}")
    if probe is None:
        print("  fidelity: not measured (give --data with real inputs to measure agreement / cosine / accuracy)")
    if outcome.bits is not None:
        bc = outcome.bits
        print(f"  mixed bits: {'target met' if bc.target_met else 'TARGET MISSED'} after {bc.evaluations} evaluations; "
              f"protected: {', '.join(f'{n} ({why})' for n, why in list(bc.protected.items())[:4])}"
              f"{' …' if len(bc.protected) > 4 else ''}")
        counts = Counter(la.bits for la in report.layers if la.bits is not None)
        kept = sum(1 for la in report.layers if la.bits is None)
        print("  layers per bit-width: " + ", ".join(f"{b} bits × {counts[b]}" for b in sorted(counts))
              + (f", FP32 × {kept}" if kept else ""))
        if config.granularity == "auto":
            per_channel = sorted(n for n, g in bc.layer_granularity.items() if g == "channel")
            print(f"  per-channel codebooks: {len(per_channel)} of {len(bc.layer_granularity)} shared layers"
                  + (f" ({', '.join(per_channel[:4])}{' …' if len(per_channel) > 4 else ''})" if per_channel else "")
                  + f"; left FP32 (no codebook worth its error): {len(bc.unshared)}")
    for la in report.layers:
        if la.skipped and not la.skipped[:1].isdigit():
            print(f"  skipped {la.name}: {la.skipped}")
    print(f"  note: {report.note}")
    return 0 if outcome.bits is None or outcome.bits.target_met else 1


def _fidelity_text(fid: dict[str, Any]) -> str:
    text = f"{fid['metric'].replace('_', ' ')} {fid['value']:.4f}"
    if "accuracy" in fid:
        text += f", accuracy {fid['accuracy']:.4f} (original {fid['reference_accuracy']:.4f})"
    return text + f", output error {fid['output_rel_error']:.4f}"


def _parse_ranks(values: list[str] | None) -> dict[str, int]:
    ranks: dict[str, int] = {}
    for value in values or []:
        name, sep, r = value.rpartition("=")
        if not sep or not name or not r.strip().isdigit():
            raise TrtoptError(f"cannot read --rank {value!r}", "write it as LAYER=RANK, e.g. --rank fc=16")
        ranks[name] = int(r)
    return ranks


def cmd_factorize(args: argparse.Namespace) -> int:
    """``trtopt factorize``: low-rank factorization (or a measured speedup search) → exported ONNX; exit status."""
    from trtopt.compress.lowrank import factorize_

    ranks = _parse_ranks(args.rank)
    chosen = [flag for flag, on in (("--energy", args.energy is not None), ("--param-budget", args.param_budget is not None),
                                    ("--rank", bool(ranks)), ("--target-speedup", args.target_speedup is not None)) if on]
    if len(chosen) > 1:
        raise TrtoptError(f"{' and '.join(chosen)} given together", "choose one rank rule: --energy, --param-budget, --rank or --target-speedup")
    method = "params" if args.param_budget is not None else "ranks" if ranks else "energy"
    config = LowRankConfig(method=method, energy=args.energy if args.energy is not None else LowRankConfig.energy,
                           param_budget=args.param_budget, ranks=ranks, conv=args.conv, layers=tuple(args.layer or ()),
                           exclude=tuple(args.exclude or ()), min_reduction=args.min_reduction,
                           rank_multiple=args.rank_multiple, min_rank=args.min_rank)
    target = speedup_search_config(args)
    # the distillation's config before any work: --lr / --distill-batch-size are checked even with --distill-steps 0
    tune = DistillConfig(epochs=None, max_steps=args.distill_steps or 1, batch_size=args.distill_batch_size, lr=args.lr,
                         restore_best=False)
    _check_outputs(args, (args.json,), args.output)
    loaded = _load(args)
    import torch

    example = feed_for(args, loaded.inputs, loaded.preprocess, count=max(args.samples or 8, 8))
    result: dict[str, Any] = {"model": args.model}
    original, probe = _fidelity_reference(args, loaded)
    if target is not None:
        from trtopt.speedup_search import search_speedup

        step = step_printer(args)
        step(f"searching the kept energy for a {target.target_speedup}× speedup on ONNX Runtime (batch {target.batch_size})")
        search = search_speedup(loaded, config, target, feed=example, on_step=lambda s: step(
            f"energy {s.compression['energy']:.4g}: parameters {s.compression['parameters']:,}, speedup {s.speedup:.2f}× "
            f"[{s.speedup_ci_low:.2f}, {s.speedup_ci_high:.2f}]"))
        loaded.module, report = search.module, search.result
        result["speedup_search"] = search.to_dict()
    else:
        example_t = tuple(torch.from_numpy(example[spec.name][:1]) for spec in loaded.inputs)  # forward's positional order
        _, report = factorize_(loaded.module, config, example_inputs=example_t)
    report_dict = report.to_dict()
    if probe is not None:
        report_dict["fidelity"] = probe(loaded.module)
    if args.distill_steps:
        report_dict["distill"], report_dict["fidelity_distilled"] = _distill_after(args, loaded, original, probe, tune)
    artifact = _export(args, loaded, args.output)
    result.update(report=report_dict, onnx=artifact.to_dict())
    write_json_output(args.json, result, args.force)
    print(f"wrote {artifact.path}: {report_dict['factorized_layers']} of {len(report_dict['layers'])} layers factorized; "
          f"parameters {report_dict['parameters_before']:,} → {report_dict['parameters_after']:,} "
          f"({report_dict['parameter_reduction']:.1%} fewer)")
    for la in report_dict["layers"]:
        what = f"skipped: {la['skipped']}" if la["skipped"] else (
            f"{la['scheme']} rank {la['rank']}, energy {la['energy_kept']:.3f}, "
            f"{la['params_before']:,} → {la['params_after']:,} parameters")
        print(f"  {la['name']}: {what}")
    for label, key in (("fidelity", "fidelity"), ("after distillation", "fidelity_distilled")):
        if report_dict.get(key):
            fid = report_dict[key]
            print(f"  {label} on {args.data} ({fid['samples']} samples): {_fidelity_text(fid)}")
    return 0 if target is None else speedup_search_outcome(search)


def _fidelity_reference(args: argparse.Namespace, loaded) -> tuple[Any, Any]:
    """(a copy of the original model when distillation follows, else None; a fidelity probe on --data or None)."""
    import copy

    from trtopt.compress.distill import fidelity_probe

    if args.distill_steps and args.data in (None, "random") and args.train_data is None:
        given = "--data random is made-up inputs" if args.data == "random" else "no --data / --train-data was given"
        raise TrtoptError(f"--distill-steps needs real data, but {given}",
                          "give --train-data (distillation) and --data (held-out fidelity)")
    original = copy.deepcopy(loaded.module) if args.distill_steps else None
    probe = None
    if args.data not in (None, "random"):
        probe = fidelity_probe(loaded.module, _model_data(args, loaded, args.data, args.samples),
                               "embedding" in loaded.output_names)
    return original, probe


def _distill_after(args: argparse.Namespace, loaded, original: Any, probe: Any,
                   tune: DistillConfig) -> tuple[dict[str, Any], Any]:
    """Distil the factorized ``loaded.module`` from ``original`` with ``tune`` (--distill-steps steps); (record,
    fidelity after)."""
    from dataclasses import replace

    from trtopt.compress.distill import distill
    from trtopt.compress.trainer import frozen_batchnorm

    embeddings = "embedding" in loaded.output_names
    train = _model_data(args, loaded, args.train_data or args.data, args.train_samples)
    config = replace(tune, output_loss="cosine" if embeddings else "kl")
    # BatchNorm keeps the original's statistics, as in cluster's tied fine-tuning: a few steps on small
    # batches should recover the original function, not re-estimate normalization from them.
    with frozen_batchnorm(loaded.module.requires_grad_(True)):
        run = distill(loaded.module, original, train, config)
    loaded.module = run.student
    record = run.to_dict()
    record["loss_first"], record["loss_last"] = run.step_losses[0], run.step_losses[-1]
    record.pop("step_losses", None)
    return record, (probe(run.student) if probe else None)


def _add_model(p: argparse.ArgumentParser) -> None:

    p.add_argument("model", help="torchvision:NAME, timm:NAME, zoo:NAME, package.module:factory")
    p.add_argument("--checkpoint", help="state dict / checkpoint to load into the architecture")
    p.add_argument("--layer", action="append", metavar="NAME", help="only this module (repeat; default: all supported)")
    p.add_argument("--exclude", action="append", metavar="NAME", help="leave this module as it is (repeat)")
    p.add_argument("--json", help="write the report JSON here")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    add_data(p)


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register this family's subcommands on ``sub`` (``common``: the flags every subcommand takes)."""
    p = sub.add_parser("cluster", parents=[common],
                       help="weight sharing: k-means codebooks of 2^b values per layer; compact file (storage only, not speed)")
    _add_model(p)
    p.add_argument("-o", "--output", required=True, help="shared-weights file to write (.npz: codebooks + packed indices)")
    p.add_argument("--bits", type=int, default=ShareConfig.bits,
                   help="index bits b in 1..8: 2^b shared values per group (default %(default)s)")
    p.add_argument("--granularity", choices=SHARE_GRANULARITIES, default=ShareConfig.granularity,
                   help="one codebook per layer (smallest file), per output channel (lower error), or auto: chosen "
                        "per layer with the bits by --target-ratio/--max-accuracy-drop (default %(default)s)")
    p.add_argument("--int8-grid", action="store_true", help="snap codebooks to the symmetric INT8 grid (exact INT8 afterwards)")
    p.add_argument("--min-elements", type=int, default=ShareConfig.min_elements,
                   help="weights with fewer elements stay FP32 (default %(default)s)")
    p.add_argument("--checkpoint-out", help="also write the decoded weights as a state dict (for --checkpoint of later stages)")
    p.add_argument("--onnx", help="also export the clustered model to this ONNX file")
    mixed = p.add_argument_group("mixed bit-widths (per-layer bits from measured sensitivity on --data)")
    mixed.add_argument("--target-ratio", type=float, default=None, metavar="X",
                       help="choose per-layer bits so the stored state is X× smaller than FP32")
    mixed.add_argument("--max-accuracy-drop", type=float, default=None, metavar="D",
                       help="choose per-layer bits so the task metric drops at most D (fraction; measured on --data)")
    mixed.add_argument("--no-protect", action="store_true",
                       help=f"do not keep the first/last and depthwise layers at {ShareConfig.protected_bits} bits")
    tune = p.add_argument_group("tied fine-tuning (distillation from the original; DDP under torchrun)")
    tune.add_argument("--finetune-steps", type=int, default=0,
                      help="optimizer steps with the weights kept tied (default %(default)s: none)")
    tune.add_argument("--train-data", help="fine-tuning data (default: --data); keep --data held out for fidelity")
    tune.add_argument("--train-samples", type=count(), default=None, help="use at most this many training samples")
    tune.add_argument("--labels", action="store_true", help="use the labels of dataset:NAME:SPLIT sources "
                      "(accuracy in the fidelity; α·CE + (1 − α)·KD in fine-tuning)")
    tune.add_argument("--lr", type=float, default=TIED_FINETUNE_LR, help="peak learning rate (default %(default)s)")
    tune.add_argument("--batch-size", type=int, default=TIED_FINETUNE_BATCH_SIZE,
                      help="samples per step, global under DDP (default %(default)s)")
    tune.add_argument("--checkpoint-dir", help="write fine-tuning checkpoints (last.pt) here")
    tune.add_argument("--resume", action="store_true", help="continue the fine-tuning from --checkpoint-dir/last.pt")
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("factorize", parents=[common],
                       help="low-rank factorization of Linear/Conv2d layers (SVD, Tucker-2) → exported ONNX")
    _add_model(p)
    p.add_argument("-o", "--output", required=True, help="ONNX file to write (the factorized model)")
    # --energy has no default of its own: giving it chooses the energy rule over --param-budget / --rank
    p.add_argument("--energy", type=float, default=None,
                   help=f"keep this fraction of each layer's squared singular values (default {LowRankConfig.energy})")
    p.add_argument("--param-budget", type=float, default=None, metavar="FRACTION",
                   help="keep at most this fraction of the selected layers' parameters (ranks chosen greedily)")
    p.add_argument("--rank", action="append", metavar="LAYER=R", help="explicit rank for a layer (repeat)")
    p.add_argument("--conv", choices=CONV_SCHEMES, default=LowRankConfig.conv, help="Conv2d scheme (default %(default)s)")
    p.add_argument("--min-reduction", type=float, default=LowRankConfig.min_reduction,
                   help="skip layers losing less than this fraction of parameters/MACs (default %(default)s)")
    p.add_argument("--rank-multiple", type=int, default=LowRankConfig.rank_multiple,
                   help="round ranks up to a multiple (8/16 suit tensor cores; default %(default)s)")
    p.add_argument("--min-rank", type=int, default=LowRankConfig.min_rank,
                   help="raise smaller ranks to this (thinner splits ran slower than dense layers on ONNX Runtime CPU; "
                        "1: no floor; default %(default)s)")
    add_speedup_search(p, "lower the kept energy step by step (then bisect) until the exported ONNX is measured X× "
                          "faster than the original's on ONNX Runtime (interleaved); missed: keeps the closest, exit 1")
    tune = p.add_argument_group("distillation after factorizing (from the original model; fidelity on --data)")
    tune.add_argument("--distill-steps", type=count(0), default=0, help="optimizer steps of distillation (default 0: none)")
    tune.add_argument("--train-data", help="distillation data (default: --data); keep --data held out for fidelity")
    tune.add_argument("--train-samples", type=count(), default=None, help="use at most this many training samples")
    tune.add_argument("--labels", action="store_true", help="use the labels of dataset:NAME:SPLIT sources")
    tune.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default %(default)s)")
    tune.add_argument("--distill-batch-size", type=count(), default=16, help="samples per step (default %(default)s)")
    p.set_defaults(func=cmd_factorize)
