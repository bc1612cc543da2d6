"""Compress until *measured* faster: one speedup search for structured pruning and low-rank factorization.

A compression is searched over its *strength* s in (0, 1), where a stronger setting removes more:

- structured pruning (`PruneConfig`, method "structured"): s = the channel ratio removed;
- low-rank factorization (`LowRankConfig`, method "energy"): s = 1 − the kept energy.

Each candidate compresses a copy of the model at one strength, is exported to ONNX (in a temporary
folder) and timed in ONNX Runtime interleaved with the uncompressed model's ONNX (same inputs, same
threads, `trtopt.measure.profile.time_interleaved`); its speedup is the ratio of median latencies with a
paired-bootstrap interval (`trtopt.measure.profile.speedup_interval`), so the speedup is measured, not
estimated from MACs or parameters.

The search steps up, s = step, 2·step, ... ≤ ``max_strength``, until a measured speedup reaches
target × (1 − tolerance). If that step overshoots target × (1 + tolerance), the strength is bisected
between it and the step before (``bisect_steps`` times) and stops at the first speedup inside the window.

A missed target is not an error: the result holds every step and the one closest to the target
(smallest |log(speedup / target)|) with ``reached=False``; the caller decides. The CLI (``trtopt prune``
and ``trtopt factorize`` with ``--target-speedup``) writes that closest model anyway, prints one warning
line naming the best measured speedup and exits with status 1.

This module composes stages (compress → export → measure), so it sits above them, beside the pipeline.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trtopt._config import check_int, check_number
from trtopt.compress.config import LowRankConfig, PruneConfig
from trtopt.errors import TrtoptError
from trtopt.files import temp_dir


@dataclass(frozen=True)
class SpeedupSearchConfig:
    """What :func:`search_speedup` looks for, and how it times.

    Attributes:
        target_speedup: requested speedup of the compressed ONNX over the uncompressed ONNX (×, > 1).
        tolerance: accept a measured speedup within target × (1 ± tolerance), in (0, 1).
        batch_size: batch timed.
        threads: ONNX Runtime intra-op threads for both models (None: ONNX Runtime's default).
        strength_step: strength increment per step (the first step is ``strength_step``), in (0, 1).
        max_strength: the strongest setting tried, in (0, 1).
        bisect_steps: after overshooting, this many bisection steps between the last two strengths.
        warmup_iterations / iterations: untimed and timed calls per model and step (interleaved).
    """

    target_speedup: float = 1.5
    tolerance: float = 0.1
    batch_size: int = 1
    threads: int | None = 2
    strength_step: float = 0.1
    max_strength: float = 0.9
    bisect_steps: int = 3
    warmup_iterations: int = 5
    iterations: int = 40

    def __post_init__(self) -> None:
        check_number("target_speedup", self.target_speedup, 1, low_open=True, fix="ask for e.g. 1.5 (× faster)")
        check_number("tolerance", self.tolerance, 0, 1, low_open=True, high_open=True, fix="use e.g. 0.1 (within 10 %)")
        check_number("strength_step", self.strength_step, 0, 1, low_open=True, high_open=True, fix="use e.g. 0.1")
        check_number("max_strength", self.max_strength, 0, 1, low_open=True, high_open=True, fix="use e.g. 0.9")
        check_int("batch_size", self.batch_size, fix="use e.g. 1")

    @property
    def window(self) -> tuple[float, float]:
        """(lowest, highest) accepted speedup: target × (1 ∓ tolerance)."""
        return self.target_speedup * (1 - self.tolerance), self.target_speedup * (1 + self.tolerance)

@dataclass(frozen=True)
class SpeedupStep:
    """One candidate of the search, measured.

    Attributes:
        strength: the compression strength tried (pruning: channel ratio; low-rank: 1 − kept energy).
        speedup: median latency of the uncompressed ONNX / median latency of this candidate's (×).
        speedup_ci_low / speedup_ci_high: the paired-bootstrap interval of that ratio.
        latency_ms_p50 / baseline_latency_ms_p50: the two medians, milliseconds.
        compression: what the compression did at this strength. Pruning: ``ratio``, ``channel_ratio``,
            ``macs`` (per sample), ``macs_reduction`` (×), ``parameters``, ``pruning_rate_percent``.
            Low-rank: ``energy`` (kept), ``parameters``, ``parameter_reduction`` (fraction),
            ``factorized_layers``.
    """

    strength: float
    speedup: float
    speedup_ci_low: float
    speedup_ci_high: float
    latency_ms_p50: float
    baseline_latency_ms_p50: float
    compression: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"strength": self.strength, **self.compression, "speedup": self.speedup,
                "speedup_ci_low": self.speedup_ci_low, "speedup_ci_high": self.speedup_ci_high,
                "latency_ms_p50": self.latency_ms_p50, "baseline_latency_ms_p50": self.baseline_latency_ms_p50}

@dataclass
class SpeedupSearchResult:
    """What :func:`search_speedup` returns.

    Attributes:
        reached: the chosen step's measured speedup is inside target × (1 ± tolerance).
        chosen: index in ``steps`` of the step closest to the target (the one kept).
        steps: every step, in the order measured.
        module: the chosen compressed ``nn.Module`` (a copy; the input model is never modified).
        result: the chosen step's stage record: a `trtopt.compress.prune.PruneResult` or a
            `trtopt.compress.lowrank.LowRankResult` (each has ``to_dict()``).
        knob: the setting that ``strength`` maps to, a key of every step's ``compression``: "ratio"
            (pruning) or "energy" (low-rank).
        config: the search settings.
    """

    reached: bool
    chosen: int
    steps: list[SpeedupStep]
    module: Any
    result: Any
    knob: str
    config: SpeedupSearchConfig

    @property
    def chosen_step(self) -> SpeedupStep:
        return self.steps[self.chosen]

    @property
    def fastest_step(self) -> SpeedupStep:
        """The step with the highest measured speedup (the chosen one unless the search overshot)."""
        return max(self.steps, key=lambda s: s.speedup)

    def to_dict(self) -> dict[str, Any]:
        """The search as JSON-ready data; the chosen stage record is ``result.to_dict()``, kept apart."""
        return {"reached": self.reached, "config": dataclasses.asdict(self.config), "knob": self.knob,
                "chosen": self.chosen, "chosen_strength": self.chosen_step.strength,
                "steps": [dict(s.to_dict(), chosen=i == self.chosen) for i, s in enumerate(self.steps)]}

@dataclass(frozen=True)
class _Compression:
    """One compression seen by the search: a strength → (compressed copy, stage record), and its summary."""

    knob: str
    apply: Callable[[float], tuple[Any, Any]]
    describe: Callable[[Any], dict[str, Any]]

def search_speedup(loaded: Any, compression: PruneConfig | LowRankConfig,
                   config: SpeedupSearchConfig = SpeedupSearchConfig(), feed: Mapping[str, np.ndarray] | None = None,
                   on_step: Callable[[SpeedupStep], None] | None = None) -> SpeedupSearchResult:
    """Compress ``loaded`` at increasing strengths until its ONNX is measured ``config.target_speedup`` × faster.

    Args:
        loaded: a `trtopt.models.spec.LoadedModel` (not modified; every step compresses a copy).
        compression: structured `PruneConfig` (its ``ratio`` is the strength searched) or energy
            `LowRankConfig` (its ``energy`` is 1 − the strength searched); the other fields hold.
        config: the target, search and timing settings.
        feed: inputs (name → array, samples on axis 0) for tracing, export and timing; default: 8
            seeded random samples of the model's input specs. The first 2 samples are the example inputs
            of the compression, the first ``config.batch_size`` (repeated if fewer) the timed batch.
        on_step: called with each step as it is measured (progress display).

    Returns:
        A :class:`SpeedupSearchResult`: every step, the one closest to the target and its model, and
        whether the target was reached (a missed target is not an error; see the module docstring).

    Raises:
        TrtoptError: pruning other than "structured" or a low-rank rule other than "energy" (sparse
            weights do not speed up dense kernels; the search sets the energy itself); errors of the
            compression, export or timing.
    """
    import torch

    from trtopt.data import random_feed, take_batch
    from trtopt.export import ExportConfig, export_onnx
    from trtopt.measure.bench import onnx_candidate
    from trtopt.measure.profile import TimingConfig, speedup_interval, time_interleaved

    feed = feed if feed is not None else random_feed(loaded.inputs, max(8, config.batch_size), seed=0)
    example = tuple(torch.from_numpy(np.ascontiguousarray(feed[s.name][:2])) for s in loaded.inputs)
    method = _compression(loaded, compression, example)
    batch = take_batch(feed, config.batch_size)
    timing = TimingConfig(warmup_iterations=config.warmup_iterations, iterations=config.iterations)
    export_config = ExportConfig(check_parity=False)  # speed only; the caller checks parity of what it keeps
    low, high = config.window
    steps: list[SpeedupStep] = []
    closest: tuple[Any, Any] | None = None

    def distance(step: SpeedupStep) -> float:
        return abs(math.log(step.speedup / config.target_speedup))

    with temp_dir("speedup") as work, \
            onnx_candidate(export_onnx(loaded, Path(work) / "baseline.onnx", export_config, feed=feed),
                           name="baseline", threads=config.threads) as baseline:

        def measure(strength: float) -> float:
            nonlocal closest
            strength = round(strength, 4)
            module, record = method.apply(strength)
            variant = dataclasses.replace(loaded, module=module)
            path = Path(work) / f"candidate_{len(steps)}.onnx"
            with onnx_candidate(export_onnx(variant, path, export_config, feed=feed), name="candidate",
                                threads=config.threads) as candidate:
                samples = time_interleaved({"baseline": baseline.runner, "candidate": candidate.runner}, batch, timing)
            speed = speedup_interval(samples["baseline"], samples["candidate"], timing)
            step = SpeedupStep(strength, speed["speedup"], speed["speedup_ci_low"], speed["speedup_ci_high"],
                               float(np.median(samples["candidate"])), float(np.median(samples["baseline"])),
                               method.describe(record))
            if not steps or distance(step) < min(distance(s) for s in steps):
                closest = (module, record)  # keep one model in memory, not one per step
            steps.append(step)
            if on_step:
                on_step(step)
            return step.speedup

        _step_up_then_bisect(measure, config, low, high)
    chosen = min(range(len(steps)), key=lambda i: distance(steps[i]))
    module, record = closest
    return SpeedupSearchResult(low <= steps[chosen].speedup <= high, chosen, steps, module, record, method.knob, config)

def _step_up_then_bisect(measure: Callable[[float], float], config: SpeedupSearchConfig, low: float, high: float) -> None:
    """Measure strengths step, 2·step, ... until one reaches ``low``; bisect if it overshoots ``high``."""
    below, k, overshoot = 0.0, 1, None
    while k * config.strength_step <= config.max_strength + 1e-9:
        strength = k * config.strength_step
        speedup = measure(strength)
        if low <= speedup <= high:
            return
        if speedup > high:
            overshoot = strength
            break
        below, k = strength, k + 1
    if overshoot is None:
        return
    lo, hi = below, overshoot
    for _ in range(config.bisect_steps):
        mid = (lo + hi) / 2
        speedup = measure(mid)
        if low <= speedup <= high:
            return
        lo, hi = (mid, hi) if speedup < low else (lo, mid)

def _compression(loaded: Any, config: PruneConfig | LowRankConfig, example: tuple[Any, ...]) -> _Compression:
    """The strength ↔ config mapping of each searchable compression."""
    if isinstance(config, PruneConfig):
        return _pruning(loaded, config, example)
    if isinstance(config, LowRankConfig):
        return _low_rank(loaded, config, example)
    raise TrtoptError(f"a speedup target cannot search a {type(config).__name__}",
                      "give a structured PruneConfig or an energy LowRankConfig")

def _pruning(loaded: Any, config: PruneConfig, example: tuple[Any, ...]) -> _Compression:
    from trtopt.compress.prune import prune

    if config.method != "structured":
        raise TrtoptError(f"a speedup target needs structured pruning, not {config.method!r}",
                          "use --method structured (sparse weights do not speed up dense ONNX Runtime kernels)")

    def apply(strength: float) -> tuple[Any, Any]:
        result = prune(loaded.module, example, dataclasses.replace(config, ratio=strength))
        return result.module, result

    def describe(result: Any) -> dict[str, Any]:
        return {"ratio": result.config.ratio, "channel_ratio": result.channel_ratio, "macs": result.macs_after,
                "macs_reduction": result.macs_reduction, "parameters": result.parameters_after,
                "pruning_rate_percent": result.pruning_rate_percent}

    return _Compression("ratio", apply, describe)

def _low_rank(loaded: Any, config: LowRankConfig, example: tuple[Any, ...]) -> _Compression:
    import copy

    from trtopt.compress.lowrank import factorize_

    if config.method != "energy":
        raise TrtoptError(f"a speedup target chooses the kept energy itself, not ranks by {config.method!r}",
                          "drop --param-budget / --rank (or --energy) when giving --target-speedup")

    def apply(strength: float) -> tuple[Any, Any]:
        model, result = factorize_(copy.deepcopy(loaded.module), dataclasses.replace(config, energy=round(1.0 - strength, 4)),
                                   example_inputs=example)
        return model.eval(), result

    def describe(result: Any) -> dict[str, Any]:
        return {"energy": result.config.energy, "parameters": result.parameters_after,
                "parameter_reduction": result.parameter_reduction,
                "factorized_layers": sum(1 for la in result.layers if la.skipped is None)}

    return _Compression("energy", apply, describe)
