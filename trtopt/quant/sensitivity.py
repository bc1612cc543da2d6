"""Which layers cost accuracy when quantized, and the fewest to keep in higher precision.

Sensitivity is measured where it matters, from the fully quantized model: for each GEMM-like layer, the
score gained by keeping just that layer in FP32 (leave-one-out). A layer whose exclusion recovers the
most is the one quantization hurts most. Mixed precision then keeps layers in FP32 greedily, most
sensitive first, re-measuring after each, until the score is within ``max_drop`` of FP32.

A *score* is any "higher is better" number computed from a model file: top-1 accuracy on labels,
top-1 agreement with FP32, or mean cosine of embeddings (see the ``*_scorer`` factories; the formulas are
`trtopt.metrics`', the same numbers `trtopt.measure.compare` reports).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from trtopt import metrics
from trtopt._config import check_number
from trtopt.artifacts import Ranges
from trtopt.errors import TrtoptError
from trtopt.feeds import Feed
from trtopt.files import temp_dir
from trtopt.progress import StepCallback
from trtopt.quant.quantize import COMPUTE_OP_TYPES, QuantizeConfig, quantize

Scorer = Callable[[Path], float]


def model_outputs(path: Path, feed: Feed, threads: int | None, batch_size: int = 32) -> np.ndarray:
    """First output of the model over every sample (ONNX Runtime with the target's evaluation settings)."""
    from trtopt.measure.bench import onnx_candidate, run_all

    with onnx_candidate(path, threads=threads) as cand:
        return next(iter(run_all(cand, feed, batch_size).values()))


def accuracy_scorer(feed: Feed, labels: np.ndarray, threads: int | None = None) -> Scorer:
    """Top-1 accuracy (`trtopt.metrics.topk_accuracy`, a fraction) of a classifier's first output against ``labels``."""
    return lambda path: metrics.topk_accuracy(model_outputs(path, feed, threads), labels)


def agreement_scorer(feed: Feed, reference: np.ndarray, threads: int | None = None) -> Scorer:
    """Top-1 agreement (`trtopt.metrics.top1_agreement`) with the FP32 reference logits (no labels needed)."""
    return lambda path: metrics.top1_agreement(reference, model_outputs(path, feed, threads))


def cosine_scorer(feed: Feed, reference: np.ndarray, threads: int | None = None) -> Scorer:
    """Cosine similarity (`trtopt.metrics.cosine_similarity`: per sample, then the mean) of the first output
    to the FP32 reference (embeddings); 0.0 when no sample has a defined angle (a collapsed all-zero output)."""
    return lambda path: metrics.cosine_similarity(reference, model_outputs(path, feed, threads)) or 0.0


def make_scorer(metric: str, feed: Feed, reference: np.ndarray | None = None, labels: np.ndarray | None = None,
                threads: int | None = None) -> Scorer:
    """The scorer for ``metric``: "accuracy" (needs ``labels``), "agreement" or "cosine" (need the FP32
    ``reference`` outputs)."""
    if metric == "accuracy":
        if labels is None:
            raise TrtoptError("metric 'accuracy' needs labelled data, but the data has no labels",
                              "use data: dataset:NAME:SPLIT, or metric agreement / cosine")
        return accuracy_scorer(feed, labels, threads)
    if metric not in ("agreement", "cosine"):
        raise TrtoptError(f"unknown metric {metric!r}", "use accuracy, agreement or cosine")
    return (agreement_scorer if metric == "agreement" else cosine_scorer)(feed, reference, threads)


def quantizable_layers(onnx_path: str | os.PathLike, config: QuantizeConfig) -> list[str]:
    """Names of the GEMM-like nodes ``config`` would quantize."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in COMPUTE_OP_TYPES
            and n.name not in config.exclude_nodes and n.op_type not in config.exclude_op_types]


def layer_sensitivity(onnx_path: str | os.PathLike, ranges: Ranges, config: QuantizeConfig, score: Scorer,
                      on_step: StepCallback | None = None) -> dict[str, Any]:
    """Score FP32, full INT8, and INT8 with each layer left out; rank layers by the score they recover.

    Returns ``{"fp32_score", "int8_score", "layers": [{"node", "module", "score_without", "recovered"}...]}``
    sorted by ``recovered`` (descending); ``module`` is the PyTorch module the node belongs to
    (`trtopt.quant.names.node_modules`), None where the export does not tell. Costs one quantization and one
    evaluation per layer.
    """
    import onnx

    from trtopt.quant.names import node_modules

    step = on_step or (lambda _msg: None)
    layers = quantizable_layers(onnx_path, config)
    modules = node_modules(onnx.load(str(onnx_path), load_external_data=False))
    with temp_dir("sens") as tmp:
        fp32_score = score(Path(onnx_path))
        int8_score = _score_excluding(onnx_path, ranges, config, (), score, Path(tmp))
        rows = []
        for i, layer in enumerate(layers):
            step(f"sensitivity {i + 1}/{len(layers)}: {layer}")
            s = _score_excluding(onnx_path, ranges, config, (layer,), score, Path(tmp))
            rows.append({"node": layer, "module": modules.get(layer), "score_without": s, "recovered": s - int8_score})
    rows.sort(key=lambda r: (-r["recovered"], r["node"]))
    return {"fp32_score": fp32_score, "int8_score": int8_score, "layers": rows}


def _score_excluding(onnx_path: str | os.PathLike, ranges: Ranges, config: QuantizeConfig, excluded: tuple[str, ...],
                     score: Scorer, tmp: Path) -> float:
    out = tmp / "candidate.onnx"
    quantize(onnx_path, ranges, out, replace(config, exclude_nodes=tuple(config.exclude_nodes) + excluded), force=True)
    return score(out)


def check_max_drop(max_drop: float) -> None:
    """Raise TrtoptError unless ``max_drop`` (a fraction of the score: 0.003 = 0.3 points) is a finite number in
    [0, 1]; NaN compares false with every bar, and a drop above 1 (the whole score) is a percentage by mistake."""
    check_number("max_accuracy_drop", max_drop, 0, 1, fix="give a fraction from 0 to 1, e.g. 0.003 for 0.3 points")


def choose_mixed_precision(onnx_path: str | os.PathLike, ranges: Ranges, config: QuantizeConfig, score: Scorer,
                           max_drop: float, on_step: StepCallback | None = None) -> dict[str, Any]:
    """The fewest layers (greedy, most sensitive first) kept in FP32 so that fp32 − int8 ≤ ``max_drop``.

    ``max_drop`` is in score units (e.g. 0.003 = 0.3 accuracy points for a fraction). Returns the
    sensitivity ranking, the chosen ``exclude_nodes``, the score after each step, and whether the bar was
    met (when no subset meets it, every layer ends up excluded and ``met`` is False).
    """
    check_max_drop(max_drop)
    sens = layer_sensitivity(onnx_path, ranges, config, score, on_step)
    chosen: list[str] = []
    current = sens["int8_score"]
    trail = [{"excluded": [], "score": current}]
    with temp_dir("mixed") as tmp:
        for row in sens["layers"]:
            if sens["fp32_score"] - current <= max_drop:
                break
            chosen.append(row["node"])
            current = _score_excluding(onnx_path, ranges, config, tuple(chosen), score, Path(tmp))
            trail.append({"excluded": list(chosen), "score": current})
    return {"sensitivity": sens, "exclude_nodes": chosen, "score": current, "fp32_score": sens["fp32_score"],
            "max_drop": max_drop, "met": sens["fp32_score"] - current <= max_drop, "trail": trail}
