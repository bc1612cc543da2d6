"""Timing harness and latency statistics, independent of the execution backend.

A *runner* is any object with ``infer(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]`` (an ONNX
Runtime session wrapper, a TensorRT engine wrapper, an eager PyTorch model wrapper). This module times
runners and turns per-call latencies into statistics; it never imports a backend.

Why it is built this way:

- Candidates are timed *interleaved* (A B C A B C ...) in one process, so slow drift (thermal throttling,
  clock boosts, a noisy neighbour) hits every candidate equally instead of whichever ran last; the
  starting candidate rotates each round so that none always runs first, right after the gap between
  rounds (progress display, cold caches).
- Each call is timed with :func:`time.perf_counter_ns` and reported in milliseconds. For GPU runners the
  runner's ``infer`` must synchronize before returning (it returns host arrays), so wall time is the time
  to a usable result.
- Speedups are medians' ratios with a bootstrap confidence interval. Samples of one round were taken
  under the same conditions, so the bootstrap resamples *rounds* (the same indices on both sides), which
  keeps the shared drift out of the interval.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trtopt._config import check_int, check_number
from trtopt.backends.base import Runner
from trtopt.errors import TrtoptError
from trtopt.progress import ProgressCallback

#: Percentiles reported by :func:`latency_stats`, as (key, percent) pairs.
_LATENCY_PERCENTILES = (
    ("latency_ms_p50", 50.0),
    ("latency_ms_p90", 90.0),
    ("latency_ms_p95", 95.0),
    ("latency_ms_p99", 99.0),
)

#: Upper bound on the number of resampled values held at once by :func:`speedup_interval` (~32 MiB of
#: int64 indices), so long runs with many bootstrap samples do not allocate gigabytes.
_BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class TimingConfig:
    """How to time candidates and how to summarize the timings.

    Attributes:
        warmup_iterations: untimed calls per runner before timing (lazy init, autotuning, caches).
        iterations: timed calls per runner when ``duration_s`` is not set.
        duration_s: if set, time for about this many seconds per runner (the timed phase runs for
            ``duration_s * number of runners`` seconds in total) instead of a fixed count.
        min_iterations: in duration mode, the fewest timed calls per runner, however long they take.
        bootstrap_samples: resamples drawn for speedup confidence intervals.
        confidence: two-sided confidence level of those intervals, strictly between 0 and 1.
        seed: seed of the bootstrap's random generator, so intervals are reproducible.
    """

    warmup_iterations: int = 10
    iterations: int = 100
    duration_s: float | None = None
    min_iterations: int = 10
    bootstrap_samples: int = 2000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("warmup_iterations", self.warmup_iterations, minimum=0)
        check_int("iterations", self.iterations)
        check_int("min_iterations", self.min_iterations)
        check_int("bootstrap_samples", self.bootstrap_samples)
        check_int("seed", self.seed, minimum=0)
        check_number("duration_s", self.duration_s, 0, low_open=True, optional=True,
                     fix="set duration_s to e.g. 5.0 seconds, or leave it unset")
        check_number("confidence", self.confidence, 0, 1, low_open=True, high_open=True,
                     fix="use e.g. 0.95 for a 95 % interval")

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-ready dict (field name -> value)."""
        return dataclasses.asdict(self)


def latency_stats(samples_ms: Sequence[float], batch_size: int) -> dict[str, Any]:
    """Summarize per-call latencies of one candidate.

    Args:
        samples_ms: one latency per timed call, in milliseconds (each call processes ``batch_size``
            samples).
        batch_size: samples per call, used for throughput.

    Returns:
        ``iterations``, ``batch_size``, ``latency_ms_{min,mean,p50,p90,p95,p99,max,std}`` (p50 is the
        median; percentiles use linear interpolation; std is the sample standard deviation, 0 for one
        call), ``cov_percent`` (std / mean * 100, the run-to-run noise) and
        ``throughput_samples_per_s`` (batch_size * 1000 / median latency in ms: from the median, like the
        speedup, so the two agree on heavy-tailed runs). Both ratios are None when the mean (median) latency
        is 0 (a clock too coarse to see the call). The raw samples are not included;
        keep them beside the statistics if needed.

    Raises:
        TrtoptError: if there are no samples, a sample is negative or not finite, or batch_size < 1.
    """
    values = np.asarray(samples_ms, dtype=np.float64).ravel()
    if values.size == 0:
        raise TrtoptError("cannot compute latency statistics from zero timed calls",
                          "time at least one iteration (TimingConfig.iterations >= 1)")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise TrtoptError("latency samples must be finite and non-negative milliseconds",
                          "pass the per-call times measured by time_interleaved")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise TrtoptError(f"batch_size must be an integer >= 1, got {batch_size!r}",
                          "pass the number of samples each timed call processes")
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    stats: dict[str, Any] = {
        "iterations": int(values.size),
        "batch_size": batch_size,
        "latency_ms_min": float(values.min()),
        "latency_ms_mean": mean,
    }
    percentiles = np.percentile(values, [percent for _, percent in _LATENCY_PERCENTILES])
    stats.update({key: float(value)
                  for (key, _), value in zip(_LATENCY_PERCENTILES, percentiles, strict=True)})
    stats.update({
        "latency_ms_max": float(values.max()),
        "latency_ms_std": std,
        "cov_percent": std / mean * 100.0 if mean > 0 else None,
    })
    p50 = stats["latency_ms_p50"]
    stats["throughput_samples_per_s"] = batch_size * 1000.0 / p50 if p50 > 0 else None
    return stats


#: Thresholds of :func:`quality_flags`. CPU runtimes are noisier than a GPU's compute time (trtexec warns
#: above 2.5 %, `trtopt.trt.timing.COV_WARNING_PERCENT`): on an idle 2-core machine ONNX Runtime runs at a
#: few percent, so 10 % marks a disturbed run, not ordinary jitter.
COV_FLAG_PERCENT = 10.0
TAIL_FLAG_RATIO = 3.0  # p99 / p50
MIN_ITERATIONS_FOR_P99 = 100  # below this, p99 interpolates between the few slowest calls


def quality_flags(stats: Mapping[str, Any], load_average: float | None = None,
                  cpu_count: int | None = None) -> list[dict[str, str]]:
    """Reasons to distrust one candidate's timing, as ``[{"flag": code, "message": text}]`` (empty: none).

    Args:
        stats: a :func:`latency_stats` result (``cov_percent``, ``latency_ms_p50``/``p99``, ``iterations``).
        load_average: the highest 1-minute load average seen while timing (``os.getloadavg``), or None.
        cpu_count: CPUs this process may run on; the load average is compared with it.

    Codes: ``high_cov`` (CoV above :data:`COV_FLAG_PERCENT`), ``heavy_tail`` (p99 / p50 above
    :data:`TAIL_FLAG_RATIO`), ``busy_machine`` (load average above the CPU count: other work competed for the
    cores), ``few_iterations`` (fewer than :data:`MIN_ITERATIONS_FOR_P99` calls: p99 is not resolved).
    """
    flags = []
    cov, p50, p99 = stats.get("cov_percent"), stats.get("latency_ms_p50"), stats.get("latency_ms_p99")
    if cov is not None and cov > COV_FLAG_PERCENT:
        flags.append({"flag": "high_cov", "message": f"CoV {cov:.0f} % > {COV_FLAG_PERCENT:.0f} %"})
    if p50 and p99 is not None and p99 / p50 > TAIL_FLAG_RATIO:
        flags.append({"flag": "heavy_tail", "message": f"p99/p50 {p99 / p50:.1f} > {TAIL_FLAG_RATIO:.0f}"})
    if load_average is not None and cpu_count and load_average > cpu_count:
        flags.append({"flag": "busy_machine",
                      "message": f"load average {load_average:.1f} > {cpu_count} CPUs during the run"})
    if stats.get("iterations", 0) < MIN_ITERATIONS_FOR_P99:
        flags.append({"flag": "few_iterations",
                      "message": f"{stats.get('iterations')} calls < {MIN_ITERATIONS_FOR_P99} (p99 unresolved)"})
    return flags


def load_average_1min() -> float | None:
    """The 1-minute load average (runnable + waiting processes), or None where the OS has none (Windows)."""
    import os

    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _feeds_per_runner(names: Sequence[str],
                      feed: Mapping[str, np.ndarray] | Mapping[str, Mapping[str, np.ndarray]],
                      ) -> dict[str, dict[str, np.ndarray]]:
    """Resolve ``feed`` to one input dict per runner name.

    ``feed`` is per runner when its keys are exactly the runner names and every value is itself a
    mapping (input name -> array); otherwise it is one feed shared by all runners. Dicts are built once
    here so that no copying happens inside the timed loop.
    """
    if set(feed) == set(names) and all(isinstance(value, Mapping) for value in feed.values()):
        return {name: dict(feed[name]) for name in names}
    if any(isinstance(value, Mapping) for value in feed.values()):
        raise TrtoptError(
            f"feed looks like one feed per runner but its keys {sorted(feed)} are not the runner names "
            f"{sorted(names)}",
            "give exactly one feed per runner, keyed by runner name, or one shared feed "
            "(input name -> array)")
    shared = dict(feed)
    return {name: shared for name in names}


def time_interleaved(runners: Mapping[str, Runner],
                     feed: Mapping[str, np.ndarray] | Mapping[str, Mapping[str, np.ndarray]],
                     config: TimingConfig,
                     on_progress: ProgressCallback | None = None, label: str = "timing") -> dict[str, list[float]]:
    """Time several runners against each other, interleaved, and return each call's latency.

    First every runner is warmed up with ``config.warmup_iterations`` untimed calls, in turn. Then the
    timed phase runs in rounds; a round calls every runner once, starting at runner ``r mod n`` in round
    ``r`` so that no runner is always first. Each call is timed alone with ``time.perf_counter_ns``.
    With ``config.duration_s`` unset there are ``config.iterations`` rounds; with it set, rounds continue
    until the timed phase has lasted ``duration_s * len(runners)`` seconds and at least
    ``config.min_iterations`` rounds are done.

    Args:
        runners: name -> runner (an object with ``infer(feed) -> outputs``); the order of the mapping is
            the order within a round.
        feed: either one feed (input name -> array) shared by all runners, or one feed per runner keyed
            by runner name (for candidates whose input names or dtypes differ).
        config: counts and duration.
        on_progress: called as ``(label, rounds_done, total_rounds)`` after each timed round, for
            progress display; ``total_rounds`` is -1 in duration mode, where it is not known up front.
        label: the progress label (`trtopt.measure.bench.bench` names the batch size).

    Returns:
        Runner name -> list of per-call latencies in milliseconds, in round order (index ``i`` of every
        list was timed in round ``i``, which :func:`speedup_interval` relies on for pairing).

    Raises:
        TrtoptError: if there are no runners or the feed does not fit them (the runner's check names the input).
    """
    names = list(runners)
    if not names:
        raise TrtoptError("no runners to time", "pass at least one name -> runner")
    feeds = _feeds_per_runner(names, feed)
    # Each feed checked once, before any call (Runner.check_feed): a runner passes a feed its own check
    # returned straight through, so the timed calls run the model only.
    feeds = {name: runners[name].check_feed(feeds[name]) if isinstance(runners[name], Runner) else feeds[name]
             for name in names}
    calls = [(name, runners[name].infer, feeds[name]) for name in names]
    for _warmup in range(config.warmup_iterations):
        for _name, infer, inputs in calls:
            infer(inputs)

    samples: dict[str, list[float]] = {name: [] for name in names}
    total_rounds = -1 if config.duration_s is not None else config.iterations
    budget_ns = None if config.duration_s is None else int(config.duration_s * len(names) * 1e9)
    started_ns = time.perf_counter_ns()
    round_index = 0
    while True:
        if budget_ns is None:
            if round_index >= config.iterations:
                break
        elif (round_index >= config.min_iterations
              and time.perf_counter_ns() - started_ns >= budget_ns):
            break
        start = round_index % len(calls)
        for name, infer, inputs in calls[start:] + calls[:start]:
            begin_ns = time.perf_counter_ns()
            infer(inputs)
            samples[name].append((time.perf_counter_ns() - begin_ns) / 1e6)
        round_index += 1
        if on_progress is not None:
            on_progress(label, round_index, total_rounds)
    return samples


def _bootstrap_median_ratios(baseline: np.ndarray, candidate: np.ndarray, paired: bool,
                             config: TimingConfig) -> np.ndarray:
    """``config.bootstrap_samples`` resampled values of median(baseline) / median(candidate).

    Paired: each resample draws round indices once and uses them on both sides. Independent: each side
    draws its own indices. Resamples are drawn in chunks of about ``_BOOTSTRAP_CHUNK_ELEMENTS`` values
    to vectorize without unbounded memory.
    """
    rng = np.random.default_rng(config.seed)
    per_resample = baseline.size if paired else baseline.size + candidate.size
    chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // per_resample)
    ratios = np.empty(config.bootstrap_samples, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        for first in range(0, config.bootstrap_samples, chunk):
            count = min(chunk, config.bootstrap_samples - first)
            baseline_index = rng.integers(0, baseline.size, size=(count, baseline.size))
            candidate_index = baseline_index if paired else rng.integers(
                0, candidate.size, size=(count, candidate.size))
            ratios[first:first + count] = (np.median(baseline[baseline_index], axis=1)
                                           / np.median(candidate[candidate_index], axis=1))
    return ratios


def speedup_interval(baseline_ms: Sequence[float], candidate_ms: Sequence[float],
                     config: TimingConfig, paired: bool | None = None) -> dict[str, Any]:
    """Speedup of a candidate over a baseline, with a bootstrap confidence interval.

    The speedup is ``median(baseline_ms) / median(candidate_ms)`` (unitless; above 1 means the candidate
    is faster). The interval is the percentile interval of ``config.bootstrap_samples`` bootstrap
    resamples at level ``config.confidence``, seeded by ``config.seed`` (same inputs, same interval).
    When both lists have the same length they are taken to be interleaved rounds (as returned by
    :func:`time_interleaved`) and resampled in pairs, so drift shared within a round cancels; otherwise
    each side is resampled independently. ``paired=False`` forces independent resampling (samples from
    two separate runs, e.g. a stored baseline and today's run, have no rounds in common).

    Args:
        baseline_ms: per-call latencies of the baseline, milliseconds.
        candidate_ms: per-call latencies of the candidate, milliseconds.
        config: bootstrap size, confidence level and seed.

    Returns:
        ``speedup``, ``speedup_ci_low``, ``speedup_ci_high``, ``confidence``, ``bootstrap_samples`` and
        ``method`` (which bootstrap was used).

    Raises:
        TrtoptError: if either list is empty or has a non-positive median.
    """
    baseline = np.asarray(baseline_ms, dtype=np.float64).ravel()
    candidate = np.asarray(candidate_ms, dtype=np.float64).ravel()
    for side, values in (("baseline", baseline), ("candidate", candidate)):
        if values.size == 0 or not np.all(np.isfinite(values)):
            raise TrtoptError(f"{side} latencies must be a non-empty list of finite milliseconds",
                              "time at least one iteration of each candidate")
        if np.median(values) <= 0:
            raise TrtoptError(f"{side} median latency is {np.median(values)} ms; a speedup needs it above 0",
                              "time a workload long enough for the clock to resolve")
    paired = baseline.size == candidate.size if paired is None else paired
    if paired and baseline.size != candidate.size:
        raise TrtoptError(f"paired latencies need equal counts, got {baseline.size} and {candidate.size}",
                          "pass samples from the same interleaved run, or paired=False")
    ratios = _bootstrap_median_ratios(baseline, candidate, paired, config)
    alpha = 1.0 - config.confidence
    low, high = np.quantile(ratios, [alpha / 2.0, 1.0 - alpha / 2.0])
    return {
        "speedup": float(np.median(baseline) / np.median(candidate)),
        "speedup_ci_low": float(low),
        "speedup_ci_high": float(high),
        "confidence": config.confidence,
        "bootstrap_samples": config.bootstrap_samples,
        "method": ("paired bootstrap of the median ratio" if paired
                   else "independent bootstrap of the median ratio"),
    }


def compare_latency(samples: Mapping[str, Sequence[float]], baseline: str, batch_size: int,
                    config: TimingConfig) -> dict[str, Any]:
    """Latency statistics of every candidate and each one's speedup over the baseline.

    Args:
        samples: candidate name -> per-call latencies in milliseconds (e.g. from :func:`time_interleaved`).
        baseline: name of the candidate the others are compared with.
        batch_size: samples per call, for throughput.
        config: bootstrap settings for the speedup intervals; also recorded in the result.

    Returns:
        ``{"baseline": name, "batch_size": n, "timing": config.to_dict(), "candidates": {name: stats}}``
        where ``stats`` is :func:`latency_stats` and, for every candidate but the baseline, also
        ``speedup_vs_baseline`` from :func:`speedup_interval`.

    Raises:
        TrtoptError: if ``baseline`` is not one of the candidates.
    """
    if baseline not in samples:
        raise TrtoptError(f"baseline '{baseline}' is not among the timed candidates {sorted(samples)}",
                          "name one of the timed candidates as the baseline")
    candidates: dict[str, dict[str, Any]] = {}
    for name, values in samples.items():
        stats = latency_stats(values, batch_size)
        if name != baseline:
            stats["speedup_vs_baseline"] = speedup_interval(samples[baseline], values, config)
        candidates[name] = stats
    return {"baseline": baseline, "batch_size": batch_size, "timing": config.to_dict(),
            "candidates": candidates}
