"""The report's plots, rendered from the JSON report (never the reverse).

PNG, matplotlib's Agg backend, written to ``plots/`` (and embedded in the HTML page as data URIs so the
file can be mailed or attached to a CI run on its own):

- ``tradeoff``: accuracy vs p50 latency at the largest batch size, marker area proportional to the
  deployable size, the Pareto front (no other variant is both faster and at least as accurate) drawn
  and its points ringed. Accuracy is the task accuracy with labelled data, else top-1 agreement with
  the baseline, else cosine similarity.
- ``latency``: the distribution of per-call latencies of every timed variant, one panel per batch size
  (box = quartiles, whiskers = 5th/95th percentiles, log scale).
- ``quant_error``: per-layer activation SQNR of the INT8 model on real inputs (graph order) and the
  largest weight error relative to max |w| per quantized weight.
- ``sensitivity``: score recovered per layer when that layer alone stays FP32 (when measured).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trtopt.files import atomic_output


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless; never opens a window
    import matplotlib.pyplot as plt

    return plt

def _save(fig: Any, path: Path) -> Path:
    with atomic_output(path, force=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path

_METRIC_KEYS = {"accuracy": ("accuracy", "accuracy (labels)"),
                "agreement": ("top1_agreement", "top-1 agreement with FP32"),
                "cosine": ("cosine", "cosine similarity to FP32")}

def accuracy_key(rows: Sequence[Mapping[str, Any]], metric: str = "auto") -> tuple[str, str]:
    """(row key, axis label) of the accuracy measure: the recipe's ``metric``, or with "auto" the first the
    report has of task accuracy, top-1 agreement, cosine."""
    if metric in _METRIC_KEYS:
        return _METRIC_KEYS[metric]
    for key, label in _METRIC_KEYS.values():
        if any(r.get(key) is not None for r in rows):
            return key, label
    return "", ""

def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated by another (lower latency x and higher-or-equal accuracy y, or
    equal latency and higher accuracy), sorted by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front

def render_plots(report: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the plots the report has data for into ``out_dir``; returns name → PNG path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path] = {}
    for name, draw in (("tradeoff", _tradeoff), ("latency", _latency), ("quant_error", _quant_error),
                       ("sensitivity", _sensitivity)):
        fig = draw(report)
        if fig is not None:
            plots[name] = _save(fig, out / f"{name}.png")
    return plots

def _tradeoff(report: Mapping[str, Any]) -> Any:
    rows = [r for r in report["rows"] if r["latency_ms_p50"] is not None]
    if not rows:
        return None
    largest = max(r["batch_size"] for r in rows)
    rows = [r for r in rows if r["batch_size"] == largest]
    key, label = accuracy_key(rows, report.get("recipe", {}).get("metric", "auto"))
    if not key:
        return None
    rows = [r for r in rows if r.get(key) is not None or r["variant"] == report["baseline"]]
    ys = [r.get(key) if r.get(key) is not None else 1.0 for r in rows]  # the baseline agrees with itself
    xs = [r["latency_ms_p50"] for r in rows]
    sizes = [r["size_bytes"] or 0 for r in rows]
    biggest = max(sizes) or 1
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(xs, ys, s=[60 + 900 * sz / biggest for sz in sizes], alpha=0.55, c=range(len(rows)), cmap="tab10",
               edgecolors="black")
    front = pareto_front(list(zip(xs, ys, strict=True)))
    ax.plot([xs[i] for i in front], [ys[i] for i in front], "--", color="crimson", label="Pareto front")
    ax.scatter([xs[i] for i in front], [ys[i] for i in front], s=30, facecolors="none", edgecolors="crimson")
    for x, y, r in zip(xs, ys, rows, strict=True):
        ax.annotate(f"{r['variant']}\n{(r['size_bytes'] or 0) / 1e6:.1f} MB", (x, y), textcoords="offset points",
                    xytext=(8, 6), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency at batch {largest} (ms, log scale)")
    ax.set_ylabel(label)
    ax.set_title("Accuracy vs latency (marker area ∝ size)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig

def _latency(report: Mapping[str, Any]) -> Any:
    per_batch = [b for b in report["latency"] if b.get("samples_ms")]
    if not per_batch:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(per_batch), figsize=(5.5 * len(per_batch), 3.8), squeeze=False)
    for ax, batch in zip(axes[0], per_batch, strict=True):
        names = list(batch["samples_ms"])
        ax.boxplot([batch["samples_ms"][n] for n in names], whis=(5, 95), showfliers=False, orientation="horizontal")
        ax.set_yticks(range(1, len(names) + 1), names, fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("latency per call (ms, log scale)")
        ax.set_title(f"batch {batch['batch_size']}: {len(batch['samples_ms'][names[0]])} calls each")
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle("Latency distributions (box: quartiles, whiskers: p5-p95)")
    fig.tight_layout()
    return fig

def _quant_error(report: Mapping[str, Any]) -> Any:
    int8 = report.get("int8") or {}
    acts, weights = int8.get("activation_sqnr") or [], int8.get("weight_error") or []
    if not acts and not weights:
        return None
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5))
    if acts:
        top.bar(range(len(acts)), [a["sqnr_db"] for a in acts], color="steelblue")
        top.set_ylabel("activation SQNR (dB)")
        top.set_title("INT8 vs FP32 per layer on real inputs (higher is better; graph order)")
        _sparse_ticks(top, [a["tensor"] for a in acts])
    if weights:
        bottom.bar(range(len(weights)), [w["rel_error_max"] for w in weights], color="darkorange")
        bottom.set_yscale("log")
        bottom.set_ylabel("max |w − q(w)| / max |w|")
        bottom.set_title("Weight quantization error per tensor")
        _sparse_ticks(bottom, [w["weight"] for w in weights])
    fig.tight_layout()
    return fig

def _sparse_ticks(ax: Any, labels: Sequence[str], most: int = 24) -> None:
    step = max(1, len(labels) // most)
    ax.set_xticks(range(0, len(labels), step), [labels[i][-28:] for i in range(0, len(labels), step)], rotation=75,
                  fontsize=6)

def _sensitivity(report: Mapping[str, Any]) -> Any:
    sens = report.get("sensitivity")
    if not sens or not sens.get("layers"):
        return None
    layers = sens["layers"][:30]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.25 * len(layers) + 1.5))
    ax.barh(range(len(layers)), [row["recovered"] for row in layers], color="seagreen")
    ax.set_yticks(range(len(layers)), [row["node"][-40:] for row in layers], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("score recovered when kept in FP32")
    ax.set_title(f"Per-layer INT8 sensitivity (FP32 {sens['fp32_score']:.4f}, INT8 {sens['int8_score']:.4f})")
    ax.grid(alpha=0.3, axis="x")
    return fig
