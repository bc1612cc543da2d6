"""CLI flags that set a config field take their default, choices and quoted default from the config class.

Each (command, flag) ↔ (config, field) pair is checked by changing the config's default and rebuilding the
parser: a flag that follows the config shows the new value (in ``default`` and in its help text), a retyped
literal keeps the old one and fails. Choices must be the config module's own tuple, not a copy.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any

import pytest

from trtopt._config import field_default
from trtopt.cli.main import build_parser
from trtopt.compress.config import (
    CONV_SCHEMES,
    IMPORTANCES,
    OPTIMIZERS,
    OUTPUT_LOSSES,
    PRUNE_METHODS,
    SCHEDULERS,
    SHARE_GRANULARITIES,
    DistillConfig,
    LowRankConfig,
    PruneConfig,
    ShareConfig,
)
from trtopt.config import Recipe
from trtopt.edge.convert import PRECISIONS as EDGE_PRECISIONS
from trtopt.edge.convert import EdgeConfig
from trtopt.export import EXPORTERS, EXTERNAL_DATA, ExportConfig
from trtopt.measure.baseline import GateConfig
from trtopt.measure.compare import Tolerances
from trtopt.measure.profile import TimingConfig
from trtopt.quant.calibrate import METHODS as CALIBRATION_METHODS
from trtopt.quant.calibrate import CalibrationConfig
from trtopt.quant.quantize import TARGETS as QUANTIZE_TARGETS
from trtopt.quant.quantize import QuantizeConfig
from trtopt.speedup_search import SpeedupSearchConfig
from trtopt.trt.plan import HARDWARE_COMPATIBILITY, TYPINGS, BuildOptions
from trtopt.trt.plan import PRECISIONS as BUILD_PRECISIONS
from trtopt.trt.plan import TARGETS as BUILD_TARGETS

CALIBRATION_FLAGS = [("--method", CalibrationConfig, "method"), ("--percentile", CalibrationConfig, "percentile"),
                     ("--batch-size", CalibrationConfig, "batch_size")]
PLAN_FLAGS = [("--precision", BuildOptions, "precision"), ("--typing", BuildOptions, "typing"),
              ("--hardware-compat", BuildOptions, "hardware_compatibility")]

#: (command, flag, config class, field): the flag's default is the field's default. A dotted field is one of
#: a nested config (export's --atol is ExportConfig.parity.atol).
PAIRS = [
    *[("export", flag, ExportConfig, name) for flag, name in (
        ("--opset", "opset"), ("--exporter", "exporter"), ("--external-data", "external_data"),
        ("--atol", "parity.atol"), ("--rtol", "parity.rtol"), ("--min-cosine", "parity.min_cosine"))],
    ("edge-export", "--precision", EdgeConfig, "precision"),
    ("edge-export", "--batch-size", EdgeConfig, "batch_size"),
    ("bench", "--batch-sizes", Recipe, "batch_sizes"),
    ("bench", "--iterations", TimingConfig, "iterations"),
    ("bench", "--warmup", TimingConfig, "warmup_iterations"),
    ("bench", "--duration", TimingConfig, "duration_s"),
    ("bench", "--tolerance", GateConfig, "tolerance"),
    ("compare", "--atol", Tolerances, "atol"),
    ("compare", "--rtol", Tolerances, "rtol"),
    ("compare", "--min-cosine", Tolerances, "min_cosine"),
    *[("calibrate", *flag) for flag in CALIBRATION_FLAGS],
    *[("quantize", *flag) for flag in CALIBRATION_FLAGS],
    ("quantize", "--target", QuantizeConfig, "target"),
    ("quantize", "--per-channel", QuantizeConfig, "per_channel"),
    ("quantize", "--reduce-range", QuantizeConfig, "reduce_range"),
    ("quantize", "--keep-first-layer-fp32", QuantizeConfig, "keep_first_layer_fp32"),
    *[("build", *flag) for flag in PLAN_FLAGS],
    *[("bundle", *flag) for flag in PLAN_FLAGS],
    *[("prune", flag, PruneConfig, name) for flag, name in (
        ("--method", "method"), ("--ratio", "ratio"), ("--importance", "importance"), ("--round-to", "round_to"))],
    *[("prune", flag, SpeedupSearchConfig, name) for flag, name in (
        ("--tolerance", "tolerance"), ("--batch-size", "batch_size"), ("--threads", "threads"),
        ("--iterations", "iterations"))],
    *[("distill", flag, DistillConfig, name) for flag, name in (
        ("--steps", "max_steps"), ("--alpha", "alpha"), ("--temperature", "temperature"),
        ("--feature-weight", "feature_weight"), ("--lr", "lr"), ("--batch-size", "batch_size"),
        ("--weight-decay", "weight_decay"), ("--optimizer", "optimizer"), ("--scheduler", "scheduler"),
        ("--warmup-steps", "warmup_steps"), ("--eval-every", "eval_every"), ("--patience", "patience"),
        ("--seed", "seed"))],
    ("cluster", "--bits", ShareConfig, "bits"),
    ("cluster", "--granularity", ShareConfig, "granularity"),
    ("cluster", "--min-elements", ShareConfig, "min_elements"),
    ("factorize", "--conv", LowRankConfig, "conv"),
    ("factorize", "--min-reduction", LowRankConfig, "min_reduction"),
    ("factorize", "--min-rank", LowRankConfig, "min_rank"),
    ("factorize", "--rank-multiple", LowRankConfig, "rank_multiple"),
    *[("factorize", flag, SpeedupSearchConfig, name) for flag, name in (
        ("--tolerance", "tolerance"), ("--batch-size", "batch_size"), ("--iterations", "iterations"),
        ("--warmup", "warmup_iterations"), ("--threads", "threads"))],
]

#: Flags without a default of their own (None: "not given"), whose help quotes the config default the
#: command falls back to.
HELP_ONLY = [
    ("distill", "--epochs", DistillConfig, "epochs"),
    ("factorize", "--energy", LowRankConfig, "energy"),
    ("bench", "--golden-atol", Tolerances, "atol"),
    ("bench", "--golden-rtol", Tolerances, "rtol"),
    ("build", "--target", BuildOptions, "target"),
    ("bundle", "--target", Recipe, "bundle_target"),
]

#: (command, flag, choices): the flag offers exactly the config's allowed values.
CHOICES = [
    ("export", "--exporter", EXPORTERS), ("export", "--external-data", EXTERNAL_DATA),
    ("edge-export", "--precision", EDGE_PRECISIONS),
    ("calibrate", "--method", CALIBRATION_METHODS), ("quantize", "--method", CALIBRATION_METHODS),
    ("quantize", "--target", QUANTIZE_TARGETS),
    *[(command, flag, choices) for command in ("build", "bundle") for flag, choices in (
        ("--precision", BUILD_PRECISIONS), ("--typing", TYPINGS), ("--hardware-compat", HARDWARE_COMPATIBILITY),
        ("--target", BUILD_TARGETS))],
    ("prune", "--method", PRUNE_METHODS), ("prune", "--importance", IMPORTANCES),
    ("distill", "--optimizer", OPTIMIZERS), ("distill", "--scheduler", SCHEDULERS),
    ("cluster", "--granularity", SHARE_GRANULARITIES), ("factorize", "--conv", CONV_SCHEMES),
]

#: store_true flags that switch a config field away from its default (a flag equal to the default does nothing).
SWITCHES = [
    ("export", "--static-batch", ExportConfig, "dynamic_batch", False),
    ("export", "--no-simplify", ExportConfig, "simplify", False),
    ("export", "--no-parity", ExportConfig, "check_parity", False),
    ("edge-export", "--per-tensor", EdgeConfig, "per_channel", False),
    ("prune", "--global", PruneConfig, "global_pruning", True),
    ("prune", "--no-protect", PruneConfig, "protect_first_last", False),
    ("cluster", "--int8-grid", ShareConfig, "int8_grid", True),
    *[(command, flag, BuildOptions, name, True) for command in ("build", "bundle") for flag, name in (
        ("--mixed-fp16", "mixed_fp16"), ("--sparse", "sparse"), ("--version-compatible", "version_compatible"),
        ("--exclude-lean-runtime", "exclude_lean_runtime"))],
]


def _action(command: str, flag: str, parser: argparse.ArgumentParser | None = None) -> tuple[argparse.Action, Any]:
    """The parser action of ``flag`` in ``command``, and a formatter to expand its help with."""
    parser = parser or build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return next(a for a in sub._actions if flag in a.option_strings), sub._get_formatter()


def _default(cls: type, path: str) -> Any:
    name, _, rest = path.partition(".")
    value = field_default(cls, name)
    return getattr(value, rest) if rest else value


def _other_value(value: Any, name: str) -> Any:
    """A value of the same kind as a field's default that no flag could have typed by chance."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, str):
        return f"patched-{name}"
    if isinstance(value, int):
        return value + 1009
    if isinstance(value, float):
        return value / 2 + 0.0123  # stays inside every field's range (fractions, cosines, percentiles)
    if isinstance(value, tuple):
        return (3, 5, 7)
    return 1009  # None: an optional number


def _patch_default(monkeypatch, cls: type, path: str, value: Any) -> None:
    """Make ``value`` the default of ``cls``'s field ``path``, however the CLI reads it (class attribute or
    dataclass field; a nested config's field through its default_factory)."""
    name, _, rest = path.partition(".")
    f = cls.__dataclass_fields__[name]
    if rest:
        nested = dataclasses.replace(field_default(cls, name), **{rest: value})
        monkeypatch.setattr(f, "default_factory", lambda: nested)
        return
    monkeypatch.setattr(f, "default", value)
    monkeypatch.setattr(cls, name, value)


def _as_config_value(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _quoted_default(help_text: str, value: Any) -> bool:
    """Whether ``help_text`` quotes ``value`` as a default ("(default 0.5)", "default: [1, 8]")."""
    shown = str(list(value) if isinstance(value, tuple) else value)
    return re.search(rf"default\W{{0,3}}{re.escape(shown)}", help_text) is not None


@pytest.mark.parametrize("command, flag, cls, path", PAIRS, ids=[f"{c} {f}" for c, f, *_ in PAIRS])
def test_flag_default_is_the_config_default(command, flag, cls, path):
    action, _ = _action(command, flag)
    assert _as_config_value(action.default) == _default(cls, path)


@pytest.mark.parametrize("command, flag, cls, path", PAIRS, ids=[f"{c} {f}" for c, f, *_ in PAIRS])
def test_flag_default_follows_a_changed_config_default(monkeypatch, command, flag, cls, path):
    old = _default(cls, path)
    action, formatter = _action(command, flag)
    quoted = action.help is not None and _quoted_default(formatter._expand_help(action), old)
    new = _other_value(old, path)
    _patch_default(monkeypatch, cls, path, new)
    action, formatter = _action(command, flag)
    assert _as_config_value(action.default) == new, f"{command} {flag} does not read {cls.__name__}.{path}"
    if quoted:
        assert _quoted_default(formatter._expand_help(action), new), f"{command} {flag}'s help quotes a retyped default"


@pytest.mark.parametrize("command, flag, cls, path", HELP_ONLY, ids=[f"{c} {f}" for c, f, *_ in HELP_ONLY])
def test_help_quotes_the_config_default_a_flag_falls_back_to(monkeypatch, command, flag, cls, path):
    action, formatter = _action(command, flag)
    assert action.default is None and _quoted_default(formatter._expand_help(action), _default(cls, path))
    new = _other_value(_default(cls, path), path)
    _patch_default(monkeypatch, cls, path, new)
    action, formatter = _action(command, flag)
    assert _quoted_default(formatter._expand_help(action), new), \
        f"{command} {flag}'s help does not read {cls.__name__}.{path}"


@pytest.mark.parametrize("command, flag, choices", CHOICES, ids=[f"{c} {f}" for c, f, _ in CHOICES])
def test_flag_choices_are_the_config_modules_own(command, flag, choices):
    action, _ = _action(command, flag)
    assert action.choices is choices


def test_distill_loss_offers_auto_then_the_config_losses():
    action, _ = _action("distill", "--loss")
    assert tuple(action.choices) == ("auto", *OUTPUT_LOSSES) and action.default == "auto"


@pytest.mark.parametrize("command, flag, cls, name, given", SWITCHES, ids=[f"{c} {f}" for c, f, *_ in SWITCHES])
def test_a_switch_flag_changes_its_field_from_the_config_default(command, flag, cls, name, given):
    action, _ = _action(command, flag)
    assert action.default is False and isinstance(action, argparse._StoreTrueAction)
    assert field_default(cls, name) is not given


@pytest.mark.parametrize("flag, name", [("--keep-zeros", "keep_zeros"), ("--find-unused-parameters", "find_unused_parameters")])
def test_distill_auto_switches_default_to_the_config_auto_and_set_true(flag, name):
    action, _ = _action("distill", flag)
    assert action.default is field_default(DistillConfig, name) is None and action.const is True


#: Flags of other tools that trtopt's messages and docstrings quote: trtexec (its lines are rendered in
#: trtopt/trt/), torchrun, nvidia-smi and Polygraphy.
FOREIGN_FLAGS = {"--nproc", "--query-gpu", "--format", "--val-range", "--calib", "--fp16", "--int8", "--saveEngine",
                 "--stronglyTyped", "--useCudaGraph", "--noCudaGraph", "--includeDataTransfers", "--noDataTransfers",
                 "--useDLACore", "--allowGPUFallback", "--avgRuns", "--builderOptimizationLevel", "--excludeLeanRuntime",
                 "--exportLayerInfo", "--hardwareCompatibilityLevel", "--memPoolSize", "--profilingVerbosity",
                 "--sparsity", "--timingCacheFile", "--useSpinWait", "--versionCompatible", "--warmUp"}


def test_every_flag_a_message_names_exists():
    """A fix that names a flag trtopt does not have does not work (``--exclude-op-type`` and
    ``trtopt quantize --list-nodes`` were named by two errors)."""
    from pathlib import Path

    import trtopt

    def flags(parser: argparse.ArgumentParser) -> set[str]:  # a parser's own flags and its subcommands', nested
        found = set(parser._option_string_actions)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    found |= flags(sub)
        return found

    ours = flags(build_parser())
    unknown = {}
    for path in Path(trtopt.__file__).parent.rglob("*.py"):
        for flag in re.findall(r"(?<![\w-])--[a-zA-Z][a-zA-Z0-9-]+", path.read_text(encoding="utf-8")):
            if flag not in ours and flag not in FOREIGN_FLAGS:
                unknown.setdefault(flag, path.name)
    assert not unknown, f"flags named in trtopt's text that no command has: {unknown}"
