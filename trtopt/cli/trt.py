"""TensorRT subcommands: ``trtopt build``, ``trtopt bundle``, ``trtopt trt-bench``.

``build --plan-only`` and ``bundle`` need no TensorRT and no GPU (they compute plans and trtexec lines);
building and timing need both, and say so in one line where they are missing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from trtopt.cli._common import JSON_HELP, add_data, count, feed_for, input_declarations, write_json_output
from trtopt.config import Recipe
from trtopt.errors import TrtoptError
from trtopt.trt.plan import HARDWARE_COMPATIBILITY, PRECISIONS, TARGETS, TYPINGS, BuildOptions


def _add_plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=PRECISIONS, default=BuildOptions.precision,
                   help="auto: what the ONNX holds (Q/DQ -> int8, FP16 casts -> fp16), int8 with --calib-cache "
                        "(default %(default)s)")
    p.add_argument("--typing", choices=TYPINGS, default=BuildOptions.typing, help="network typing (10.x; default %(default)s)")
    p.add_argument("--calib-cache", help="TensorRT 10.x calibration cache for implicit INT8")
    p.add_argument("--mixed-fp16", action="store_true",
                   help="weakly typed 10.x INT8: also allow FP16 for layers kept out of INT8 (trtexec --int8 --fp16)")
    p.add_argument("--shapes", action="append", metavar="NAME:DIMS",
                   help="fixed shape per input, batch included, trtexec style: input:8x3x224x224 or "
                        "input_ids:8x64,attention_mask:8x64")
    for bound, example in (("min", "1x3x224x224"), ("opt", "8x3x224x224"), ("max", "32x3x224x224")):
        p.add_argument(f"--{bound}Shapes", action="append", dest=f"{bound}_shapes", metavar="NAME:DIMS",
                       help=f"{bound.upper()} shape of the optimization profile per input (trtexec), e.g. input:{example}")
    p.add_argument("--workspace", type=int, default=None, metavar="MiB", help="workspace memory pool limit")
    p.add_argument("--sparse", action="store_true", help="BuilderFlag.SPARSE_WEIGHTS (2:4 sparse weights)")
    p.add_argument("--target", choices=TARGETS, default=None,
                   help=f"device class (DLA exists on Jetson only; build default {BuildOptions.target}, "
                        f"bundle default {Recipe.bundle_target})")
    p.add_argument("--dla-core", type=int, default=None, help="run on this DLA core (Jetson), GPU fallback on")
    p.add_argument("--opt-level", type=int, default=None, help="builder optimization level 0..5 (default 3)")
    p.add_argument("--timing-cache", help="load/save the builder's timing cache here")
    p.add_argument("--version-compatible", action="store_true", help="BuilderFlag.VERSION_COMPATIBLE")
    p.add_argument("--exclude-lean-runtime", action="store_true", help="BuilderFlag.EXCLUDE_LEAN_RUNTIME")
    p.add_argument("--hardware-compat", choices=HARDWARE_COMPATIBILITY, default=BuildOptions.hardware_compatibility,
                   help="ampere+: one engine for Ampere and later data-center GPUs (slower; default %(default)s)")


def _options(args: argparse.Namespace, target_default: str, calibrate: bool = False):
    from trtopt.trt.plan import parse_profiles

    return BuildOptions(precision=args.precision, typing=args.typing, calib_cache=args.calib_cache, calibrate=calibrate,
                        mixed_fp16=args.mixed_fp16,
                        shapes=parse_profiles(args.shapes, args.min_shapes, args.opt_shapes, args.max_shapes),
                        workspace_bytes=args.workspace * (1 << 20) if args.workspace else None,
                        timing_cache=args.timing_cache, opt_level=args.opt_level, sparse=args.sparse,
                        target=args.target or target_default, dla_core=args.dla_core,
                        version_compatible=args.version_compatible, exclude_lean_runtime=args.exclude_lean_runtime,
                        hardware_compatibility=args.hardware_compat)


def _trt_version(requested: str) -> str:
    """``auto`` -> the installed TensorRT's version; else the requested one."""
    if requested != "auto":
        return requested
    from trtopt.trt.runtime import installed_version

    installed = installed_version()
    if installed is None:
        raise TrtoptError("--trt-version auto needs TensorRT installed, and it is not",
                          "name the version the engine is for: --trt-version 10.3 (JetPack 6), 10.16 or 11.1")
    return installed


def _default_engine_path(onnx: str, trt_version: str, with_gpu: bool) -> Path:
    """engines/<model>_trt<version>_<gpu>.engine; the GPU is the first CUDA device (a plan has none)."""
    from trtopt import workspace

    gpu = None
    if with_gpu:
        from trtopt.trt.cuda import probe_gpus

        found = probe_gpus()
        gpu = found["devices"][0]["name"] if found.get("available") and found.get("devices") else None
    return workspace.engine_path(onnx, trt_version, gpu)


def cmd_build(args: argparse.Namespace) -> int:
    """``trtopt build``: a version-aware build plan, then the engine (or only the plan and trtexec line); exit status."""
    from trtopt.files import check_outputs, write_json
    from trtopt.trt.engine import sidecar_path
    from trtopt.trt.plan import BuildPlan, make_plan, plan_summary
    from trtopt.trt.trtexec import TrtexecTiming, trtexec_args, trtexec_command, unverified_flags

    if args.plan:
        plan = BuildPlan.load(args.plan)
        if Path(plan.onnx_path).resolve() != Path(args.onnx).resolve():
            raise TrtoptError(f"the plan builds {plan.onnx_path}, not {args.onnx}", "pass the plan's ONNX")
    else:
        plan = make_plan(args.onnx, _options(args, BuildOptions.target, calibrate=bool(args.data)),
                         _trt_version(args.trt_version))
    output = args.output or str(_default_engine_path(args.onnx, plan.trt_version, with_gpu=not args.plan_only))
    plan_path = (output.removesuffix(".engine") if not args.output else output) + ".plan.json"
    layers_path = output + ".layers.json"
    # Every file this build writes, checked before it starts (the plan above is pure Python: no output yet).
    outputs = [plan_path, args.json] if args.plan_only else [output, str(sidecar_path(output)), layers_path, args.json]
    check_outputs(outputs, args.force, inputs=[args.onnx, args.plan, args.calib_cache, args.data],
                  appended=[None if args.plan_only else args.timing_cache])
    line = trtexec_command(trtexec_args(plan, engine=output, timing=TrtexecTiming(), layer_info=layers_path))
    if args.plan_only:
        data = plan.to_dict()
        data["trtexec"] = line
        data["trtexec_unverified_flags"] = unverified_flags(line.split(), plan.trt_major)
        write_json(plan_path, data, force=args.force)
        write_json_output(args.json, data, args.force)
        print(json.dumps(plan_summary(plan)))
        print(f"wrote {plan_path}\ntrtexec equivalent:\n  {line}")
        for note in plan.notes:
            print(f"  note: {note}")
        return 0
    from trtopt.trt.build import build_engine

    data = None
    if plan.int8_source == "calibrator":
        data = _calibration_feeds(args, plan)
    built = build_engine(plan, output, force=args.force, calibration_data=data, cache_dir=args.cache_dir,
                         cuda_library=args.cuda_lib, verbose=getattr(args, "debug", False))
    layers = built.sidecar.get("layers", {})
    how = "reused from the engine cache" if built.cache_hit else f"built in {built.sidecar['build_time_s']:.1f} s"
    print(f"wrote {built.path} ({built.sidecar['engine_size_bytes'] / 1e6:.2f} MB, TensorRT {built.sidecar['trt_version']}, "
          f"{built.sidecar['gpu_name']}; {how}); layers by precision: {layers.get('by_precision', {})}")
    write_json_output(args.json, built.to_dict(), args.force)
    return 0


def _calibration_feeds(args: argparse.Namespace, plan: Any):
    """Calibration data for a build-time calibrator: --data at the profile's opt shapes, streamed in batches."""
    from trtopt.artifacts import inspect_onnx
    from trtopt.data import iter_batches, load_feed
    from trtopt.measure.bench import onnx_input_specs
    from trtopt.models.inputs import InputDeclaration

    art = inspect_onnx(plan.onnx_path)
    opt = tuple(InputDeclaration(p.name, shape=p.opt) for p in plan.profiles)
    feed = load_feed(args.data, onnx_input_specs(art, opt), count=args.samples, seed=0)
    return iter_batches(feed, plan.calib_batch_size or 8)


def cmd_bundle(args: argparse.Namespace) -> int:
    """``trtopt bundle``: a folder to build engines on the device (models, caches, plans, scripts); exit status."""
    from trtopt.trt.bundle import make_bundle

    target = args.target or Recipe.bundle_target  # make_bundle checks the folder before any work
    manifest = make_bundle(args.models, args.output, target=target, ranges=args.ranges, calib_cache=args.calib_cache,
                           options=_options(args, target), force=args.force)
    print(f"wrote {args.output}: {len(manifest['files'])} files for {manifest['target']} "
          f"(TensorRT {manifest['trt10_version']} and {manifest['trt11_version']})")
    for p in manifest["plans"]:
        if p.get("plan"):
            print(f"  {p['model']} TensorRT {p['trt_version']}: {p['precision']}"
                  f"{' (INT8 from ' + p['int8_source'] + ')' if p.get('int8_source') else ''} -> {p['plan']}")
        else:
            print(f"  {p['model']} TensorRT {p['trt_version']}: no plan ({p['reason']})")
    return 0


def cmd_trt_bench(args: argparse.Namespace) -> int:
    """Time a TensorRT engine (CUDA events, trtexec statistics) and optionally a PyTorch FP32 baseline on GPU."""
    from trtopt.backends.trt import BACKEND
    from trtopt.trt.cuda import require_gpu

    ok, detail = BACKEND.availability()
    if not ok:
        raise TrtoptError(f"trtopt trt-bench cannot run here: {detail}",
                          "run it on a machine with an NVIDIA GPU and TensorRT (trtopt doctor shows what is missing)")
    require_gpu("trtopt trt-bench")
    from trtopt.data import take_batch
    from trtopt.files import check_outputs
    from trtopt.trt.engine import read_sidecar
    from trtopt.trt.runner import TensorRTRunner

    check_outputs([args.json], args.force, inputs=[args.engine, args.data])
    runner = TensorRTRunner(args.engine, cuda_library=args.cuda_lib)
    try:
        from trtopt.artifacts import inspect_onnx
        from trtopt.measure.bench import onnx_input_specs

        plan = read_sidecar(args.engine)["plan"]
        specs = onnx_input_specs(inspect_onnx(plan["onnx_path"]), input_declarations(args))
        feed = take_batch(feed_for(args, specs, count=args.batch_size), args.batch_size)
        result: dict[str, Any] = {"engine": args.engine, "runner": runner.describe(),
                                  "tensorrt": runner.profile(feed, iterations=args.iterations, warmup=args.warmup,
                                                             transfers=not args.no_transfers, cuda_graph=args.cuda_graph)}
        compute_samples = runner.last_samples["compute_ms"]
    finally:
        runner.close()
    if args.baseline:
        result["pytorch_fp32"] = _torch_baseline(args, feed, compute_samples)
    trt = result["tensorrt"]
    print(f"TensorRT: {trt['throughput_qps']:.1f} qps; GPU compute median {trt['compute_ms']['median']:.3f} ms "
          f"(p99 {trt['compute_ms']['p99']:.3f}); latency median {trt['latency_ms']['median']:.3f} ms "
          f"(transfers {'in' if trt['transfers_included'] else 'out'}, CUDA graph {'on' if trt['cuda_graph'] else 'off'})")
    for w in trt["warnings"]:
        print(f"warning: {w}")
    if "pytorch_fp32" in result:
        s = result["pytorch_fp32"]["speedup_vs_pytorch"]
        print(f"speedup vs PyTorch FP32 (GPU compute, CUDA events both sides): {s['speedup']:.2f}× "
              f"[{s['speedup_ci_low']:.2f}, {s['speedup_ci_high']:.2f}]")
    write_json_output(args.json, result, args.force)
    return 0


def _torch_baseline(args: argparse.Namespace, feed: dict, trt_compute_ms: list[float]) -> dict[str, Any]:
    """PyTorch FP32 on the GPU, timed with CUDA events on its stream (inputs already on the device, as the
    TensorRT compute time excludes transfers)."""
    import torch

    from trtopt.measure.profile import TimingConfig, speedup_interval
    from trtopt.models.load import load_model
    from trtopt.trt.cuda import time_torch_cuda
    from trtopt.trt.timing import distribution

    loaded = load_model(args.baseline)
    module = loaded.module.eval().cuda()
    tensors = [torch.from_numpy(feed[s.name]).cuda() for s in loaded.inputs]
    with torch.inference_mode():
        samples = time_torch_cuda(lambda: module(*tensors), args.iterations, args.warmup, timer="cuda-python")
    return {"model": args.baseline, "compute_ms": distribution(samples), "timer": "CUDA events (cuda-python)",
            "speedup_vs_pytorch": speedup_interval(samples, trt_compute_ms, TimingConfig())}


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register this family's subcommands on ``sub`` (``common``: the flags every subcommand takes)."""

    p = sub.add_parser("build", parents=[common], help="build a TensorRT engine from ONNX (version-aware plan; "
                       "--plan-only needs no TensorRT)")
    p.add_argument("onnx", help=".onnx model (FP32, FP16-cast or Q/DQ INT8)")
    p.add_argument("-o", "--output", default=None,
                   help="engine file (sidecar: ENGINE.json, layers: ENGINE.layers.json); default "
                        "engines/MODEL_trtVERSION_GPU.engine (--plan-only: engines/MODEL_trtVERSION.plan.json)")
    p.add_argument("--trt-version", default="auto", help="auto (installed), 10.3, 10.16, 11.0 or 11.1")
    p.add_argument("--plan", help="build exactly this plan JSON (from --plan-only or a bundle)")
    p.add_argument("--plan-only", action="store_true", help="write ENGINE.plan.json and the trtexec line; no TensorRT")
    p.add_argument("--cache-dir", help="engine cache folder (reuse an engine built from the same ONNX, plan, TensorRT, GPU)")
    p.add_argument("--cuda-lib", choices=("auto", "cuda-python", "pycuda"), default="auto")
    p.add_argument("--json", metavar="FILE", help=JSON_HELP + " (the build record; with --plan-only, the plan)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    _add_plan_options(p)
    p.add_argument("--data", default=None, help="calibration data for build-time INT8 calibration (TensorRT 10.x)")
    p.add_argument("--samples", type=count(), default=256, help="calibration samples (default 256)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("bundle", parents=[common], help="a folder to build engines on a Jetson/GPU: ONNX, cache, "
                       "plans for 10.x and 11.x, trtexec scripts, manifest")
    p.add_argument("models", nargs="+", help=".onnx models to ship")
    p.add_argument("-o", "--output", required=True, help="bundle folder")
    p.add_argument("--ranges", help="trtopt ranges JSON (shipped; becomes the 10.x calibration cache)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle folder")
    _add_plan_options(p)
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser("trt-bench", parents=[common], help="time a TensorRT engine like trtexec (CUDA events), "
                       "optionally against PyTorch FP32 on the GPU")
    p.add_argument("engine", help="engine built by trtopt build (with its .json sidecar)")
    p.add_argument("--baseline", help="PyTorch model spec timed on the GPU with CUDA events (e.g. zoo:efficientnet_lite0)")
    p.add_argument("--batch-size", type=count(), default=1)
    p.add_argument("--iterations", type=count(), default=200)
    p.add_argument("--warmup", type=count(0), default=20)
    p.add_argument("--cuda-graph", action="store_true", help="replay execute_async_v3 from a CUDA graph")
    p.add_argument("--no-transfers", action="store_true", help="leave H2D/D2H out of the timed loop")
    p.add_argument("--cuda-lib", choices=("auto", "cuda-python", "pycuda"), default="auto")
    p.add_argument("--json", metavar="FILE", help=JSON_HELP)
    p.add_argument("--force", action="store_true", help="overwrite --json")
    add_data(p)
    p.set_defaults(func=cmd_trt_bench)
