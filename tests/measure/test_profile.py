"""Tests for trtopt.measure.profile: statistics, interleaved timing, and bootstrap speedup intervals."""

from __future__ import annotations

import time

import numpy as np
import pytest

from trtopt.errors import TrtoptError
from trtopt.measure import profile
from trtopt.measure.profile import TimingConfig, compare_latency, latency_stats, speedup_interval, time_interleaved


class RecordingRunner:
    """A fake runner that logs its name (and the feed it got) to shared lists and returns no outputs."""

    def __init__(self, name, log, feeds=None, sleep_s=0.0):
        self.name = name
        self.log = log
        self.feeds = feeds
        self.sleep_s = sleep_s

    def infer(self, feed):
        self.log.append(self.name)
        if self.feeds is not None:
            self.feeds.append((self.name, feed))
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return {}


FEED = {"x": np.zeros((1, 3), dtype=np.float32)}


def test_timing_config_defaults_and_to_dict():
    config = TimingConfig()
    assert config.to_dict() == {
        "warmup_iterations": 10, "iterations": 100, "duration_s": None, "min_iterations": 10,
        "bootstrap_samples": 2000, "confidence": 0.95, "seed": 0,
    }


@pytest.mark.parametrize("field, value", [
    ("warmup_iterations", -1), ("iterations", 0), ("min_iterations", 0), ("bootstrap_samples", 0),
    ("confidence", 0.0), ("confidence", 1.0), ("duration_s", 0.0), ("duration_s", -1.0),
    ("iterations", 2.5), ("iterations", True), ("seed", -1),
])
def test_timing_config_validation_names_the_field(field, value):
    with pytest.raises(TrtoptError, match=field):
        TimingConfig(**{field: value})


def test_latency_stats_on_known_samples():
    samples = list(range(1, 101))
    stats = latency_stats(samples, batch_size=8)
    assert "samples_ms" not in stats
    assert stats["iterations"] == 100
    assert stats["batch_size"] == 8
    assert stats["latency_ms_min"] == 1.0
    assert stats["latency_ms_max"] == 100.0
    assert stats["latency_ms_mean"] == pytest.approx(50.5)
    assert stats["latency_ms_p50"] == pytest.approx(50.5)
    assert stats["latency_ms_p90"] == pytest.approx(90.1)
    assert stats["latency_ms_p95"] == pytest.approx(95.05)
    assert stats["latency_ms_p99"] == pytest.approx(99.01)
    assert stats["latency_ms_std"] == pytest.approx(np.std(samples, ddof=1))
    assert stats["cov_percent"] == pytest.approx(np.std(samples, ddof=1) / 50.5 * 100)
    assert stats["throughput_samples_per_s"] == pytest.approx(8 * 1000 / 50.5)  # from the median, 50.5


def test_latency_stats_throughput_formula_and_single_sample():
    stats = latency_stats([4.0], batch_size=32)
    assert stats["throughput_samples_per_s"] == pytest.approx(8000.0)
    assert stats["latency_ms_std"] == 0.0
    assert stats["cov_percent"] == 0.0


@pytest.mark.parametrize("samples, batch_size, message", [
    ([], 1, "zero timed calls"), ([1.0, float("nan")], 1, "finite"), ([-1.0], 1, "non-negative"),
    ([1.0], 0, "batch_size"),
])
def test_latency_stats_rejects_bad_input(samples, batch_size, message):
    with pytest.raises(TrtoptError, match=message):
        latency_stats(samples, batch_size)


def test_time_interleaved_alternates_and_rotates():
    log = []
    runners = {name: RecordingRunner(name, log) for name in "abc"}
    samples = time_interleaved(runners, FEED, TimingConfig(warmup_iterations=1, iterations=3))
    warmup, timed = log[:3], log[3:]
    assert warmup == ["a", "b", "c"]
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {name: len(values) for name, values in samples.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(value >= 0 for values in samples.values() for value in values)


def test_time_interleaved_reports_progress():
    calls = []
    runners = {"a": RecordingRunner("a", [])}
    time_interleaved(runners, FEED, TimingConfig(warmup_iterations=0, iterations=4),
                     on_progress=lambda *call: calls.append(call), label="timing batch 2")
    assert calls == [("timing batch 2", 1, 4), ("timing batch 2", 2, 4), ("timing batch 2", 3, 4), ("timing batch 2", 4, 4)]


def test_time_interleaved_duration_mode_stops():
    log, calls = [], []
    runners = {name: RecordingRunner(name, log, sleep_s=0.001) for name in "ab"}
    config = TimingConfig(warmup_iterations=0, duration_s=0.01, min_iterations=2)
    started = time.perf_counter()
    samples = time_interleaved(runners, FEED, config,
                               on_progress=lambda label, done, total: calls.append((done, total)))
    elapsed = time.perf_counter() - started
    assert 0.02 <= elapsed < 1.0
    assert len(samples["a"]) == len(samples["b"]) >= 2
    assert len(samples["a"]) < 20  # about 10 rounds of 2 ms fit in the 20 ms budget
    assert all(total == -1 for _, total in calls)


def test_time_interleaved_duration_mode_honours_min_iterations():
    runners = {"a": RecordingRunner("a", [])}
    config = TimingConfig(warmup_iterations=0, duration_s=1e-9, min_iterations=5)
    assert len(time_interleaved(runners, FEED, config)["a"]) == 5


def test_time_interleaved_per_runner_feed():
    feeds = []
    runners = {name: RecordingRunner(name, [], feeds) for name in ("fp32", "int8")}
    per_runner = {"fp32": {"x": np.zeros(2, np.float32)}, "int8": {"input": np.ones(2, np.int8)}}
    time_interleaved(runners, per_runner, TimingConfig(warmup_iterations=1, iterations=2))
    assert len(feeds) == 6
    for name, feed in feeds:
        assert list(feed) == list(per_runner[name])


def test_time_interleaved_shared_feed_even_when_an_input_is_named_like_the_runner():
    feeds = []
    runners = {"x": RecordingRunner("x", [], feeds)}
    time_interleaved(runners, FEED, TimingConfig(warmup_iterations=0, iterations=1))
    assert list(feeds[0][1]) == ["x"]


def test_time_interleaved_rejects_per_runner_feed_for_other_names():
    runners = {name: RecordingRunner(name, []) for name in "ab"}
    with pytest.raises(TrtoptError, match="runner names"):
        time_interleaved(runners, {"a": FEED, "c": FEED}, TimingConfig(iterations=1))


def test_time_interleaved_rejects_no_runners():
    with pytest.raises(TrtoptError, match="no runners"):
        time_interleaved({}, FEED, TimingConfig())


def _lognormal_pair(seed, n=200, ratio=2.0, sigma=0.1, drift=0.0):
    """Baseline and candidate latencies (ms) with a true median ratio, optionally sharing a round drift."""
    rng = np.random.default_rng(seed)
    shared = np.exp(drift * rng.standard_normal(n))
    baseline = ratio * shared * np.exp(sigma * rng.standard_normal(n))
    candidate = shared * np.exp(sigma * rng.standard_normal(n))
    return baseline, candidate


def test_speedup_interval_contains_true_ratio_and_is_narrow():
    baseline, candidate = _lognormal_pair(seed=1)
    result = speedup_interval(baseline, candidate, TimingConfig(bootstrap_samples=2000))
    assert result["method"] == "paired bootstrap of the median ratio"
    assert result["confidence"] == 0.95
    assert result["bootstrap_samples"] == 2000
    assert result["speedup"] == pytest.approx(np.median(baseline) / np.median(candidate))
    assert result["speedup_ci_low"] < 2.0 < result["speedup_ci_high"]
    assert result["speedup_ci_high"] - result["speedup_ci_low"] < 0.15


def test_speedup_interval_pairing_cancels_shared_drift():
    baseline, candidate = _lognormal_pair(seed=2, sigma=0.02, drift=0.3)
    config = TimingConfig(bootstrap_samples=1000)
    paired = speedup_interval(baseline, candidate, config)
    independent = speedup_interval(baseline, candidate[:-1], config)
    assert independent["method"] == "independent bootstrap of the median ratio"
    paired_width = paired["speedup_ci_high"] - paired["speedup_ci_low"]
    independent_width = independent["speedup_ci_high"] - independent["speedup_ci_low"]
    assert paired_width < independent_width / 3
    assert paired["speedup_ci_low"] < 2.0 < paired["speedup_ci_high"]


def test_speedup_interval_is_deterministic_per_seed():
    baseline, candidate = _lognormal_pair(seed=3, n=50)
    config = TimingConfig(bootstrap_samples=500, seed=7)
    assert speedup_interval(baseline, candidate, config) == speedup_interval(baseline, candidate, config)
    other = speedup_interval(baseline, candidate, TimingConfig(bootstrap_samples=500, seed=8))
    assert other["speedup_ci_low"] != speedup_interval(baseline, candidate, config)["speedup_ci_low"]


def test_speedup_interval_chunking_does_not_change_the_result(monkeypatch):
    baseline, candidate = _lognormal_pair(seed=4, n=40)
    config = TimingConfig(bootstrap_samples=300)
    whole = speedup_interval(baseline, candidate, config)
    monkeypatch.setattr(profile, "_BOOTSTRAP_CHUNK_ELEMENTS", 40 * 7)
    assert speedup_interval(baseline, candidate, config) == whole


@pytest.mark.parametrize("baseline, candidate", [([], [1.0]), ([1.0], []), ([0.0, 0.0], [1.0, 1.0])])
def test_speedup_interval_rejects_empty_or_zero(baseline, candidate):
    with pytest.raises(TrtoptError):
        speedup_interval(baseline, candidate, TimingConfig())


def test_slow_runner_measures_as_slower():
    runners = {"slow": RecordingRunner("slow", [], sleep_s=0.002), "fast": RecordingRunner("fast", [])}
    config = TimingConfig(warmup_iterations=2, iterations=25, bootstrap_samples=500)
    samples = time_interleaved(runners, FEED, config)
    result = compare_latency(samples, baseline="slow", batch_size=1, config=config)
    speedup = result["candidates"]["fast"]["speedup_vs_baseline"]
    assert speedup["speedup"] > 5
    assert speedup["speedup_ci_low"] > 1
    assert result["candidates"]["slow"]["latency_ms_p50"] >= 2.0


def test_compare_latency_structure():
    samples = {"fp32": [4.0, 4.2, 3.9, 4.1], "int8": [1.0, 1.1, 0.9, 1.05]}
    config = TimingConfig(bootstrap_samples=200)
    result = compare_latency(samples, baseline="fp32", batch_size=2, config=config)
    assert result["baseline"] == "fp32"
    assert result["batch_size"] == 2
    assert result["timing"] == config.to_dict()
    assert set(result["candidates"]) == {"fp32", "int8"}
    assert "speedup_vs_baseline" not in result["candidates"]["fp32"]
    assert result["candidates"]["fp32"]["latency_ms_p50"] == pytest.approx(4.05)
    assert result["candidates"]["int8"]["speedup_vs_baseline"]["speedup"] == pytest.approx(4.05 / 1.025)


def test_compare_latency_unknown_baseline():
    with pytest.raises(TrtoptError, match="'torch'"):
        compare_latency({"fp32": [1.0]}, baseline="torch", batch_size=1, config=TimingConfig())


def test_throughput_comes_from_the_median_on_a_heavy_tail():
    stats = latency_stats([1.0] * 99 + [500.0], batch_size=4)  # one stalled call in 100
    assert stats["throughput_samples_per_s"] == pytest.approx(4000.0)  # 4 samples / 1 ms median, not the mean


def test_quality_flags_name_each_problem():
    from trtopt.measure.profile import quality_flags

    calm = latency_stats([1.0, 1.01, 0.99] * 40, batch_size=1)
    assert quality_flags(calm, load_average=0.5, cpu_count=2) == []
    stormy = latency_stats([0.66] * 95 + [219.0] * 5, batch_size=1)
    flags = {f["flag"]: f["message"] for f in quality_flags(stormy, load_average=7.9, cpu_count=2)}
    assert set(flags) == {"high_cov", "heavy_tail", "busy_machine"}
    assert "load average 7.9 > 2 CPUs" in flags["busy_machine"] and "p99/p50" in flags["heavy_tail"]
    few = quality_flags(latency_stats([1.0] * 5, batch_size=1))
    assert [f["flag"] for f in few] == ["few_iterations"]
