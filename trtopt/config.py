"""The `Recipe`: a whole run described on disk (YAML ⇄ typed configs), and the pipeline's stage order.

A recipe holds one typed section per stage, each the frozen config that stage takes (`ExportConfig`,
`CalibrationConfig`, `QuantizeConfig`, the torch-free `trtopt.compress.config` sections …); it is read with
`trtopt._config.from_dict`, which rejects unknown keys, and an error names the recipe line that holds the
offending key. Precedence is defaults < recipe file < CLI flags (`trtopt._config.merge`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from trtopt._config import (
    MAX_BATCH_SIZE,
    check_choice,
    check_int,
    check_ints,
    check_names,
    check_shape,
    field_error,
    from_dict,
    to_dict,
)
from trtopt.backends.ort import OrtConfig
from trtopt.compress.config import DistillConfig, LowRankConfig, PruneConfig, QATConfig, ShareConfig
from trtopt.errors import TrtoptError, first_line
from trtopt.export import ExportConfig
from trtopt.files import require_file
from trtopt.measure.compare import Tolerances
from trtopt.measure.profile import TimingConfig
from trtopt.models.inputs import InputDeclaration, declarations_from_dict
from trtopt.quant.calibrate import CalibrationConfig
from trtopt.quant.quantize import FP16_CONVERTERS, QuantizeConfig
from trtopt.quant.quantize import TARGETS as INT8_TARGETS
from trtopt.trt.calibration_cache import DEFAULT_TRT_VERSION
from trtopt.trt.plan import TARGETS as BUNDLE_TARGETS

RECIPE_VERSION = 1

#: Pipeline stages in the order `trtopt.pipeline.optimize` runs them; a recipe lists the ones it wants.
#: Pipeline stages in run order. PyTorch side: prune and factorize change the architecture, distill
#: recovers accuracy from the original, cluster comes last (training after it would untie its weights).
STAGES = ("prune", "factorize", "distill", "qat", "cluster", "export", "calibrate", "quantize", "build", "bundle", "profile",
          "compare")

#: What each stage needs to have run before it.
STAGE_NEEDS = {"calibrate": ("export",), "quantize": ("calibrate",), "build": ("export",),
               "bundle": ("export",), "profile": ("export",), "compare": ("export",)}

#: PyTorch-side stages: each has a recipe section of its own (its config), required when the stage runs.
TORCH_STAGES = ("prune", "factorize", "distill", "qat", "cluster")
DEFAULT_STAGES = ("export", "calibrate", "quantize", "build", "bundle", "profile", "compare")

METRICS = ("auto", "accuracy", "agreement", "cosine")

@dataclass(frozen=True)
class Recipe:
    """A run described on disk: which model, which inputs, and every stage's config.

    Attributes:
        model: a model spec (see `trtopt.models.load`), e.g. "torchvision:resnet18" or "zoo:efficientnet_lite0".
        checkpoint: optional state-dict/checkpoint file loaded into the model.
        inputs: input declarations per input name (README "Declaring inputs"): ``shape`` with the batch axis
            (trtexec style), ``dtype``, ``range`` [LOW, HIGH] both included, ``dynamic`` {AXIS: SYMBOL};
            read by `trtopt.models.inputs.declarations_from_dict`. Empty = the model's own declaration.
        input_shapes: the older form: per input name, the shape *without* the batch axis.
        data: evaluation inputs (.npy/.npz file, image folder, skimage:photos); None = seeded random inputs.
        calibration_data: INT8 calibration inputs (same kinds); None = ``data``.
        batch_sizes: batch sizes profiled.
        threads: CPU threads for both PyTorch and ONNX Runtime, so the comparison is like for like.
        stages: pipeline stages to run (`trtopt.pipeline.optimize`), any of :data:`STAGES`; each runs in
            the fixed order there, whatever the order written. "prune" and "distill" need their sections.
        prune: `trtopt.compress.config.PruneConfig` fields (method, ratio, importance, ...) for the prune stage.
        factorize: `trtopt.compress.config.LowRankConfig` fields (method, energy, ...) for low-rank factorization.
        cluster: `trtopt.compress.config.ShareConfig` fields (bits, granularity, ...) for weight sharing; the stage
            also writes the compact codebook file (``model.shared.npz``).
        distill: `trtopt.compress.config.DistillConfig` fields (epochs, alpha, temperature, lr, ...) for the distill
            stage, which trains the pruned model against the original on ``train_data``.
        qat: `trtopt.compress.config.QATConfig` fields (mode qat/qad, calibration_samples, training: {epochs, lr,
            ...}) for the qat stage: ModelOpt fake quantization of the model so far (after prune/factorize/distill),
            fine-tuned on ``train_data``, written as ``model.qat.<target>.onnx`` for each of ``int8_targets``
            and compared beside the PTQ variants (needs the ``modelopt`` extra; not with cluster).
        train_data: the distill and qat stages' training inputs (``dataset:NAME:SPLIT`` brings labels; any other
            source trains on the teacher's outputs alone).
        int8_targets: Q/DQ layouts the quantize stage writes: "onnxruntime" (U8S8, timed on the CPU) and/or
            "tensorrt" (S8S8 Q/DQ for TensorRT 11 and 10.x, evaluated for accuracy on the CPU).
        fp16: the quantize stage also writes an FP16-by-casts model (TensorRT 11's FP16 route).
        fp16_converter: how that FP16 model is made: "onnxconverter" (onnxconverter-common) or "autocast" (NVIDIA
            ModelOpt AutoCast; needs the ``modelopt`` extra); see `trtopt.quant.quantize.to_fp16`.
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
        trust_code: let ``model`` name a file whose loading runs code it names (a pickled module, an
            ExportedProgram, a trtopt model file built on a ``package.module:factory``); see
            `trtopt.models.load`. Off: such a file is refused with one line.
    """

    model: str
    checkpoint: str | None = None
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
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
    prune: PruneConfig | None = None
    factorize: LowRankConfig | None = None
    distill: DistillConfig | None = None
    qat: QATConfig | None = None
    cluster: ShareConfig | None = None
    train_data: str | None = None
    int8_targets: tuple[str, ...] = INT8_TARGETS
    fp16: bool = False
    fp16_converter: str = "onnxconverter"
    trt_cache_version: str = DEFAULT_TRT_VERSION
    sensitivity: bool = False
    metric: str = "auto"
    bundle_target: str = "jetson-orin"
    workspace_mib: int | None = None
    trust_code: bool = False
    version: int = RECIPE_VERSION

    def input_declarations(self) -> tuple[InputDeclaration, ...]:
        """``inputs`` (and the older ``input_shapes``, batch 1 prepended) as input declarations."""
        older = {n: {"shape": [1, *s]} for n, s in self.input_shapes.items() if n not in self.inputs}
        return declarations_from_dict({**older, **self.inputs})

    def __post_init__(self) -> None:
        # Python callers may give a section as a plain mapping (Recipe(prune={"ratio": 0.5})): read it
        # exactly as a recipe file's section would be
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, from_dict(cls, value, f"{name}."))
        if self.version != RECIPE_VERSION:
            raise field_error("version", self.version,
                              f"is not supported (this trtopt reads recipe version {RECIPE_VERSION})",
                              "update the recipe or trtopt")
        check_ints("batch_sizes", self.batch_sizes, maximum=MAX_BATCH_SIZE, nonempty=True,
                   fix="e.g. batch_sizes: [1, 8]")
        for name, shape in self.input_shapes.items():
            check_shape(f"input_shapes.{name}", shape)
        self.input_declarations()  # refuses an unreadable inputs section, naming the key
        check_int("threads", self.threads, optional=True, fix="omit it to use the default")
        if not isinstance(self.model, str) or not self.model.strip():
            raise field_error("model", self.model, "is empty or not a string", "name the model: a spec such as torchvision:resnet18, "
                              "zoo:NAME or package.module:factory, or a model file")
        check_names("stages", self.stages, nonempty=True,
                    fix="list the stages to run, e.g. [export, calibrate, quantize], or leave stages out for the default")
        for stage in self.stages:
            check_choice("stages", stage, STAGES)
        for stage in self.stages:
            missing = [need for need in STAGE_NEEDS.get(stage, ()) if need not in self.stages]
            if missing:
                raise TrtoptError(f"stages: {stage!r} needs {', '.join(map(repr, missing))}, which the recipe leaves out",
                                  f"add {', '.join(missing)} to stages", key="stages")
        for target in self.int8_targets:
            check_choice("int8_targets", target, INT8_TARGETS)
        check_choice("metric", self.metric, METRICS)
        check_choice("fp16_converter", self.fp16_converter, FP16_CONVERTERS)
        for stage in TORCH_STAGES:
            if stage in self.stages and getattr(self, stage) is None:
                raise TrtoptError(f"stages lists {stage!r} but the recipe has no '{stage}' section",
                                  f"add '{stage}:' with its settings (an empty mapping takes the defaults)", key="stages")
        if "distill" in self.stages and not {"prune", "factorize"} & set(self.stages):
            raise TrtoptError("stages: 'distill' trains a pruned or factorized model, but neither stage is listed",
                              "add prune or factorize before distill", key="stages")
        for stage in ("distill", "qat"):
            if stage in self.stages and not self.train_data:
                raise TrtoptError(f"the {stage} stage has no train_data", "e.g. train_data: dataset:digits:train", key="stages")
        if {"qat", "cluster"} <= set(self.stages):
            raise TrtoptError("stages: 'qat' and 'cluster' both list, but clustering a quantization-aware model "
                              "would undo its training", "keep one of qat and cluster", key="stages")
        check_choice("bundle_target", self.bundle_target, BUNDLE_TARGETS)

#: The typed sections a recipe holds, by key.
_SECTIONS = {"export": ExportConfig, "ort": OrtConfig, "timing": TimingConfig, "compare": Tolerances,
             "calibration": CalibrationConfig, "quantize": QuantizeConfig, "prune": PruneConfig,
             "factorize": LowRankConfig, "distill": DistillConfig, "qat": QATConfig, "cluster": ShareConfig}


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read a YAML recipe file into a validated :class:`Recipe`."""
    import yaml

    p = require_file(path, "recipe", "give the path of a YAML recipe")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise TrtoptError(f"recipe {p} is not UTF-8 text (byte {e.start}, line {line})",
                          "save the recipe as UTF-8 YAML") from None
    try:
        data = yaml.safe_load(text)
        lines = _key_lines(yaml.compose(text))
    except TrtoptError as e:  # a key written twice
        raise TrtoptError(f"recipe {p} {e.problem}", e.fix, key=e.key) from None
    except yaml.YAMLError as e:
        raise TrtoptError(f"recipe {p} is not valid YAML ({first_line(e)})", "fix the YAML syntax") from e
    except RecursionError:
        raise TrtoptError(f"recipe {p} is nested too deeply to be a recipe", "fix the YAML syntax") from None
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
            if path in lines:  # YAML loaders keep the last silently: one of the two settings would be ignored
                raise TrtoptError(f"line {key_node.start_mark.line + 1}: key {path!r} is written twice (also line "
                                  f"{lines[path]})", "keep one of the two", key=path)
            lines[path] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, path + "."))
    return lines

def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML text (saved beside every result so runs can be reproduced)."""
    import yaml

    return yaml.safe_dump(to_dict(recipe), sort_keys=False)
