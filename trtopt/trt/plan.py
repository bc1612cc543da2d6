"""TensorRT build plans: what an engine build will do, decided in pure Python before TensorRT is touched.

A :class:`BuildPlan` is computed from :class:`BuildOptions`, the ONNX model (its inputs and whether it
holds Q/DQ nodes or FP16 casts) and the TensorRT version. It is frozen and JSON-serializable, so it can
be written into a Jetson bundle, rendered as a ``trtexec`` command line, hashed into an engine-cache
key, and executed later by :func:`trtopt.trt.build.build_engine` on the device.

Version rules (see ../shared/TENSORRT.md and the API manifests in ../shared/trt_api/):

- **TensorRT 11.x**: every network is strongly typed and implicit quantization is gone. Precision comes
  from the graph only: INT8 needs Q/DQ nodes in the ONNX, FP16 needs an FP16-by-casts ONNX
  (``trtopt quantize --precision fp16``). No ``BuilderFlag.FP16/INT8``, no calibrators, no calibration
  cache: asking for any of them is a :class:`~trtopt.errors.TrtoptError` here, before any build.
- **TensorRT 10.x** (JetPack 6 ships 10.3): a Q/DQ or FP16-cast ONNX builds strongly typed by default
  (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, no precision flags). Weak typing is available:
  then a Q/DQ network still needs ``BuilderFlag.INT8`` (NVIDIA's developer guide: "to enable any
  quantized operations, the INT8 flag must be set in the builder config"), and an FP32 ONNX can be built
  with ``BuilderFlag.FP16`` or with implicit INT8 from a calibration cache or an
  ``IInt8EntropyCalibrator2`` over trtopt's data (both deprecated since 10.1, still what Jetson uses).

Shapes: every input with a symbolic dimension needs one (min, opt, max) profile; profiles are checked
against the ONNX here (names exist, rank matches, static dimensions equal, min <= opt <= max).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from trtopt._config import check_choice, check_int, field_error
from trtopt.errors import TrtoptError

PLAN_FORMAT = 1

_RENDERED_KEYS = ("plan_sha256", "trtexec", "trtexec_unverified_flags")  # written beside a plan, derived from it

#: TensorRT versions a plan can target: the short names the CLI takes -> full version.
VERSIONS = {"10.3": "10.3.0", "10.16": "10.16.1", "11.0": "11.0.0", "11.1": "11.1.0"}

PRECISIONS = ("auto", "fp32", "fp16", "int8")

TYPINGS = ("auto", "strong", "weak")

TARGETS = ("server", "jetson-orin", "jetson-xavier")

DLA_TARGETS = ("jetson-orin", "jetson-xavier")

HARDWARE_COMPATIBILITY = {"none": "NONE", "ampere+": "AMPERE_PLUS"}

CALIBRATOR_CLASS = "IInt8EntropyCalibrator2"

CALIBRATOR_ALGORITHM = "EntropyCalibration2"  # the header a cache for that calibrator carries

TIMING_MODES = ("gpu-compute", "end-to-end")

#: TensorRT versions (of VERSIONS) that build for DLA, and the targets they do it on. NVIDIA: "TensorRT 10.7
#: was the last 10.x release that supported DLA", "DLA was unavailable in TensorRT 11.0 through 11.3"
#: (Working with DLA, TensorRT 11.4 docs); 10.3 ships in JetPack 6, which runs on Orin only (Xavier's last
#: JetPack, 5.1, ships TensorRT 8.5).
DLA_SUPPORT = {"10.3.0": ("jetson-orin",)}


def resolve_version(version: str) -> str:
    """Full "MAJOR.MINOR.PATCH" for a version trtopt plans for: "10.3", "10.16", "11.1", "11.0" or their full
    forms; also a ``tensorrt.__version__`` string such as "10.3.0.26" (its build number is dropped).

    Raises TrtoptError for versions without a manifest (e.g. 8.6, 10.8): their API was not checked.
    """
    parts = str(version).strip().split(".")
    short = ".".join(parts[:2])
    if short in VERSIONS and all(p.isdigit() for p in parts):
        return VERSIONS[short]  # patch/build numbers within a minor share one Python API (manifest README)
    raise TrtoptError(f"TensorRT version {version!r} is not one trtopt's TensorRT code is checked against",
                      f"use one of {', '.join(VERSIONS)} (API manifests exist for those)")

def major(version: str) -> int:
    """The major release of a version trtopt plans for (10 or 11); TrtoptError for others (see resolve_version)."""
    return int(resolve_version(version).split(".")[0])

@dataclass(frozen=True)
class ShapeProfile:
    """One input's optimization-profile shapes (full shapes, batch axis included)."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShapeProfile:
        return cls(str(d["name"]), tuple(d["min"]), tuple(d["opt"]), tuple(d["max"]))

def parse_profiles(shapes: Sequence[str] | None = None, min_shapes: Sequence[str] | None = None,
                   opt_shapes: Sequence[str] | None = None, max_shapes: Sequence[str] | None = None
                   ) -> tuple[ShapeProfile, ...]:
    """Optimization profiles from trtexec's flags: ``--shapes`` (one shape per input: min = opt = max) or
    ``--minShapes/--optShapes/--maxShapes``; each ``NAME:DIMS`` with the batch, inputs separated by commas
    (``input_ids:1x8,attention_mask:1x8``); Polygraphy's ``NAME:[1,8]`` is read too.

    Raises TrtoptError for unreadable shapes, an input missing from one of the three lists, both forms at
    once, or the older ``NAME:MIN,OPT,MAX`` form of ``--shapes`` (the message shows the trtexec form).
    """
    from trtopt.models.inputs import parse_shape_list

    for value in shapes or []:
        name, _, rest = value.rpartition(":")
        parts = rest.split(",")
        if len(parts) in (2, 3) and all(":" not in p and "[" not in p for p in parts):
            flags = " ".join(f"--{f}Shapes {name}:{p}" for f, p in zip(("min", "opt", "max"), parts))
            raise TrtoptError(f"--shapes {value} is the older MIN,OPT,MAX form; --shapes now takes one shape per "
                              "input (trtexec: commas separate inputs)", f"write {flags}")
    fixed = parse_shape_list(shapes, "--shapes")
    ranges = [parse_shape_list(v, f"--{f}Shapes") for v, f in ((min_shapes, "min"), (opt_shapes, "opt"),
                                                              (max_shapes, "max"))]
    if fixed and any(ranges):
        raise TrtoptError("both --shapes and --minShapes/--optShapes/--maxShapes are given",
                          "use --shapes for fixed shapes, or the three for a range")
    if "" in fixed or any("" in r for r in ranges):
        raise TrtoptError("a shape profile needs the input name", "write NAME:DIMS, e.g. --shapes input:8x3x224x224")
    if fixed:
        return tuple(ShapeProfile(n, d, d, d) for n, d in fixed.items())
    names = list(dict.fromkeys(n for r in ranges for n in r))
    for name in names:
        absent = [f for r, f in zip(ranges, ("min", "opt", "max")) if name not in r]
        if absent:
            raise TrtoptError(f"input {name!r} has no --{absent[0]}Shapes", f"give {name} in all of "
                              "--minShapes, --optShapes and --maxShapes (or one fixed shape with --shapes)")
    return tuple(ShapeProfile(n, ranges[0][n], ranges[1][n], ranges[2][n]) for n in names)


def validate_profiles(inputs: list[Any], profiles: tuple[ShapeProfile, ...], where: str) -> tuple[ShapeProfile, ...]:
    """Check ``profiles`` against the ONNX ``inputs`` (TensorInfo: name, shape with ints or symbols).

    Returns one profile per input in graph order (static inputs without a profile are left out: TensorRT
    needs none). Raises TrtoptError naming the input and dimension for: an unknown name, a rank
    mismatch, a non-positive dimension, min > opt or opt > max, a static dimension that differs from the
    model's, or a dynamic input with no profile.
    """
    by_name = {i.name: i for i in inputs}
    seen = set()
    for p in profiles:
        if p.name not in by_name:
            raise TrtoptError(f"shape profile names input {p.name!r}, which {where} does not have",
                              f"its inputs are {', '.join(by_name)}")
        if p.name in seen:
            raise TrtoptError(f"two shape profiles for input {p.name!r}", "give one NAME:MIN,OPT,MAX per input")
        seen.add(p.name)
        model_shape = by_name[p.name].shape
        for label, dims in (("min", p.min), ("opt", p.opt), ("max", p.max)):
            if len(dims) != len(model_shape):
                raise TrtoptError(f"{label} shape {_dims(dims)} of input {p.name!r} has rank {len(dims)}, the model's "
                                  f"input has rank {len(model_shape)} ({_model_dims(model_shape)})",
                                  "give full shapes, batch axis included")
            if any(d <= 0 for d in dims):
                raise TrtoptError(f"{label} shape {_dims(dims)} of input {p.name!r} has a non-positive dimension",
                                  "dimensions are >= 1")
        for axis, (lo, mid, hi, fixed) in enumerate(zip(p.min, p.opt, p.max, model_shape)):
            if not lo <= mid <= hi:
                raise TrtoptError(f"shape profile of input {p.name!r} axis {axis}: min {lo}, opt {mid}, max {hi} "
                                  "is not min <= opt <= max", "order the three shapes as MIN,OPT,MAX")
            if isinstance(fixed, int) and fixed > 0 and not lo == mid == hi == fixed:
                raise TrtoptError(f"shape profile of input {p.name!r} axis {axis} is {lo},{mid},{hi} but the model "
                                  f"fixes it to {fixed}", f"use {fixed} for that axis in all three shapes")
    _check_shared_dims(profiles, by_name)
    missing = [i.name for i in inputs if i.name not in seen and not _static(i.shape)]
    if missing:
        shape = _model_dims(by_name[missing[0]].shape)
        raise TrtoptError(f"input {missing[0]!r} of {where} has dynamic dimensions ({shape}) and no shape profile",
                          f"give --minShapes/--optShapes/--maxShapes {missing[0]}:DIMS (batch included, e.g. batch 1, 8 "
                          f"and 32), or one fixed shape with --shapes {missing[0]}:DIMS")
    order = [i.name for i in inputs]
    return tuple(sorted(profiles, key=lambda p: order.index(p.name)))

def _check_shared_dims(profiles: Sequence[ShapeProfile], by_name: dict[str, Any]) -> None:
    """Axes that share a symbol in the ONNX signature (``batch``, ``seq``) need one MIN/OPT/MAX across inputs:
    TensorRT refuses the build otherwise. Raises TrtoptError naming the dim and the two inputs."""
    seen: dict[str, tuple[str, int, tuple[int, int, int]]] = {}
    for p in profiles:
        for axis, dim in enumerate(by_name[p.name].shape):
            if not isinstance(dim, str) or dim in ("", "?"):
                continue
            values = (p.min[axis], p.opt[axis], p.max[axis])
            first = seen.setdefault(dim, (p.name, axis, values))
            if first[2] != values:
                raise TrtoptError(f"dim {dim!r} is shared by input {first[0]!r} (axis {first[1]}) and input {p.name!r} "
                                  f"(axis {axis}), but their profiles give it {','.join(map(str, first[2]))} and "
                                  f"{','.join(map(str, values))} (min,opt,max)",
                                  f"give {dim} the same min/opt/max values in every input's shapes")


def _static(shape: tuple) -> bool:
    return all(isinstance(d, int) and d > 0 for d in shape)

def _dims(dims: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in dims)

def _model_dims(shape: tuple) -> str:
    return "x".join(str(d) for d in shape)

@dataclass(frozen=True)
class BuildOptions:
    """What the user asks of an engine build, before the TensorRT version is applied.

    Attributes:
        precision: "auto" (what the ONNX holds: Q/DQ -> int8, FP16 casts -> fp16, else fp32, or int8 when a
            calibration cache is given), "fp32", "fp16" or "int8".
        typing: "auto", "strong" or "weak" (10.x only; 11.x is always strong). auto: strong when the ONNX
            carries its precision (Q/DQ or casts), weak when a builder flag has to supply it.
        calib_cache: TensorRT 10.x calibration cache for implicit INT8 (its header must name the plan's
            TensorRT version and EntropyCalibration2).
        calibrate: implicit INT8 by running an IInt8EntropyCalibrator2 over data at build time (10.x).
        mixed_fp16: on a weakly typed 10.x INT8 build, also set BuilderFlag.FP16 so layers TensorRT keeps
            out of INT8 may run in FP16 (trtexec's ``--int8 --fp16``); refused where a build would ignore it
            (11.x, strongly typed, not INT8).
        shapes: optimization profile per input (required for inputs with dynamic dimensions).
        workspace_bytes: MemoryPoolType.WORKSPACE limit; None = TensorRT's default (the device's memory).
        timing_cache: file the build loads (if present) and saves its timing cache to.
        opt_level: builder_optimization_level 0..5 (None = TensorRT's default 3).
        sparse: BuilderFlag.SPARSE_WEIGHTS (2:4 structured-sparse weights may use sparse kernels).
        target: "server" (any discrete/data-center GPU), "jetson-orin" or "jetson-xavier" (have DLA).
        dla_core: run on this DLA core, with GPU fallback unless gpu_fallback=False. Only where the version has
            DLA (`DLA_SUPPORT`: TensorRT 10.3 on jetson-orin); built weakly typed in FP16 or INT8 as trtexec does.
        version_compatible: BuilderFlag.VERSION_COMPATIBLE (runs on later TensorRT of the same major+).
        exclude_lean_runtime: BuilderFlag.EXCLUDE_LEAN_RUNTIME (needs version_compatible).
        hardware_compatibility: "none" or "ampere+" (one engine for Ampere and later data-center GPUs).
    """

    precision: str = "auto"
    typing: str = "auto"
    calib_cache: str | None = None
    calibrate: bool = False
    mixed_fp16: bool = False
    shapes: tuple[ShapeProfile, ...] = ()
    workspace_bytes: int | None = None
    timing_cache: str | None = None
    opt_level: int | None = None
    sparse: bool = False
    target: str = "server"
    dla_core: int | None = None
    gpu_fallback: bool = True
    version_compatible: bool = False
    exclude_lean_runtime: bool = False
    hardware_compatibility: str = "none"

    def __post_init__(self) -> None:
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("typing", self.typing, TYPINGS)
        check_choice("target", self.target, TARGETS)
        check_choice("hardware_compatibility", self.hardware_compatibility, HARDWARE_COMPATIBILITY)
        check_int("opt_level", self.opt_level, 0, 5, optional=True,
                  fix="use 0 (fastest build) to 5 (most tactics); TensorRT's default is 3")
        check_int("workspace_bytes", self.workspace_bytes, minimum=1 << 20, optional=True,
                  fix="give at least 1 MiB, e.g. --workspace 1024 (MiB)")
        check_int("dla_core", self.dla_core, minimum=0, optional=True, fix="DLA cores are numbered 0, 1")
        if self.dla_core is not None and self.target not in DLA_TARGETS:
            raise field_error("dla_core", self.dla_core, f"asks for a DLA core, but target {self.target!r} has no DLA",
                              f"DLA exists on {', '.join(DLA_TARGETS)}: pass --target jetson-orin, or drop --dla-core")
        if self.exclude_lean_runtime and not self.version_compatible:
            raise field_error("exclude_lean_runtime", self.exclude_lean_runtime, "needs version_compatible",
                              "also pass --version-compatible")
        if self.hardware_compatibility != "none" and self.target != "server":
            raise field_error("hardware_compatibility", self.hardware_compatibility,
                              f"asked for target {self.target!r}",
                              "hardware-compatible engines are for Ampere+ data-center GPUs, not Jetson; drop it")
        if self.hardware_compatibility != "none" and self.dla_core is not None:
            raise field_error("hardware_compatibility", self.hardware_compatibility,
                              f"and dla_core={self.dla_core} asked together", "choose one")
        if self.calib_cache and self.calibrate:
            raise field_error("calibrate", self.calibrate,
                              f"(build-time calibration) and calib_cache={self.calib_cache!r} asked together",
                              "give --calib-cache FILE or calibration data, not both")
        if (self.calib_cache or self.calibrate) and self.precision not in ("auto", "int8"):
            raise field_error("precision", self.precision,
                              "cannot use the calibration cache/calibrator asked for (INT8 only)",
                              "calibration is for --precision int8")
        object.__setattr__(self, "shapes", tuple(self.shapes))

@dataclass(frozen=True)
class BuildPlan:
    """Everything a TensorRT engine build does, as data (see the module docstring for the rules).

    Names in ``network_flags``, ``builder_flags``, ``device_type``, ``hardware_compatibility_level`` and
    ``profiling_verbosity`` are TensorRT enum member names (``trt.BuilderFlag.<name>`` ...), checked
    against the API manifests by tests/test_trt_contract.py.
    """

    trt_version: str
    onnx_path: str
    onnx_sha256: str
    onnx_precision: str
    precision: str
    typing: str
    network_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]
    int8_source: str | None  # None, "qdq", "calibration-cache", "calibrator"
    calib_cache: str | None
    calib_cache_sha256: str | None
    calib_batch_size: int | None
    profiles: tuple[ShapeProfile, ...]
    workspace_bytes: int | None
    timing_cache: str | None
    builder_optimization_level: int | None
    target: str
    device_type: str
    dla_core: int | None
    hardware_compatibility_level: str
    profiling_verbosity: str = "DETAILED"
    notes: tuple[str, ...] = ()
    format: int = PLAN_FORMAT
    dynamic_axes: dict[str, dict[str, str]] = field(default_factory=dict)  # input -> {axis: symbol}, from the ONNX

    @property
    def trt_major(self) -> int:
        return int(self.trt_version.split(".")[0])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["profiles"] = [p.to_dict() for p in self.profiles]
        for key in ("network_flags", "builder_flags", "notes"):
            d[key] = list(d[key])
        d["plan_sha256"] = self.plan_hash()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "plan") -> BuildPlan:
        if not isinstance(d, dict) or d.get("format") != PLAN_FORMAT:
            raise TrtoptError(f"{where} is not a trtopt build plan (format {PLAN_FORMAT})",
                              "write it with trtopt build --plan-only")
        data = {k: v for k, v in d.items() if k not in _RENDERED_KEYS}
        try:
            data["profiles"] = tuple(ShapeProfile.from_dict(p) for p in data["profiles"])
            for key in ("network_flags", "builder_flags", "notes"):
                data[key] = tuple(data[key])
            plan = cls(**data)
        except (KeyError, TypeError) as e:
            raise TrtoptError(f"{where} is malformed ({e})", "regenerate it with trtopt build --plan-only") from e
        if "plan_sha256" in d and d["plan_sha256"] != plan.plan_hash():
            raise TrtoptError(f"{where} was edited: its plan_sha256 does not match its content",
                              "regenerate it with trtopt build --plan-only")
        return plan

    def plan_hash(self) -> str:
        """sha256 of what decides the engine's content: the plan without file locations and notes.

        Paths (ONNX, cache, timing cache) are left out so a bundle moved to another folder keeps its
        hash; the ONNX and calibration cache enter through their sha256.
        """
        d = asdict(self)
        for key in ("onnx_path", "calib_cache", "timing_cache", "notes", "dynamic_axes"):  # the ONNX sha256 covers the axes
            d.pop(key)
        d["profiles"] = [p.to_dict() for p in self.profiles]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def save(self, path: str | os.PathLike, force: bool = False) -> Path:
        from trtopt.files import write_json

        return write_json(path, self.to_dict(), force=force)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BuildPlan:
        from trtopt.files import read_json

        return cls.from_dict(read_json(path, "build plan", "write it with trtopt build --plan-only"), where=str(path))

    def relocated(self, onnx_path: str, calib_cache: str | None = None, timing_cache: str | None = None) -> BuildPlan:
        """The same plan with files at other paths (e.g. inside a bundle); the hash does not change."""
        return replace(self, onnx_path=onnx_path, calib_cache=calib_cache if self.calib_cache else None,
                       timing_cache=timing_cache if self.timing_cache else None)


def make_plan(onnx: Any, options: BuildOptions, trt_version: str) -> BuildPlan:
    """Decide the build for ``onnx`` (a path or an :class:`~trtopt.artifacts.OnnxArtifact`) on ``trt_version``.

    The precision route (typing, precision flags, where INT8 scales come from) follows the rules of the
    version's major release, :func:`_plan_trt10` or :func:`_plan_trt11`; the rest (shape profiles,
    calibration batch, sparsity, DLA, compatibility flags) is the same for every version.

    Raises TrtoptError, before any TensorRT object exists, for anything that version can't do.
    """
    from trtopt.artifacts import OnnxArtifact, inspect_onnx

    art = onnx if isinstance(onnx, OnnxArtifact) else inspect_onnx(onnx)
    version = resolve_version(trt_version)
    where = art.path.name
    precision = options.precision
    if precision == "auto":
        precision = "int8" if (options.calib_cache or options.calibrate) else art.precision
    dla_notes: tuple[str, ...] = ()
    if options.dla_core is not None:
        options, precision, dla_notes = _dla_options(options, precision, version, where)
    if options.mixed_fp16:
        _check_mixed_fp16(options, art.precision, precision, version)
    route = _VERSION_RULES[major(version)](art.precision, precision, options, where, version)
    profiles = validate_profiles(list(art.inputs), options.shapes, where)
    # TensorRT calibrates at the OPT shape of the profile: the batch comes from there.
    calib_batch = _calibration_batch(art, profiles, where) if route.int8_source == "calibrator" else None
    builder_flags = list(route.builder_flags)
    if options.sparse:
        builder_flags.append("SPARSE_WEIGHTS")
    if options.dla_core is not None and options.gpu_fallback:
        builder_flags.append("GPU_FALLBACK")
    if options.version_compatible:
        builder_flags.append("VERSION_COMPATIBLE")
    if options.exclude_lean_runtime:
        builder_flags.append("EXCLUDE_LEAN_RUNTIME")
    return BuildPlan(
        trt_version=version, onnx_path=str(art.path), onnx_sha256=art.sha256, onnx_precision=art.precision,
        precision=precision, typing=route.typing, network_flags=route.network_flags, builder_flags=tuple(builder_flags),
        int8_source=route.int8_source, calib_cache=str(options.calib_cache) if options.calib_cache else None,
        calib_cache_sha256=route.calib_cache_sha256, calib_batch_size=calib_batch, profiles=profiles,
        workspace_bytes=options.workspace_bytes, timing_cache=options.timing_cache,
        builder_optimization_level=options.opt_level, target=options.target,
        device_type="GPU" if options.dla_core is None else "DLA", dla_core=options.dla_core,
        hardware_compatibility_level=HARDWARE_COMPATIBILITY[options.hardware_compatibility], notes=route.notes + dla_notes,
        dynamic_axes={i.name: {str(a): d for a, d in enumerate(i.shape) if isinstance(d, str)} for i in art.inputs
                      if any(isinstance(d, str) for d in i.shape)})


def _dla_options(options: BuildOptions, precision: str, version: str, where: str) -> tuple[BuildOptions, str, tuple[str, ...]]:
    """A DLA build as trtexec makes it: refused where the version/target has no DLA (`DLA_SUPPORT`); weakly typed
    (DLA builds became strongly typed only in TensorRT 11.4.1); FP16 turned on when INT8 is off, as trtexec and
    NVIDIA's samples do ("FP32 mode is not permitted" on DLA). Returns (options, precision, notes)."""
    targets = DLA_SUPPORT.get(version, ())
    if options.target not in targets:
        supported = ", ".join(f"TensorRT {v} on {'/'.join(t)}" for v, t in DLA_SUPPORT.items())
        raise TrtoptError(f"TensorRT {version} on {options.target} has no DLA support (NVIDIA documents DLA up to "
                          "TensorRT 10.7 and none in 11.0-11.3; JetPack 6, with TensorRT 10.3, runs on Orin only)",
                          f"build DLA engines with {supported} (--trt-version 10.3 --target jetson-orin), or drop --dla-core")
    if options.typing == "strong":
        raise TrtoptError(f"a strongly typed network can't be built for DLA with TensorRT {version} (DLA takes its "
                          "precision from builder flags before TensorRT 11.4.1)", "drop --typing strong (DLA builds are weak)")
    if precision == "fp32":
        if options.precision == "fp32":
            raise TrtoptError("DLA runs FP16 and INT8 only, so --precision fp32 can't run on it",
                              "use --precision fp16 or int8 (or auto), or drop --dla-core for an FP32 GPU engine")
        return replace(options, typing="weak"), "fp16", (
            f"DLA runs FP16/INT8 only: {where} builds in FP16 (BuilderFlag.FP16), as trtexec --useDLACore does without --int8",)
    return replace(options, typing="weak"), precision, ()


def _check_mixed_fp16(options: BuildOptions, onnx_precision: str, precision: str, version: str) -> None:
    """``mixed_fp16`` sets BuilderFlag.FP16 beside INT8: refuse it where the build would ignore it."""
    if major(version) >= 11:
        raise TrtoptError(f"--mixed-fp16 has no effect on TensorRT {version}: 11.x has no FP16 builder flag, layers "
                          "run in the precision the ONNX gives them",
                          "drop --mixed-fp16 (the Q/DQ ONNX builds as INT8 where it has Q/DQ nodes, FP32 elsewhere)")
    if precision != "int8":
        raise TrtoptError(f"--mixed-fp16 lets layers kept out of INT8 run in FP16, but this build is {precision}",
                          "drop --mixed-fp16, or build INT8 (--precision int8 with --calib-cache, or a Q/DQ ONNX)")
    if onnx_precision == "int8" and options.typing != "weak":
        raise TrtoptError(f"--mixed-fp16 needs a weakly typed network, and TensorRT {version} builds a Q/DQ ONNX "
                          "strongly typed (precision from the graph, FP16 flag not allowed)",
                          "add --typing weak (INT8 + FP16 builder flags, as trtexec --int8 --fp16)")

@dataclass(frozen=True)
class _PrecisionRoute:
    """How one TensorRT version builds the asked precision: typing, precision flags, source of INT8 scales."""

    typing: str                             # "strong" or "weak"
    network_flags: tuple[str, ...] = ()
    builder_flags: tuple[str, ...] = ()     # precision flags only; make_plan adds the version-independent ones
    int8_source: str | None = None          # None, "qdq", "calibration-cache", "calibrator"
    calib_cache_sha256: str | None = None
    notes: tuple[str, ...] = ()

def _plan_trt11(onnx_precision: str, precision: str, options: BuildOptions, where: str, version: str) -> _PrecisionRoute:
    """TensorRT 11.x: always strongly typed, precision from the graph only (Q/DQ for INT8, casts for FP16).

    STRONGLY_TYPED is deprecated and ignored in 11.x, so no network flag is set (``create_network(0)``);
    there are no FP16/INT8 builder flags, calibrators or calibration caches.
    """
    if options.calib_cache or options.calibrate:
        raise TrtoptError(f"TensorRT {version} has no implicit INT8: calibrators and calibration caches were "
                          "removed in 11.0",
                          "make a Q/DQ ONNX (trtopt quantize --target tensorrt --ranges R.json) and build that")
    if options.typing == "weak":
        raise TrtoptError(f"TensorRT {version} networks are always strongly typed", "drop --typing weak")
    if precision == "int8" and onnx_precision != "int8":
        raise TrtoptError(f"INT8 asked for {where} on TensorRT {version}, but it holds no Q/DQ nodes (11.x takes "
                          "INT8 only from Q/DQ in the graph)",
                          f"quantize it first: trtopt quantize {where} --target tensorrt -o model.int8.onnx")
    if precision == "fp16" and onnx_precision != "fp16":
        raise TrtoptError(f"FP16 asked for {where} on TensorRT {version}, but it is {onnx_precision} (11.x has no "
                          "FP16 builder flag; precision comes from the graph)",
                          f"convert it first: trtopt quantize {where} --precision fp16 -o model.fp16.onnx")
    _check_matches(precision, onnx_precision, where, version)
    return _PrecisionRoute("strong", int8_source="qdq" if precision == "int8" else None)

def _plan_trt10(onnx_precision: str, precision: str, options: BuildOptions, where: str, version: str) -> _PrecisionRoute:
    """TensorRT 10.x: a graph that carries its precision builds strongly typed unless weak typing is asked;
    otherwise precision comes from builder flags, and INT8 from a calibration cache or a calibrator."""
    if onnx_precision in ("int8", "fp16") and precision == onnx_precision:
        return _trt10_from_graph(precision, options, where)
    return _trt10_from_flags(onnx_precision, precision, options, where, version)

def _trt10_from_graph(precision: str, options: BuildOptions, where: str) -> _PrecisionRoute:
    """10.x, a Q/DQ (INT8) or FP16-cast ONNX built in its own precision."""
    if options.calib_cache or options.calibrate:
        raise TrtoptError(f"{where} already holds Q/DQ nodes; a calibration cache/calibrator would be ignored",
                          "drop --calib-cache (the Q/DQ scales are used)")
    int8_source = "qdq" if precision == "int8" else None
    if options.typing != "weak":
        return _PrecisionRoute("strong", network_flags=("STRONGLY_TYPED",), int8_source=int8_source)
    if precision == "fp16":
        return _PrecisionRoute("weak", builder_flags=("FP16",))
    # Weakly typed Q/DQ networks need the INT8 flag (NVIDIA developer guide).
    return _PrecisionRoute("weak", builder_flags=("INT8", "FP16") if options.mixed_fp16 else ("INT8",), int8_source=int8_source)

def _trt10_from_flags(onnx_precision: str, precision: str, options: BuildOptions, where: str,
                      version: str) -> _PrecisionRoute:
    """10.x, an FP32 ONNX: FP16 by BuilderFlag.FP16, INT8 by the INT8 flag plus a calibration cache or calibrator."""
    _check_matches(precision, onnx_precision, where, version)
    if options.typing == "strong" and precision != "fp32":
        raise TrtoptError(f"a strongly typed network takes its precision from the graph, and {where} is "
                          f"{onnx_precision}, not {precision}",
                          f"use --typing weak, or convert the ONNX (trtopt quantize --precision {precision})")
    typing = "strong" if options.typing == "strong" else "weak"
    network_flags = ("STRONGLY_TYPED",) if typing == "strong" else ()
    if precision == "fp16":
        return _PrecisionRoute(typing, network_flags, ("FP16",), notes=(
            "BuilderFlag.FP16 is deprecated since TensorRT 10.12 (removed in 11): an FP16-cast ONNX is the portable route",))
    if precision != "int8":
        return _PrecisionRoute(typing, network_flags)
    flags = ("INT8", "FP16") if options.mixed_fp16 else ("INT8",)
    note = ("implicit INT8 (calibrators/caches) is deprecated since TensorRT 10.1 and removed in 11",)
    if options.calib_cache:
        return _PrecisionRoute(typing, network_flags, flags, "calibration-cache",
                               _check_cache(options.calib_cache, version), notes=note)
    if options.calibrate:
        return _PrecisionRoute(typing, network_flags, flags, "calibrator", notes=note)
    raise TrtoptError(f"implicit INT8 for {where} on TensorRT {version} needs scales",
                      "give --calib-cache FILE (trtopt calibrate --cache), calibration --data, or "
                      "build a Q/DQ ONNX (trtopt quantize --target tensorrt)")

#: The precision rules of each TensorRT major release.
_VERSION_RULES = {10: _plan_trt10, 11: _plan_trt11}

def _calibration_batch(art: Any, profiles: tuple[ShapeProfile, ...], where: str) -> int:
    """Samples per calibration batch: the batch axis of the calibration profile's OPT shape (TensorRT 10.x
    calibrates explicit-batch networks at the OPT dimensions of the calibration profile), else the static one."""
    batches = {p.opt[0] for p in profiles} | {i.shape[0] for i in art.inputs
                                              if i.name not in {p.name for p in profiles} and i.shape}
    if len(batches) != 1 or not all(isinstance(b, int) and b > 0 for b in batches):
        raise TrtoptError(f"the inputs of {where} disagree on the calibration batch ({sorted(map(str, batches))})",
                          "give every input the same batch size in its --shapes OPT shape")
    return batches.pop()

def _check_matches(precision: str, onnx_precision: str, where: str, version: str) -> None:
    """A graph that carries its precision (Q/DQ, casts) builds in that precision whatever is asked."""
    if onnx_precision == "int8" and precision != "int8":
        raise TrtoptError(f"{where} holds Q/DQ nodes, so TensorRT {version} builds it as INT8, not {precision}",
                          "pass --precision int8 (or auto), or build the FP32 ONNX instead")
    if onnx_precision == "fp16" and precision != "fp16":
        raise TrtoptError(f"{where} is an FP16 (cast) model, so TensorRT {version} builds it in FP16, not {precision}",
                          "pass --precision fp16 (or auto), or build the FP32 ONNX instead")

def _check_cache(path: str, version: str) -> str:
    """Read a calibration cache and check TensorRT will use it (right version and algorithm); its sha256."""
    from trtopt.files import sha256_file
    from trtopt.trt.calibration_cache import read_cache

    cache = read_cache(path)
    if cache.trt_version != version:
        raise TrtoptError(f"calibration cache {path} is for TensorRT {cache.trt_version} ({cache.header}); TensorRT "
                          f"{version} would silently ignore it",
                          f"trtopt cache convert {path} --trt-version {version} -o converted.cache")
    if cache.algorithm != CALIBRATOR_ALGORITHM:
        raise TrtoptError(f"calibration cache {path} is for {cache.algorithm}; the build's {CALIBRATOR_CLASS} would "
                          "ignore it and recalibrate",
                          f"trtopt cache convert {path} -o converted.cache (writes {CALIBRATOR_ALGORITHM})")
    return sha256_file(path)

def plan_summary(plan: BuildPlan) -> dict[str, Any]:
    """A few fields for display: version, precision route, flags, profiles."""
    return {"trt_version": plan.trt_version, "precision": plan.precision, "typing": plan.typing,
            "int8_source": plan.int8_source, "network_flags": list(plan.network_flags),
            "builder_flags": list(plan.builder_flags), "device": plan.device_type,
            "profiles": {p.name: [_dims(p.min), _dims(p.opt), _dims(p.max)] for p in plan.profiles},
            "dynamic_axes": plan.dynamic_axes}

__all__ = ["BuildOptions", "BuildPlan", "ShapeProfile", "make_plan", "parse_profiles", "resolve_version",
           "validate_profiles"]
