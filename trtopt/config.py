"""Frozen, validated configs per stage, and the `Recipe` that groups them (YAML ⇄ objects).

Configs are frozen dataclasses. They are built from plain dicts by :func:`from_dict`, which rejects
unknown keys (a typo in a recipe is an error, not a silently ignored option) and converts nested dicts
and lists. Precedence is defaults < recipe file < CLI flags: :func:`merge` applies overrides on top of
an existing config and re-validates. Stage configs that belong to one module live there
(`profile.TimingConfig`, `compare.Tolerances`); the ones below are shared by several stages.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from trtopt.calibrate import CalibrationConfig
from trtopt.compare import Tolerances
from trtopt.errors import TrtoptError
from trtopt.profile import TimingConfig
from trtopt.quantize import QuantizeConfig

RECIPE_VERSION = 1
C = TypeVar("C")

EXPORTERS = ("auto", "dynamo", "torchscript")
EXTERNAL_DATA = ("auto", "always", "never")
GRAPH_OPT_LEVELS = ("disable", "basic", "extended", "all")


@dataclass(frozen=True)
class ExportConfig:
    """How a PyTorch model becomes ONNX.

    Attributes:
        opset: ONNX opset; the dynamo exporter needs >= 18.
        dynamic_batch: make axis 0 of every input and output symbolic ("batch").
        exporter: "dynamo" (torch.export based), "torchscript" (the legacy tracer), or "auto": dynamo,
            falling back to TorchScript when dynamo fails; the artifact records which one ran and why.
        example_batch_size: batch of the example inputs used for tracing. At least 2, otherwise the
            exporter may specialize the batch axis to 1.
        simplify: run onnxslim (constant folding, dead-node removal, fusion of trivial patterns).
        external_data: "auto" keeps weights inline unless the model is near protobuf's 2 GB limit,
            "always" writes them to ``<name>.onnx.data``, "never" forbids the side file.
        check_parity: run the exported model in ONNX Runtime and compare it with PyTorch before the
            file is moved into place; a failing export is never written.
        parity_batch_sizes: batch sizes checked (proves the dynamic batch axis works).
        parity: error tolerances for the parity check (FP32 vs FP32: tight).
    """

    opset: int = 18
    dynamic_batch: bool = True
    exporter: str = "auto"
    example_batch_size: int = 2
    simplify: bool = True
    external_data: str = "auto"
    check_parity: bool = True
    parity_batch_sizes: tuple[int, ...] = (1, 8)
    parity: Tolerances = field(default_factory=lambda: Tolerances(atol=1e-4, rtol=1e-3, min_cosine=0.9999))

    def __post_init__(self) -> None:
        _choice("export.exporter", self.exporter, EXPORTERS)
        _choice("export.external_data", self.external_data, EXTERNAL_DATA)
        if not isinstance(self.opset, int) or isinstance(self.opset, bool) or not 7 <= self.opset <= 25:
            raise TrtoptError(f"export.opset={self.opset!r} is not an integer in 7..25", "use an opset such as 17 or 18")
        if self.exporter == "dynamo" and self.opset < 18:
            raise TrtoptError(f"the dynamo exporter emits opset >= 18, but export.opset={self.opset}",
                              "use opset 18+ or exporter 'torchscript'")
        if self.example_batch_size < 1 or any(b < 1 for b in self.parity_batch_sizes):
            raise TrtoptError("export batch sizes must be >= 1", "fix example_batch_size / parity_batch_sizes")


@dataclass(frozen=True)
class OrtConfig:
    """ONNX Runtime session options.

    Attributes:
        intra_op_threads: threads inside one operator; None lets ONNX Runtime pick (all physical cores).
        inter_op_threads: threads across independent operators (parallel mode only).
        graph_optimization_level: "disable", "basic", "extended" or "all".
        providers: execution providers in priority order; each must be available in this build.
        allow_spinning: let idle intra-op threads busy-wait for the next run. Off by default: when
            candidates are timed interleaved, spinning ONNX Runtime threads steal the cores from the
            next candidate (measured here: ResNet-18 PyTorch batch 1 went from 46 ms to 91 ms next to a
            spinning session), and the gain for ONNX Runtime itself was nil (28.8 vs 32.2 ms).
    """

    intra_op_threads: int | None = None
    inter_op_threads: int | None = 1
    graph_optimization_level: str = "all"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    allow_spinning: bool = False

    def __post_init__(self) -> None:
        _choice("ort.graph_optimization_level", self.graph_optimization_level, GRAPH_OPT_LEVELS)
        if not self.providers:
            raise TrtoptError("ort.providers is empty", "name at least one provider, e.g. CPUExecutionProvider")


#: Pipeline stages in the order `trtopt.pipeline.optimize` runs them; a recipe lists the ones it wants.
#: Pipeline stages in run order. PyTorch side: prune and factorize change the architecture, distill
#: recovers accuracy from the original, cluster comes last (training after it would untie its weights).
STAGES = ("prune", "factorize", "distill", "cluster", "export", "calibrate", "quantize", "build", "bundle", "profile",
          "compare")
#: What each stage needs to have run before it.
STAGE_NEEDS = {"calibrate": ("export",), "quantize": ("calibrate",), "build": ("export",),
               "bundle": ("export",), "profile": ("export",), "compare": ("export",)}
#: PyTorch-side stages, their config section in a recipe, and the class it is read into (imported only
#: when a recipe has the section: these modules import torch).
TORCH_STAGE_CONFIGS = {"prune": ("trtopt.prune", "PruneConfig"), "factorize": ("trtopt.lowrank", "LowRankConfig"),
                       "distill": ("trtopt.distill", "DistillConfig"), "cluster": ("trtopt.share", "ShareConfig")}
DEFAULT_STAGES = ("export", "calibrate", "quantize", "build", "bundle", "profile", "compare")
BUNDLE_TARGETS = ("jetson-orin", "jetson-xavier", "server")
INT8_TARGETS = ("onnxruntime", "tensorrt")
METRICS = ("auto", "accuracy", "agreement", "cosine")


@dataclass(frozen=True)
class Recipe:
    """A run described on disk: which model, which inputs, and every stage's config.

    Attributes:
        model: a model spec (see `trtopt.models`), e.g. "torchvision:resnet18" or "zoo:efficientnet_lite0".
        checkpoint: optional state-dict/checkpoint file loaded into the model.
        input_shapes: per input name, the shape *without* the batch axis; empty = the model's default.
        data: evaluation inputs (.npy/.npz file, image folder, skimage:photos); None = seeded random inputs.
        calibration_data: INT8 calibration inputs (same kinds); None = ``data``.
        batch_sizes: batch sizes profiled.
        threads: CPU threads for both PyTorch and ONNX Runtime, so the comparison is like for like.
        stages: pipeline stages to run (`trtopt.pipeline.optimize`), any of :data:`STAGES`; each runs in
            the fixed order there, whatever the order written. "prune" and "distill" need their sections.
        prune: `trtopt.prune.PruneConfig` fields (method, ratio, importance, ...) for the prune stage.
        factorize: `trtopt.lowrank.LowRankConfig` fields (method, energy, ...) for low-rank factorization.
        cluster: `trtopt.share.ShareConfig` fields (bits, granularity, ...) for weight sharing; the stage
            also writes the compact codebook file (``model.shared.npz``).
        distill: `trtopt.distill.DistillConfig` fields (epochs, alpha, temperature, lr, ...) for the distill
            stage, which trains the pruned model against the original on ``train_data``.
        train_data: the distill stage's training inputs (``dataset:NAME:SPLIT`` brings labels; any other
            source trains on the teacher's outputs alone).
        int8_targets: Q/DQ layouts the quantize stage writes: "onnxruntime" (U8S8, timed on the CPU) and/or
            "tensorrt" (S8S8 Q/DQ for TensorRT 11 and 10.x, evaluated for accuracy on the CPU).
        fp16: the quantize stage also writes an FP16-by-casts model (TensorRT 11's FP16 route).
        trt_cache_version: TensorRT version stamped into the calibration cache (10.3.0 = JetPack 6).
        sensitivity: the compare stage also measures per-layer INT8 sensitivity (one quantize + evaluation
            per layer: minutes on a large model).
        metric: the accuracy a variant is judged by in plots and sensitivity: "accuracy" (needs labelled
            data), "agreement" (top-1 agreement with FP32: classifiers), "cosine" (embeddings), or "auto"
            (accuracy with labels, else agreement).
        bundle_target: device the bundle stage packs for: "jetson-orin"/"jetson-xavier" (TensorRT 10.3,
            JetPack 6) or "server" (10.16); plans for TensorRT 11.1 are always included.
        workspace_mib: TensorRT builder workspace limit for the build and bundle stages (None = TensorRT's
            default). Optimization profiles come from the model's inputs: batch 1 to max(batch_sizes).
    """

    model: str
    checkpoint: str | None = None
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    data: str | None = None
    calibration_data: str | None = None
    batch_sizes: tuple[int, ...] = (1, 8)
    threads: int | None = None
    export: ExportConfig = field(default_factory=ExportConfig)
    ort: OrtConfig = field(default_factory=OrtConfig)
    timing: TimingConfig = field(default_factory=TimingConfig)
    compare: Tolerances = field(default_factory=Tolerances)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    stages: tuple[str, ...] = DEFAULT_STAGES
    prune: dict[str, Any] | None = None
    factorize: dict[str, Any] | None = None
    distill: dict[str, Any] | None = None
    cluster: dict[str, Any] | None = None
    train_data: str | None = None
    int8_targets: tuple[str, ...] = INT8_TARGETS
    fp16: bool = False
    trt_cache_version: str = "10.3.0"
    sensitivity: bool = False
    metric: str = "auto"
    bundle_target: str = "jetson-orin"
    workspace_mib: int | None = None
    version: int = RECIPE_VERSION

    def __post_init__(self) -> None:
        if self.version != RECIPE_VERSION:
            raise TrtoptError(f"recipe version {self.version} is not supported (this trtopt reads {RECIPE_VERSION})",
                              "update the recipe or trtopt")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise TrtoptError(f"batch_sizes {self.batch_sizes} must be non-empty and >= 1", "e.g. batch_sizes: [1, 8]")
        if self.threads is not None and self.threads < 1:
            raise TrtoptError(f"threads={self.threads} must be >= 1", "omit it to use the default")
        for stage in self.stages:
            _choice("stages", stage, STAGES)
        for stage in self.stages:
            missing = [need for need in STAGE_NEEDS.get(stage, ()) if need not in self.stages]
            if missing:
                raise TrtoptError(f"stages: {stage!r} needs {', '.join(map(repr, missing))}, which the recipe leaves out",
                                  f"add {', '.join(missing)} to stages", key="stages")
        for target in self.int8_targets:
            _choice("int8_targets", target, INT8_TARGETS)
        _choice("metric", self.metric, METRICS)
        for stage, (module, name) in TORCH_STAGE_CONFIGS.items():
            section = getattr(self, stage)
            if stage in self.stages and section is None:
                raise TrtoptError(f"stages lists {stage!r} but the recipe has no '{stage}' section",
                                  f"add '{stage}:' with its settings (an empty mapping takes the defaults)", key="stages")
            if section is not None:
                from_dict(getattr(importlib.import_module(module), name), section, f"{stage}.")
        if "distill" in self.stages and not {"prune", "factorize"} & set(self.stages):
            raise TrtoptError("stages: 'distill' trains a pruned or factorized model, but neither stage is listed",
                              "add prune or factorize before distill", key="stages")
        if "distill" in self.stages and not self.train_data:
            raise TrtoptError("the distill stage has no train_data", "e.g. train_data: dataset:digits:train", key="stages")
        _choice("bundle_target", self.bundle_target, BUNDLE_TARGETS)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise TrtoptError(f"{name}={value!r} is not one of {', '.join(allowed)}", f"set {name} to one of those")


def to_dict(config: Any) -> Any:
    """A config (or nested configs) as plain JSON/YAML-able data (tuples become lists)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config


def from_dict(cls: type[C], data: dict[str, Any] | None, where: str = "") -> C:
    """Build the frozen config ``cls`` from plain data, rejecting unknown keys and coercing lists.

    Raises TrtoptError naming the offending key (with its dotted path) and the valid keys.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        raise TrtoptError(f"unknown key {where + str(unknown[0])!r} in {cls.__name__}",
                          f"valid keys: {', '.join(sorted(names))}", key=where + str(unknown[0]))
    kwargs = {k: _coerce(hints[k], v, f"{where}{k}.") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise TrtoptError(f"invalid {cls.__name__}: {e}", "check the recipe against the documented keys",
                          key=where.rstrip(".") or None) from e
    except TrtoptError as e:
        if e.key is None:  # a field's own validation: point at the field it names, else at this section
            named = [n for n in names if f"{n}=" in e.problem or f".{n} " in e.problem or f"{n} " in e.problem]
            e.key = where + max(named, key=len) if named else (where.rstrip(".") or None)
        raise


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Convert YAML/JSON data to the annotated type: nested configs, tuples, dicts of tuples."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(non_none[0], value, where) if len(non_none) == 1 else value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise TrtoptError(f"{where.rstrip('.')} must be a mapping", f"write it as keys of {hint.__name__}")
        return from_dict(hint, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _type_error(where, value, "a list")
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(where, value, "a mapping")
        inner = args[1] if len(args) == 2 else Any
        return {k: _coerce(inner, v, where) for k, v in value.items()}
    if hint is bool and not isinstance(value, bool):
        raise _type_error(where, value, "true or false")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise _type_error(where, value, "an integer")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(where, value, "a number")
        return float(value)
    if hint is str and not isinstance(value, str):
        raise _type_error(where, value, "a string")
    return value


def _type_error(where: str, value: Any, expected: str) -> TrtoptError:
    key = where.rstrip(".")
    return TrtoptError(f"{key} is {value!r} ({type(value).__name__}), expected {expected}",
                       f"write {key} as {expected}", key=key)


def merge(config: C, overrides: dict[str, Any]) -> C:
    """Return ``config`` with ``overrides`` applied (None values are ignored: "flag not given").

    Nested configs take nested dicts, at any depth: ``merge(recipe, {"export": {"opset": 17}})`` changes
    only ``export.opset`` and keeps the rest of ``recipe.export``.
    """
    return from_dict(type(config), _merge_dicts(to_dict(config), overrides))


def _merge_dicts(current: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``current`` updated by ``overrides`` at any depth, skipping None values."""
    merged = dict(current)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge_dicts(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read a YAML recipe file into a validated :class:`Recipe`."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise TrtoptError(f"recipe {p} does not exist", "give the path of a YAML recipe")
    text = p.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
        lines = _key_lines(yaml.compose(text))
    except yaml.YAMLError as e:
        raise TrtoptError(f"recipe {p} is not valid YAML ({str(e).splitlines()[0]})", "fix the YAML syntax") from e
    if not isinstance(data, dict):
        raise TrtoptError(f"recipe {p} must be a YAML mapping", "start it with 'model: ...'")
    try:
        return from_dict(Recipe, data)
    except TrtoptError as e:
        key = e.key or ""
        while key and key not in lines:  # a field not written in the file: point at its section
            key = key.rpartition(".")[0]
        where = f"recipe {p} line {lines[key]}" if key else f"recipe {p}"
        raise TrtoptError(f"{where}: {e.problem}", e.fix, key=e.key) from e


def _key_lines(node: Any, prefix: str = "") -> dict[str, int]:
    """Dotted key path → 1-based line number, for every mapping key of a composed YAML document."""
    import yaml

    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = prefix + str(key_node.value)
            lines[path] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, path + "."))
    return lines


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML text (saved beside every result so runs can be reproduced)."""
    import yaml

    return yaml.safe_dump(to_dict(recipe), sort_keys=False)


def stage_config(recipe: Recipe, stage: str) -> Any:
    """The frozen config object of a PyTorch-side stage's recipe section (see :data:`TORCH_STAGE_CONFIGS`)."""
    module, name = TORCH_STAGE_CONFIGS[stage]
    return from_dict(getattr(importlib.import_module(module), name), getattr(recipe, stage) or {}, f"{stage}.")
