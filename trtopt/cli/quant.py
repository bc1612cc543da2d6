"""``trtopt calibrate``, ``trtopt quantize`` and ``trtopt cache``: INT8 ranges, Q/DQ models, TensorRT caches.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

from trtopt.cli._common import (
    JSON_HELP,
    add_calibration,
    add_data,
    onnx_feed,
    progress_bar,
    step_printer,
    write_json_output,
)
from trtopt.errors import TrtoptError
from trtopt.quant.calibrate import CalibrationConfig
from trtopt.quant.quantize import FP16_CONVERTERS, QUANTIZERS, TARGETS, QuantizeConfig
from trtopt.trt.calibration_cache import DEFAULT_TRT_VERSION


def _calibration_config(args: argparse.Namespace) -> CalibrationConfig:
    return CalibrationConfig(method=args.method, percentile=args.percentile, batch_size=args.batch_size)

def _calibrate(args: argparse.Namespace, onnx_path: str, layouts=None):
    """Ranges for ``onnx_path`` from --data; ``layouts``: the Q/DQ layouts to cover (default: both targets)."""
    from trtopt.quant.calibrate import DEFAULT_LAYOUTS, calibrate

    feed = onnx_feed(args, onnx_path)
    progress, update = progress_bar(args)
    try:
        with progress:
            ranges = calibrate(onnx_path, feed, _calibration_config(args), on_progress=update,
                               layouts=layouts or DEFAULT_LAYOUTS)
    except TrtoptError as e:
        if args.data is not None:
            raise
        drawn = ", ".join(f"{k} {v.dtype} in [{v.min():.4g}, {v.max():.4g}]" for k, v in feed.items())
        raise TrtoptError(f"{e.problem} (the inputs were random data trtopt generated without --data: {drawn})",
                          "pass real inputs with --data (.npy/.npz, an image folder), or --input-shape for "
                          "the shapes") from e
    for line in describe_choice(ranges):
        print(line)
    return ranges


def describe_choice(ranges) -> list[str]:
    """One line on how the ranges were chosen (method auto: the winner and the candidates' scores)."""
    choice = ranges.choice
    if not choice.get("scored"):
        return [f"ranges: method auto could not score the methods ({choice['reason']}); used {choice['model_method']}"] \
            if "reason" in choice else []
    scores = ", ".join(f"{c['method']} {c['sqnr_db']:.1f}" for c in choice["candidates"])
    changes = len(choice["per_tensor"])
    return [f"ranges: auto chose {choice['model_method']} (output SQNR vs FP32 on {choice['scoring_samples']} "
            f"{'held-out' if choice['held_out'] else 'calibration'} samples, dB: {scores})"
            + (f", {changes} tensor(s) changed to another method" if changes else "")]

def cmd_calibrate(args: argparse.Namespace) -> int:
    """``trtopt calibrate``: streaming ranges (+ data manifest, optional TensorRT cache); exit status."""
    from trtopt import workspace
    from trtopt.files import atomic_output, check_outputs, check_suffix, sha256_file, write_json

    output = args.output or str(workspace.calibration_ranges_path(args.model))
    cache = args.cache
    if cache == "":  # --cache without a path: calibration/<model>.trt<version>.cache
        cache = str(workspace.calibration_cache_path(args.model, args.trt_version))
    manifest = workspace.data_manifest_path(output) if Path(output).name else None  # "-o ." is refused below
    check_outputs([output, cache, manifest], args.force, inputs=[args.model, args.data])
    check_suffix(args.output, (".json",), "a ranges JSON")  # after check_outputs: a folder or device is named as such
    trt_cache = None
    if cache:  # a cache for a TensorRT without calibrators is refused before any work
        from trtopt.trt.calibration_cache import calibrating_version, ranges_to_cache, write_cache

        calibrating_version(args.trt_version)
    ranges = _calibrate(args, args.model)
    if cache:
        trt_cache = ranges_to_cache(ranges, trt_version=args.trt_version)
    # All outputs or none: each is written to a temporary file beside it, and the renames happen only once
    # every write has succeeded (a failure removes the temporary files, leaving nothing behind). The ranges
    # are renamed first (the stack unwinds last-in first), so a failed rename leaves no manifest or cache
    # without their ranges.
    with contextlib.ExitStack() as stack:
        staged = {path: stack.enter_context(atomic_output(path, args.force)) for path in (cache, manifest, output) if path}
        ranges.save(staged[output], force=True)
        write_json(staged[manifest], {"format": workspace.DATA_MANIFEST_FORMAT, "model": str(args.model),
                                      "model_sha256": ranges.model_sha256 or sha256_file(args.model),
                                      "data": args.data or "random", "samples": ranges.samples, "seed": args.seed,
                                      "batch_size": args.batch_size, "method": ranges.method,
                                      "data_sha256": ranges.data_sha256, "ranges": str(output)}, force=True)
        if trt_cache is not None:
            write_cache(trt_cache, staged[cache], force=True)
    print(f"wrote {output}: {len(ranges.tensors)} tensor ranges ({ranges.method}, {ranges.samples} samples, "
          f"data sha256 {ranges.data_sha256[:12]}…)")
    print(f"wrote {manifest}: which samples were used")
    if trt_cache is not None:
        print(f"wrote {cache}: TensorRT {trt_cache.trt_version} calibration cache ({trt_cache.header})")
    return 0

def cmd_quantize(args: argparse.Namespace) -> int:
    """``trtopt quantize``: ranges → INT8 Q/DQ ONNX for a target, or FP16 by casts; exit status."""
    from trtopt.artifacts import Ranges, inspect_onnx
    from trtopt.files import check_outputs, check_suffix
    from trtopt.quant.quantize import quantize

    # Staging holds the shape-inferred copy and the quantized model: at most about twice the source.
    size = 2 * os.path.getsize(args.model) if os.path.isfile(args.model) else None
    check_suffix(args.output, (".onnx",), "an ONNX model")
    check_outputs([args.output, args.json], args.force, inputs=[args.model, args.ranges, args.data],
                  sizes={args.output: size})
    if args.precision == "fp16":
        from trtopt.quant.quantize import to_fp16

        int8_only = [flag for flag, value in (("--ranges", args.ranges), ("--data", args.data),
                                              ("--max-accuracy-drop", args.max_accuracy_drop)) if value is not None]
        if int8_only:  # FP16 by casts reads no ranges and calibrates nothing: the flag would be silently ignored
            raise TrtoptError(f"{int8_only[0]} applies to INT8, not to --precision fp16 (FP16 needs no calibration)",
                              f"drop {int8_only[0]}, or quantize to INT8 (--precision int8)")
        artifact = to_fp16(args.model, args.output, exclude_op_types=tuple(args.exclude or ()), force=args.force,
                           converter=args.fp16_converter)
        print(f"wrote {artifact.path} ({artifact.size_bytes / 1e6:.2f} MB); {artifact.notes[0]}")
        write_json_output(args.json, artifact.to_dict(), args.force)
        return 0
    if args.ranges and args.data:
        raise TrtoptError("both --ranges and --data given", "use --ranges FILE (calibrated) or --data SRC (calibrate now)")
    if args.max_accuracy_drop is not None:  # before calibrating: a bad bar must not cost a calibration
        from trtopt.quant.sensitivity import check_max_drop

        check_max_drop(args.max_accuracy_drop)
    names, op_types = _split_excludes(args.model, args.exclude or [], args.keep_first_layer_fp32)
    config = QuantizeConfig(target=args.target, per_channel=args.per_channel, reduce_range=args.reduce_range,
                            op_types=tuple(args.op_types.split(",")) if args.op_types else None, exclude_nodes=names,
                            exclude_op_types=op_types, smoothing=args.smoothing, bias_correction=args.bias_correction,
                            embeddings=args.embeddings, keep_first_layer_fp32=args.keep_first_layer_fp32,
                            quantizer=args.quantizer)
    # calibrating now: exactly the tensors this layout (with its op types and exclusions) quantizes
    ranges = Ranges.load(args.ranges) if args.ranges else _calibrate(args, args.model, layouts=(config,))
    if args.max_accuracy_drop is not None:
        config = _mixed_precision(args, ranges, config)
    artifact = quantize(args.model, ranges, args.output, config, force=args.force, on_step=step_printer(args))
    source = inspect_onnx(args.model)
    print(f"wrote {artifact.path} ({artifact.size_bytes / 1e6:.2f} MB, {source.size_bytes / artifact.size_bytes:.2f}× "
          f"smaller than {source.path.name})")
    for note in artifact.notes:
        print(f"  {note}")
    write_json_output(args.json, artifact.to_dict(), args.force)
    return 0

def _split_excludes(onnx_path: str, values: list[str], keep_first: bool = False) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """--exclude values as (layer names, op types): an op type present in the model is an op type; anything
    else is a node, tensor or PyTorch module name (`trtopt.quant.names.resolve_layer_names` checks it).
    ``keep_first``: --keep-first-layer-fp32 is checked on the model too (before calibrating: a model without a
    float first layer, or with unnamed first-layer nodes, was refused after it, the fix replaced by random data's)."""
    import onnx

    from trtopt.artifacts import inspect_onnx
    from trtopt.quant.names import resolve_layer_names

    model = onnx.load(inspect_onnx(onnx_path).path, load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    names = tuple(v for v in values if v not in ops)
    resolve_layer_names(model, names, onnx_path)  # an unknown name is refused here, before any work
    if keep_first:
        from trtopt.quant.quantize import first_layer_nodes

        first_layer_nodes(model, Path(onnx_path).name)
    return names, tuple(v for v in values if v in ops)

def _mixed_precision(args: argparse.Namespace, ranges, config):
    """Keep the fewest layers in FP32 so that agreement (or cosine) with FP32 drops by at most --max-accuracy-drop."""
    from dataclasses import replace

    from trtopt.quant.sensitivity import choose_mixed_precision, make_scorer, model_outputs

    feed = onnx_feed(args, args.model)
    scorer = make_scorer(args.metric, feed, model_outputs(Path(args.model), feed, None))
    choice = choose_mixed_precision(args.model, ranges, config, scorer, args.max_accuracy_drop,
                                    on_step=step_printer(args))
    print(f"mixed precision: {len(choice['exclude_nodes'])} layer(s) kept in FP32 "
          f"({', '.join(choice['exclude_nodes']) or 'none'}); {args.metric} {choice['score']:.4f} "
          f"(bar: ≥ {1 - args.max_accuracy_drop:.4f}{'' if choice['met'] else ', NOT met'})")
    return replace(config, exclude_nodes=tuple(config.exclude_nodes) + tuple(choice["exclude_nodes"]))

def cmd_cache(args: argparse.Namespace) -> int:
    """``trtopt cache``: inspect, convert or translate TensorRT calibration caches; exit status."""
    from trtopt.files import check_outputs
    from trtopt.trt import calibration_cache as trt_cache

    if args.action == "inspect":  # a diagnosis: it reads (and reports) scales that convert would refuse
        found = trt_cache.inspect_cache(trt_cache.read_cache(args.file, check_scales=False), onnx_path=args.onnx,
                                        expected_trt_version=args.trt_version)
        if args.json:
            write_json_output(args.json, found, args.force)
        else:
            amax = ("no usable amax" if found["amax_min"] is None
                    else f"amax {found['amax_min']:.4g}..{found['amax_max']:.4g}")
            print(f"TensorRT {found['trt_version']} ({found['version_code']}), {found['algorithm']}, "
                  f"{found['tensor_count']} tensors, {amax}")
            for warning in found["warnings"]:
                print(f"warning: {warning}")
        return 0
    if not args.output:
        raise TrtoptError(f"trtopt cache {args.action} needs -o/--output", "name the file to write")
    check_outputs([args.output], args.force, inputs=[args.file, args.onnx])
    if args.action == "convert":
        cache = trt_cache.convert_cache(trt_cache.read_cache(args.file), trt_version=args.trt_version)
        trt_cache.write_cache(cache, args.output, force=args.force)
    elif args.action == "from-ranges":
        from trtopt.artifacts import Ranges

        cache = trt_cache.ranges_to_cache(Ranges.load(args.file), trt_version=args.trt_version or DEFAULT_TRT_VERSION)
        trt_cache.write_cache(cache, args.output, force=args.force)
    else:  # to-ranges
        trt_cache.cache_to_ranges(trt_cache.read_cache(args.file)).save(args.output, force=args.force)
    print(f"wrote {args.output}")
    return 0


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register this family's subcommands on ``sub`` (``common``: the flags every subcommand takes)."""
    p = sub.add_parser("calibrate", parents=[common], help="streaming INT8 calibration of an FP32 ONNX model → ranges JSON")
    p.add_argument("model", help="FP32 .onnx file")
    p.add_argument("-o", "--output", default=None,
                   help="ranges JSON to write (default calibration/MODEL.ranges.json; a MODEL.data.json manifest of the "
                        "samples used is written beside it)")
    p.add_argument("--cache", nargs="?", const="", default=None, metavar="FILE",
                   help="also write a TensorRT calibration cache (default file: calibration/MODEL.trtVERSION.cache)")
    p.add_argument("--trt-version", default=DEFAULT_TRT_VERSION,
                   help="TensorRT version the cache is for (default %(default)s)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    add_calibration(p)
    add_data(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("quantize", parents=[common], help="ranges → INT8 Q/DQ ONNX for a target (onnxruntime or tensorrt), or FP16 by casts")
    p.add_argument("model", help="FP32 .onnx file (the one the ranges were calibrated on)")
    p.add_argument("-o", "--output", required=True, help="INT8 .onnx to write")
    p.add_argument("--ranges", help="ranges JSON from trtopt calibrate (else calibrate now on --data)")
    p.add_argument("--precision", choices=("int8", "fp16"), default="int8",
                   help="int8 (Q/DQ from ranges) or fp16 (casts: TensorRT 11's FP16 route; --exclude takes op types)")
    p.add_argument("--fp16-converter", choices=FP16_CONVERTERS, default=FP16_CONVERTERS[0],
                   help="--precision fp16: onnxconverter (onnxconverter-common + trtopt's Cast repair) or autocast "
                        "(NVIDIA ModelOpt AutoCast; needs trtopt[modelopt]) (default %(default)s)")
    p.add_argument("--target", choices=TARGETS, default=QuantizeConfig.target,
                   help="onnxruntime: U8S8 for CPUs; tensorrt: symmetric S8S8 Q/DQ on Conv/MatMul/Gemm inputs "
                        "(default %(default)s)")
    p.add_argument("--quantizer", choices=QUANTIZERS, default=QuantizeConfig.quantizer,
                   help="who places Q/DQ: trtopt, or modelopt (NVIDIA ModelOpt's placement with trtopt's ranges; "
                        "--target tensorrt; needs trtopt[modelopt]) (default %(default)s)")
    p.add_argument("--exclude", action="append", metavar="NAME|OPTYPE",
                   help="keep a layer in FP32: an ONNX node name, the activation tensor it produces, a PyTorch module path "
                        "(e.g. _blocks.13._expand_conv: every node reading its parameters), or an op type (all its nodes)")
    p.add_argument("--op-types", default=None, metavar="A,B",
                   help="op types to quantize (default: the target's set; on onnxruntime a graph with LayerNorm or "
                        "attention gets MatMul,Gemm only, and says so)")
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=QuantizeConfig.per_channel,
                   help="per-channel weight scales (default %(default)s; grouped ConvTranspose weights stay per-tensor)")
    p.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=QuantizeConfig.reduce_range,
                   help="7-bit weights (default: on for onnxruntime only on CPUs without VNNI/AMX, whose U8S8 kernels "
                        "can saturate; off for tensorrt)")
    p.add_argument("--smoothing", action=argparse.BooleanOptionalAction, default=QuantizeConfig.smoothing,
                   help="SmoothQuant-style smoothing of GEMM inputs with outlier channels (default: as method auto "
                        "measured during calibration: on only where it raised output fidelity)")
    p.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=QuantizeConfig.bias_correction,
                   help="correct Conv/Gemm biases for the INT8 weight error (default: as method auto measured)")
    p.add_argument("--embeddings", action=argparse.BooleanOptionalAction, default=QuantizeConfig.embeddings,
                   help="8-bit embedding tables (Gather lookups; weight-only, per-tensor scale) for --target onnxruntime "
                        "(default: on; all-MiniLM-L6-v2 3.9x smaller than FP32 instead of 1.55x at the same accuracy); "
                        "the tensorrt layout keeps them float")
    p.add_argument("--keep-first-layer-fp32", action=argparse.BooleanOptionalAction,
                   default=QuantizeConfig.keep_first_layer_fp32,
                   help="keep the first layer (the Conv/MatMul/Gemm reading a float input, e.g. an image CNN's stem) "
                        "in float, its input unquantized, in both layouts (default %(default)s)")
    p.add_argument("--max-accuracy-drop", type=float, default=None, metavar="FRACTION",
                   help="keep the fewest layers in FP32 so --metric vs FP32 drops by at most this (e.g. 0.01)")
    p.add_argument("--metric", choices=("agreement", "cosine"), default="agreement",
                   help="score for --max-accuracy-drop: top-1 agreement (classifiers) or mean cosine (embeddings)")
    p.add_argument("--json", metavar="FILE", help=JSON_HELP)
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    add_calibration(p)
    add_data(p)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("cache", parents=[common], help="TensorRT calibration caches: inspect, convert, from/to ranges")
    p.add_argument("action", choices=("inspect", "convert", "from-ranges", "to-ranges"))
    p.add_argument("file", help="a cache (inspect, convert, to-ranges) or a ranges JSON (from-ranges)")
    p.add_argument("-o", "--output", help="file to write (convert, from-ranges, to-ranges)")
    p.add_argument("--onnx", help="inspect: check tensor names against this model")
    p.add_argument("--trt-version", default=None,
                   help=f"inspect: expected version; convert/from-ranges: target version (from-ranges default "
                        f"{DEFAULT_TRT_VERSION})")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE", help="inspect: " + JSON_HELP + " (alone: standard output)")
    p.add_argument("--force", action="store_true", help="overwrite the output")
    p.set_defaults(func=cmd_cache)
