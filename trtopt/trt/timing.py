"""trtexec-style timing statistics: latency distributions (min/mean/median/p90/p95/p99/max) of H2D, compute
and D2H, throughput, and trtexec's coefficient-of-variation warning. Pure Python, tested without a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from trtopt.errors import TrtoptError

COV_WARNING_PERCENT = 2.5  # trtexec warns when GPU compute time's coefficient of variation exceeds this

_STAT_POINTS = (("min", None), ("mean", None), ("median", 50.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0),
                ("max", None))

def distribution(samples_ms: Sequence[float]) -> dict[str, float]:
    """min / mean / median / p90 / p95 / p99 / max of millisecond samples (linear-interpolated percentiles)."""
    values = np.asarray(samples_ms, dtype=np.float64)
    if values.size == 0:
        raise TrtoptError("no timed iterations", "time at least one iteration")
    out = {}
    for key, pct in _STAT_POINTS:
        if key == "min":
            out[key] = float(values.min())
        elif key == "max":
            out[key] = float(values.max())
        elif key == "mean":
            out[key] = float(values.mean())
        else:
            out[key] = float(np.percentile(values, pct))
    return out

def trtexec_stats(h2d_ms: Sequence[float], compute_ms: Sequence[float], d2h_ms: Sequence[float], wall_s: float,
                  batch_size: int, transfers: bool, cuda_graph: bool) -> dict[str, Any]:
    """Statistics as trtexec reports them.

    ``latency`` is trtexec's host latency (H2D + GPU compute + D2H per iteration); ``throughput_qps`` is
    iterations / host wall time of the timed loop (``throughput_samples_per_s`` multiplies by the batch).
    A warning is added when the GPU compute time's coefficient of variation exceeds 2.5 % (trtexec's
    threshold: the numbers are unstable; lock clocks or use spin-wait).
    """
    compute = np.asarray(compute_ms, dtype=np.float64)
    h2d = np.asarray(h2d_ms, dtype=np.float64) if transfers else np.zeros_like(compute)
    d2h = np.asarray(d2h_ms, dtype=np.float64) if transfers else np.zeros_like(compute)
    if not (compute.size == h2d.size == d2h.size) or compute.size == 0:
        raise TrtoptError("H2D, compute and D2H need one sample each per iteration", "time at least one iteration")
    if wall_s <= 0:
        raise TrtoptError(f"wall time {wall_s} s is not positive", "time a longer run")
    n = int(compute.size)
    std = float(compute.std(ddof=1)) if n > 1 else 0.0
    cov = std / float(compute.mean()) * 100.0 if compute.mean() > 0 else 0.0
    result: dict[str, Any] = {
        "iterations": n, "batch_size": batch_size, "transfers_included": transfers, "cuda_graph": cuda_graph,
        "throughput_qps": n / wall_s, "throughput_samples_per_s": n * batch_size / wall_s,
        "latency_ms": distribution(h2d + compute + d2h), "h2d_ms": distribution(h2d),
        "compute_ms": distribution(compute), "d2h_ms": distribution(d2h),
        "compute_cov_percent": cov, "warnings": [],
    }
    if cov > COV_WARNING_PERCENT:
        result["warnings"].append(f"GPU compute time is unstable: coefficient of variation {cov:.1f} % > "
                                  f"{COV_WARNING_PERCENT} %; lock the GPU clocks or use spin-wait")
    return result
