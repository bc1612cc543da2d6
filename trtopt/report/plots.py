"""The report's plots, rendered from the JSON report (never the reverse).

PNG, matplotlib's Agg backend, written to ``plots/`` (and embedded in the HTML page as data URIs so the
file can be mailed or attached to a CI run on its own):

- ``tradeoff``: the headline metric (`trtopt.report.model.headline_metric`: task accuracy with labels,
  else the measure of the output's kind) vs p50 latency at the largest batch size, marker area
  proportional to the deployable size, the Pareto front (no other variant is both faster and at least as
  accurate) drawn; and vs size for every variant, untimed TensorRT layouts included. Labels are placed
  by adjustText so they do not overlap; the y-range is at least 2 points (0.01 for cosine) wide.
- ``latency``: the distribution of per-call latencies of every timed variant, one panel per batch size
  (box = quartiles, whiskers = 5th/95th percentiles, log scale).
- ``quant_error``: the layers with the lowest activation SQNR of the INT8 model on real inputs, and the
  weights and (separately) biases with the largest error relative to max |w|, labelled with the PyTorch
  module and the ONNX node name (which ``quantize --exclude`` accepts, as it does the module); a panel
  whose values are all alike is left out.
- ``sensitivity``: score recovered per layer when that layer alone stays FP32 (when measured).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trtopt.files import atomic_output
from trtopt.report.model import layer_label


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

def _metric_axis(ax: Any, values: Sequence[float], percent: bool) -> None:
    """A y-range that shows differences that matter, not noise: at least 2 points wide for a percentage
    (one of 359 images is 0.28 points) and 0.01 for cosine-like scores, capped at the scale's top."""
    low, high = min(values), max(values)
    cap = 100.0 if percent else 1.0
    span = max(high - low, 2.0 if percent else 0.01)
    # just above the top value (or the scale's top, so a marker at 100 % is drawn whole, with no tick past it)
    top = min(high + 0.15 * span, cap + 0.05 * span) if high <= cap else high + 0.15 * span
    ax.set_ylim(min(low - 0.15 * span, top - 1.3 * span), top)


def _label_points(ax: Any, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str]) -> None:
    """Labels beside their points, moved apart (adjustText) so none overlaps another, a point or the axes.

    Points that (nearly) coincide on the log-x / linear-y axes get one label listing them all: no placement
    can keep two labels of one point apart and both next to it.
    """
    from adjustText import adjust_text

    y_span = (max(ys) - min(ys)) or 1.0
    groups: list[tuple[float, float, list[str]]] = []
    for x, y, label in zip(xs, ys, labels, strict=True):
        for gx, gy, names in groups:
            if abs(math.log(x / gx)) < 0.04 and abs(y - gy) < 0.02 * y_span:
                names.append(label)
                break
        else:
            groups.append((x, y, [label]))
    texts = [ax.text(x, y, "\n".join(names), fontsize=8) for x, y, names in groups]
    adjust_text(texts, x=list(xs), y=list(ys), ax=ax, ensure_inside_axes=True, expand=(1.3, 1.6),
                arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6})


def _plain_log_ticks(axis: Any) -> None:
    """Log-axis ticks as plain numbers (0.5, 1, 2) instead of 10-power labels, minor labels only where few."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _tradeoff(report: Mapping[str, Any]) -> Any:
    """Accuracy vs p50 latency at the largest batch (timed variants; marker area ∝ size, Pareto front), and
    accuracy vs size for every variant, untimed TensorRT layouts included (hollow markers)."""
    from trtopt.report.markdown import format_size
    from trtopt.report.model import headline_metric

    key, label, percent = headline_metric(report)
    if not key:
        return None
    scale = 100.0 if percent else 1.0
    once = list({r["variant"]: r for r in report["rows"]}.values())
    sized = [r for r in once if r["size_bytes"] and (r.get(key) is not None or r["variant"] == report["baseline"])]
    timed = [r for r in report["rows"] if r["timed"] and (r.get(key) is not None or r["variant"] == report["baseline"])]
    largest = max((r["batch_size"] for r in timed), default=None)
    timed = [r for r in timed if r["batch_size"] == largest]
    if not sized and not timed:
        return None

    def y(r: Mapping[str, Any]) -> float:  # the baseline agrees with itself
        value = r.get(key)
        return (value if value is not None else (1.0 if key != "abs_error_p99" else 0.0)) * scale

    colours = {r["variant"]: f"C{i % 10}" for i, r in enumerate(once)}
    plt = _pyplot()
    panels = [p for p in (("latency", timed), ("size", sized)) if p[1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), squeeze=False)
    biggest = max(r["size_bytes"] or 0 for r in once) or 1
    for ax, (kind, rows) in zip(axes[0], panels, strict=True):
        ys = [y(r) for r in rows]
        if kind == "latency":
            xs = [r["latency_ms_p50"] for r in rows]
            ax.scatter(xs, ys, s=[60 + 700 * (r["size_bytes"] or 0) / biggest for r in rows], alpha=0.6,
                       c=[colours[r["variant"]] for r in rows], edgecolors="black")
            front = pareto_front(list(zip(xs, ys, strict=True))) if key != "abs_error_p99" else []
            if len(front) > 1:
                ax.plot([xs[i] for i in front], [ys[i] for i in front], "--", color="crimson", lw=1, label="Pareto front")
                ax.legend(loc="best", fontsize=8)
            ax.set_xlabel(f"p50 latency at batch {largest} (ms, log scale)")
            ax.set_title(f"{label} vs latency (marker area ∝ size)", fontsize=10)
            labels = [f"{r['variant']}, {format_size(r['size_bytes'])}" for r in rows]
        else:
            xs = [r["size_bytes"] / 1e6 for r in rows]
            for r, x_, y_ in zip(rows, xs, ys, strict=True):
                ax.scatter([x_], [y_], s=80, facecolors=colours[r["variant"]] if r["timed"] else "none",
                           edgecolors=colours[r["variant"]] if not r["timed"] else "black", linewidths=1.5)
            ax.set_xlabel("deployable size (MB, log scale)")
            ax.set_title(f"{label} vs size, every variant (hollow: untimed)", fontsize=10)
            labels = [r["variant"] for r in rows]
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
        ax.set_ylabel(label)
        if key != "abs_error_p99":
            _metric_axis(ax, ys, percent)
        ax.grid(alpha=0.3, which="both")
        _widen_log_axis(ax, xs)
        _label_points(ax, xs, ys, labels)
    fig.tight_layout()
    return fig


def _widen_log_axis(ax: Any, xs: Sequence[float]) -> None:
    """Room on a log x-axis for labels: a factor 1.6 either side of the data (at least a factor 4 overall)."""
    low, high = min(xs), max(xs)
    pad = max(1.6, (4.0 * low / high) ** 0.5) if high > 0 else 1.6
    ax.set_xlim(low / pad, high * pad)

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
        _plain_log_ticks(ax.xaxis)
        ax.set_xlabel("latency per call (ms, log scale)")
        ax.set_title(f"batch {batch['batch_size']}: {len(batch['samples_ms'][names[0]])} calls each")
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle("Latency distributions (box: quartiles, whiskers: p5-p95)")
    fig.tight_layout()
    return fig

_WORST = 20  # layers per quantization-error panel: the ones to act on


def _layer_label(record: Mapping[str, Any]) -> str:
    """"<PyTorch module> · <op> (<ONNX node>)": the module a person knows, the node ``--exclude`` also takes."""
    module = record.get("module")
    node = record.get("node", "")
    if module:
        return f"{module} · {record.get('op_type', '')} ({node})"
    return f"{record.get('tensor', node)} ({node})"


def _informative(values: Sequence[float]) -> bool:
    """Whether a panel of these values says something: they differ by more than a factor 2 (a flat panel of
    identical rounding errors, e.g. every weight at half a quantization step, does not)."""
    positive = [v for v in values if v > 0]
    return len(positive) > 1 and max(positive) > 2 * min(positive)


def _quant_error(report: Mapping[str, Any]) -> Any:
    """Per-layer INT8 error, worst first: activation SQNR, and the weights' and biases' largest error relative
    to max |w|, each panel only when its values differ (see :func:`_informative`)."""
    int8 = report.get("int8") or {}
    acts, weights = int8.get("activation_sqnr") or [], int8.get("weight_error") or []
    is_bias = [w["weight"].endswith("bias") for w in weights]
    panels = []
    if acts and _informative([10 ** (-a["sqnr_db"] / 10) for a in acts]):
        worst = sorted(acts, key=lambda a: a["sqnr_db"])[:_WORST]
        panels.append(("activation SQNR (dB, higher is better)", [a["sqnr_db"] for a in worst],
                       [_layer_label(a) for a in worst], f"activations: {len(worst)} lowest SQNR of {len(acts)} layers",
                       "steelblue", False))
    for label, chosen in (("weights", [w for w, b in zip(weights, is_bias, strict=True) if not b]),
                          ("biases", [w for w, b in zip(weights, is_bias, strict=True) if b])):
        values = [w["rel_error_max"] for w in chosen]
        if chosen and _informative(values):
            worst = sorted(chosen, key=lambda w: -w["rel_error_max"])[:_WORST]
            panels.append(("max |w − q(w)| / max |w| (log)", [w["rel_error_max"] for w in worst],
                           [f"{w['weight'].rsplit('.', 1)[0]} ({w['node']})" for w in worst],
                           f"{label}: {len(worst)} largest errors of {len(chosen)}", "darkorange", True))
    if not panels:
        return None
    plt = _pyplot()
    tallest = max(len(values) for _, values, *_ in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 0.3 * tallest + 1.8), squeeze=False)
    for ax, (xlabel, values, labels, title, colour, log) in zip(axes[0], panels, strict=True):
        ax.barh(range(len(values)), values, color=colour, height=0.7)
        ax.set_yticks(range(len(values)), [label[-60:] for label in labels], fontsize=7)
        ax.invert_yaxis()
        if log:
            ax.set_xscale("log")
            _plain_log_ticks(ax.xaxis)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle("INT8 vs FP32 per layer, worst first: PyTorch module · op (ONNX node, which --exclude accepts)",
                 fontsize=9)
    fig.tight_layout()
    return fig

def _sensitivity(report: Mapping[str, Any]) -> Any:
    sens = report.get("sensitivity")
    if not sens or not sens.get("layers"):
        return None
    layers = sens["layers"][:30]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.25 * len(layers) + 1.5))
    ax.barh(range(len(layers)), [row["recovered"] for row in layers], color="seagreen")
    ax.set_yticks(range(len(layers)), [layer_label(row)[-60:] for row in layers], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("score recovered when kept in FP32")
    ax.set_title(f"Per-layer INT8 sensitivity (FP32 {sens['fp32_score']:.4f}, INT8 {sens['int8_score']:.4f})")
    ax.grid(alpha=0.3, axis="x")
    return fig
