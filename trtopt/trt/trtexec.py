"""Rendering a :class:`~trtopt.trt.plan.BuildPlan` as the equivalent ``trtexec`` command line.

The flags follow each TensorRT major's trtexec (10.x keeps ``--int8/--fp16/--calib``; 11.x has none of
them, and some timing flags are unverified there: :data:`UNVERIFIED_TRTEXEC_FLAGS`). Timing flags are
pinned (:class:`TrtexecTiming`) so 10.x and 11.x numbers compare.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from trtopt._config import check_choice
from trtopt.trt.plan import TIMING_MODES, BuildPlan, _dims


@dataclass(frozen=True)
class TrtexecTiming:
    """trtexec timing flags, pinned so 10.x and 11.x report the same kind of number.

    mode "gpu-compute": no H2D/D2H in the timed loop, CUDA graph, spin-wait (trtexec 11's defaults, set
    explicitly on 10.x). mode "end-to-end": transfers included, no CUDA graph, spin-wait (10.x's defaults
    plus spin-wait; 11.x needs --includeDataTransfers --noCudaGraph).
    """

    mode: str = "gpu-compute"
    warmup_ms: int = 500
    iterations: int = 200
    duration_s: int = 3
    avg_runs: int = 10

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, TIMING_MODES)

#: Flags whose existence in that trtexec version trtopt could not verify from NVIDIA's own 11.x sources
#: (seen in third-party scripts run against trtexec 11.0 and in the TensorRT-RTX tool's docs).
UNVERIFIED_TRTEXEC_FLAGS = {"11.x": ("--includeDataTransfers", "--noCudaGraph", "--useCudaGraph")}

def trtexec_args(plan: BuildPlan, engine: str = "model.engine", timing: TrtexecTiming | None = None,
                 layer_info: str | None = None, onnx: str | None = None) -> list[str]:
    """The trtexec command (as an argument list) that builds and times the engine ``plan`` describes.

    10.x: precision flags (--fp16, --int8, --calib=CACHE, --stronglyTyped). 11.x: none (it has none; the
    ONNX carries the precision). A calibrator plan has no trtexec equivalent (trtexec cannot calibrate):
    the line then names the cache the trtopt build writes (``<engine>.calib.cache``).
    """
    timing = timing or TrtexecTiming()
    args = ["trtexec", f"--onnx={onnx or plan.onnx_path}", f"--saveEngine={engine}"]
    if plan.trt_major < 11:
        if "STRONGLY_TYPED" in plan.network_flags:
            args.append("--stronglyTyped")
        if "FP16" in plan.builder_flags:
            args.append("--fp16")
        if "INT8" in plan.builder_flags:
            args.append("--int8")
        if plan.int8_source == "calibration-cache":
            args.append(f"--calib={plan.calib_cache}")
        elif plan.int8_source == "calibrator":
            args.append(f"--calib={engine}.calib.cache")
    if plan.profiles:
        for flag, attr in (("--minShapes", "min"), ("--optShapes", "opt"), ("--maxShapes", "max")):
            args.append(f"{flag}=" + ",".join(f"{_trtexec_name(p.name)}:{_dims(getattr(p, attr))}" for p in plan.profiles))
    if plan.workspace_bytes:
        args.append(f"--memPoolSize=workspace:{-(-plan.workspace_bytes // (1 << 20))}M")
    if plan.timing_cache:
        args.append(f"--timingCacheFile={plan.timing_cache}")
    if plan.builder_optimization_level is not None:
        args.append(f"--builderOptimizationLevel={plan.builder_optimization_level}")
    if "SPARSE_WEIGHTS" in plan.builder_flags:
        args.append("--sparsity=enable")
    if plan.device_type == "DLA":
        args.append(f"--useDLACore={plan.dla_core}")
        if "GPU_FALLBACK" in plan.builder_flags:
            args.append("--allowGPUFallback")
    if "VERSION_COMPATIBLE" in plan.builder_flags:
        args.append("--versionCompatible")
    if "EXCLUDE_LEAN_RUNTIME" in plan.builder_flags:
        args.append("--excludeLeanRuntime")
    if plan.hardware_compatibility_level == "AMPERE_PLUS":
        args.append("--hardwareCompatibilityLevel=ampere+")
    args.append("--profilingVerbosity=detailed")
    if layer_info:
        args.append(f"--exportLayerInfo={layer_info}")
    if plan.profiles:
        args.append("--shapes=" + ",".join(f"{_trtexec_name(p.name)}:{_dims(p.opt)}" for p in plan.profiles))
    args += _timing_flags(plan.trt_major, timing)
    return args

def _timing_flags(trt_major: int, timing: TrtexecTiming) -> list[str]:
    flags = [f"--warmUp={timing.warmup_ms}", f"--iterations={timing.iterations}", f"--duration={timing.duration_s}",
             f"--avgRuns={timing.avg_runs}"]
    if trt_major < 11:
        # 10.x defaults: transfers on, CUDA graph off, blocking sync.
        if timing.mode == "gpu-compute":
            flags += ["--noDataTransfers", "--useCudaGraph"]
        flags.append("--useSpinWait")
    else:
        # 11.x defaults: no transfers, CUDA graph on, spin-wait on (TENSORRT.md).
        flags += ["--useCudaGraph"] if timing.mode == "gpu-compute" else ["--includeDataTransfers", "--noCudaGraph"]
    return flags

def _trtexec_name(name: str) -> str:
    """trtexec splits NAME:DIMS on the last ':' and strips single quotes: quote names holding ':' or ','."""
    return f"'{name}'" if (":" in name or "," in name) else name

def trtexec_command(args: list[str]) -> str:
    """One shell-quoted line."""
    return " ".join(shlex.quote(a) for a in args)

def unverified_flags(args: list[str], trt_major: int) -> list[str]:
    """The flags in ``args`` whose existence in that trtexec version is not verified (see the constant)."""
    suspects = UNVERIFIED_TRTEXEC_FLAGS.get(f"{trt_major}.x", ())
    return [a for a in args if a.split("=")[0] in suspects]
