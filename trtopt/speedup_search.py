"""Compress until *measured* faster: the speedup search shared by pruning and low-rank factorization.

Each candidate is exported to ONNX and timed in ONNX Runtime interleaved with the uncompressed model's ONNX
(same inputs, same threads), so the speedup is measured, not estimated from MACs. This module composes
stages (compress → export → measure), so it sits above them, beside the pipeline.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trtopt.compress.config import LowRankConfig, PruneConfig

if TYPE_CHECKING:
    from trtopt.compress.prune import PruneResult
from trtopt.errors import TrtoptError
from trtopt.progress import StepCallback


@dataclass(frozen=True)
class SpeedupTargetConfig:
    """How :func:`prune_to_speedup` searches.

    Attributes:
        target_speedup: requested speedup of the pruned ONNX over the unpruned ONNX (×, > 1).
        tolerance: accept a measured speedup within target × (1 ± tolerance).
        batch_size: batch timed.
        threads: ONNX Runtime intra-op threads for both models.
        ratio_step: channel ratio increment per step (first step = ratio_step).
        max_ratio: the largest channel ratio tried.
        bisect_steps: after overshooting, this many bisection steps between the last two ratios.
        warmup_iterations / iterations: timing per step (interleaved, both models).
    """

    target_speedup: float = 1.5
    tolerance: float = 0.1
    batch_size: int = 1
    threads: int | None = 2
    ratio_step: float = 0.1
    max_ratio: float = 0.9
    bisect_steps: int = 3
    warmup_iterations: int = 5
    iterations: int = 40

    def __post_init__(self) -> None:
        if not (isinstance(self.target_speedup, (int, float)) and self.target_speedup > 1.0):
            raise TrtoptError(f"target speedup {self.target_speedup!r} is not above 1", "ask for e.g. 1.5 (× faster)")
        if not 0.0 < self.tolerance < 1.0:
            raise TrtoptError(f"speedup tolerance {self.tolerance!r} is outside (0, 1)", "use e.g. 0.1 (within 10 %)")
        if not 0.0 < self.ratio_step < 1.0 or not 0.0 < self.max_ratio < 1.0:
            raise TrtoptError("ratio_step and max_ratio must be in (0, 1)", "use e.g. ratio_step 0.1, max_ratio 0.9")

@dataclass
class SpeedupSearch:
    """Result of :func:`prune_to_speedup`.

    Attributes:
        reached: the chosen step's measured speedup is within the tolerance of the target.
        result: the chosen :class:`PruneResult` (closest to the target among the steps).
        steps: every step: ratio, MACs, parameters, measured speedup with its interval, latencies (ms).
        target: the search settings.
    """

    reached: bool
    result: PruneResult
    steps: list[dict[str, Any]]
    target: SpeedupTargetConfig

    def to_dict(self) -> dict[str, Any]:
        return {"reached": self.reached, "target": dataclasses.asdict(self.target), "steps": self.steps,
                "chosen_ratio": self.result.config.ratio, "result": self.result.to_dict()}

def prune_to_speedup(loaded: Any, config: PruneConfig, target: SpeedupTargetConfig,
                     on_step: StepCallback | None = None) -> SpeedupSearch:
    """Prune ``loaded`` structurally at increasing ratios until its ONNX reaches ``target.target_speedup``.

    Each step prunes the original model at one channel ratio (``config`` with ``ratio`` replaced),
    exports it to ONNX (in a temporary folder), and times it interleaved against the unpruned model's
    ONNX on ONNX Runtime CPU (same inputs, same threads, `trtopt.measure.profile.time_interleaved`), reporting
    the median speedup with its bootstrap interval. Ratios go up by ``ratio_step`` until the speedup
    reaches target × (1 − tolerance); if it overshoots target × (1 + tolerance), the ratio is bisected
    between the last two steps.

    Args:
        loaded: a `trtopt.models.spec.LoadedModel`.
        config: pruning settings (method must be "structured"; its ratio is ignored).
        target: the requested speedup and search/timing settings.
        on_step: called with one line per measured ratio as it completes (ratio, MACs reduction, speedup
            and its interval); the records themselves are in ``SpeedupSearch.steps``.

    Returns:
        A :class:`SpeedupSearch`: whether the target was reached, the chosen result and every step.
    """
    from trtopt.compress.prune import example_inputs_for, prune
    from trtopt.measure.bench import onnx_candidate
    from trtopt.export import ExportConfig
    from trtopt.data import random_feed, take_batch
    from trtopt.export import export_onnx
    from trtopt.measure.profile import TimingConfig, speedup_interval, time_interleaved

    if config.method != "structured":
        raise TrtoptError(f"a speedup target needs structured pruning, not {config.method!r}",
                          "use --method structured (sparse weights do not speed up dense ONNX Runtime kernels)")
    example = example_inputs_for(loaded)
    batch = take_batch(random_feed(loaded.inputs, max(8, target.batch_size), seed=0), target.batch_size)
    timing = TimingConfig(warmup_iterations=target.warmup_iterations, iterations=target.iterations)
    export_cfg = ExportConfig(check_parity=False)
    low, high = target.target_speedup * (1 - target.tolerance), target.target_speedup * (1 + target.tolerance)
    steps: list[dict[str, Any]] = []
    results: list[PruneResult] = []
    with tempfile.TemporaryDirectory(prefix="trtopt-prune-") as work:
        base = onnx_candidate(export_onnx(loaded, Path(work) / "baseline.onnx", export_cfg), name="baseline",
                              threads=target.threads)

        def measure(ratio: float) -> dict[str, Any]:
            result = prune(loaded.module, example, dataclasses.replace(config, ratio=round(ratio, 4)))
            path = Path(work) / f"pruned_{len(steps)}.onnx"
            cand = onnx_candidate(export_onnx(dataclasses.replace(loaded, module=result.module), path, export_cfg),
                                  name="pruned", threads=target.threads)
            samples = time_interleaved({"baseline": base.runner, "pruned": cand.runner}, batch, timing)
            speed = speedup_interval(samples["baseline"], samples["pruned"], timing)
            record = {"ratio": round(ratio, 4), "channel_ratio": result.channel_ratio, "macs": result.macs_after,
                      "macs_reduction": result.macs_reduction, "parameters": result.parameters_after,
                      "pruning_rate_percent": result.pruning_rate_percent, "speedup": speed["speedup"],
                      "speedup_ci_low": speed["speedup_ci_low"], "speedup_ci_high": speed["speedup_ci_high"],
                      "latency_ms_p50": float(np.median(samples["pruned"])),
                      "baseline_latency_ms_p50": float(np.median(samples["baseline"]))}
            steps.append(record)
            results.append(result)
            if on_step:
                on_step(f"ratio {record['ratio']:.3f}: MACs ÷{record['macs_reduction']:.2f}, speedup "
                        f"{record['speedup']:.2f}× [{record['speedup_ci_low']:.2f}, {record['speedup_ci_high']:.2f}]")
            return record

        below = 0.0
        ratio = target.ratio_step
        overshoot: float | None = None
        while ratio <= target.max_ratio + 1e-9:
            s = measure(ratio)["speedup"]
            if low <= s <= high:
                break
            if s > high:
                overshoot = ratio
                break
            below = ratio
            ratio += target.ratio_step
        if overshoot is not None:
            lo, hi = below, overshoot
            for _ in range(target.bisect_steps):
                mid = (lo + hi) / 2
                s = measure(mid)["speedup"]
                if low <= s <= high:
                    break
                lo, hi = (mid, hi) if s < low else (lo, mid)
    best = min(range(len(steps)), key=lambda i: abs(math.log(steps[i]["speedup"] / target.target_speedup)))
    for i, record in enumerate(steps):
        record["chosen"] = i == best
    return SpeedupSearch(low <= steps[best]["speedup"] <= high, results[best], steps, target)


def factorize_for_speedup(loaded: Any, target_speedup: float, config: LowRankConfig = LowRankConfig(),
                          energies: Sequence[float] = (0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5), feed: Any = None,
                          batch_size: int = 1, timing: Any = None, threads: int | None = None,
                          workdir: str | None = None, on_step: StepCallback | None = None) -> tuple[Any, dict[str, Any]]:
    """Rank choice from a *measured* latency target: the highest energy whose factorized model, exported to
    ONNX and timed in ONNX Runtime interleaved with the original's ONNX, is at least ``target_speedup``
    times faster (median ratio). Every candidate is timed in the same run, so the ratios are like for like.

    Args:
        loaded: the `LoadedModel` to factorize (not modified; each candidate factorizes a copy).
        target_speedup: required median speedup vs the original ONNX (e.g. 1.3).
        config: layer selection and conv scheme; ``method``/``energy`` are replaced by each level.
        energies: energy levels tried, any order (the highest meeting the target wins).
        feed: inputs for export and timing (default: seeded random inputs of the model's specs).
        batch_size: batch timed. timing: a `TimingConfig` (default 50 iterations). threads: ORT threads.
        workdir: folder for the ONNX files (default: a temporary folder, removed afterwards).
        on_step: progress callback.

    Returns:
        (factorized model, record): the chosen model (a copy of ``loaded.module``) and
        ``{"chosen_energy", "target_speedup", "candidates": [{"energy", "parameters", "speedup", ...}],
        "report": the chosen level's LowRankReport.to_dict()}``.

    Raises:
        TrtoptError: no level reaches the target (the message names the best measured speedup).
    """
    import copy
    import tempfile
    from dataclasses import replace
    from pathlib import Path

    from trtopt.compress.lowrank import LowRankReport, _as_torch, factorize
    from trtopt.measure.bench import bench, onnx_candidate
    from trtopt.export import ExportConfig
    from trtopt.backends.ort import OrtConfig
    from trtopt.data import random_feed
    from trtopt.export import export_onnx
    from trtopt.models.spec import LoadedModel
    from trtopt.measure.profile import TimingConfig

    step = on_step or (lambda _msg: None)
    if not target_speedup > 0:
        raise TrtoptError(f"target_speedup={target_speedup!r} must be > 0", "e.g. 1.3 for 30 % faster")
    feed = feed if feed is not None else random_feed(loaded.inputs, 8)
    example = tuple(_as_torch(feed[s.name][:1]) for s in loaded.inputs)
    models: dict[str, Any] = {}
    reports: dict[str, LowRankReport] = {}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        paths = {"original": export_onnx(loaded, Path(tmp) / "original.onnx", ExportConfig(), feed=feed).path}
        for energy in sorted(set(energies), reverse=True):
            step(f"factorizing at energy {energy}")
            model, report = factorize(copy.deepcopy(loaded.module), replace(config, method="energy", energy=energy),
                                      example_inputs=example)
            name = f"energy_{energy}"
            models[name], reports[name] = model, report
            variant = LoadedModel(model.eval(), name, loaded.inputs, loaded.output_names)
            paths[name] = export_onnx(variant, Path(tmp) / f"{name}.onnx", ExportConfig(), feed=feed).path
        step("timing all candidates interleaved")
        ort = OrtConfig(intra_op_threads=threads)
        cands = [onnx_candidate(p, n, ort) for n, p in paths.items()]
        try:
            timed = bench(cands, feed, (batch_size,), timing or TimingConfig(iterations=50))
        finally:
            for c in cands:
                c.runner.close()
    stats = timed["per_batch"][0]["candidates"]
    rows = [{"energy": float(n.split("_", 1)[1]), "parameters": reports[n].parameters_after,
             "latency_ms_p50": stats[n]["latency_ms_p50"], **stats[n]["speedup_vs_baseline"]} for n in models]
    record = {"target_speedup": target_speedup, "batch_size": batch_size, "candidates": rows,
              "original_latency_ms_p50": stats["original"]["latency_ms_p50"], "chosen_energy": None}
    meeting = [r for r in rows if r["speedup"] >= target_speedup]
    if not meeting:
        best = max(rows, key=lambda r: r["speedup"])
        raise TrtoptError(f"no energy level reaches a {target_speedup}× speedup (best: {best['speedup']:.2f}× at energy "
                          f"{best['energy']})", "lower the target, or try lower energies / other layers")
    chosen = max(meeting, key=lambda r: r["energy"])
    record["chosen_energy"] = chosen["energy"]
    record["report"] = reports[f"energy_{chosen['energy']}"].to_dict()
    return models[f"energy_{chosen['energy']}"], record
