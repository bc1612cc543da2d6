"""``method="auto"``: pick each tensor's range method by measured output fidelity, from one calibration pass.

The streaming histograms of one pass hold what every range method needs, so the candidates cost no
extra pass over the data. Every 8th calibration sample (up to :data:`HELD_OUT_SAMPLES`) is held out of
the histograms while they are filled; the candidates' ranges are computed from the rest and scored on
the held-out samples by running a *simulation model* once per candidate:

- the FP32 graph with every float32 activation that enters a Conv, ConvTranspose, MatMul or Gemm passed
  through QuantizeLinear → DequantizeLinear (symmetric int8, TensorRT's semantics: zero point 0), the
  scale of each a graph input, so one ONNX Runtime session scores any set of ranges;
- weights of those ops replaced by their per-channel symmetric int8 round trip (the same in every
  candidate).

Those are the tensors every target and op set quantizes (the onnxruntime layout also quantizes the
outputs of fusable ops, which take the method chosen for the model). Fidelity is the signal-to-
quantization-noise ratio of the model's float outputs against FP32 on the held-out samples,
SQNR = 10·log10(Σ y² / Σ (y − ŷ)²) in dB, averaged over outputs (mean cosine is reported beside it).

The model-wide winner is then refined per tensor where the methods disagree most (greedy, at most
:data:`REFINE_RUNS` runs), keeping a change only when it raises SQNR by at least :data:`MIN_GAIN_DB`;
then each accuracy-recovery step (`trtopt.quant.recovery`: smoothing, bias correction) is scored on top
and kept under the same rule. The held-out samples are added to the histograms afterwards, so the final
ranges come from all the data.

Cost: one simulation run per distinct candidate plus at most four more, on 16 samples; the simulation
runs about 2.4x slower than the FP32 model (its Q/DQ pairs stay unfused). On EfficientNet-Lite0 that is
7 s: 29 % of one calibration pass over 256 samples, 8 % over 1024, and no extra memory
(`benchmarks/bench_int8_zoo.py`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trtopt.quant.histogram import INT8_LEVELS, StreamingHistogram, choose_amax

_log = logging.getLogger(__name__)

CANDIDATES = ("mse", "entropy", "percentile", "minmax")
"""Model-wide candidates, in the order that breaks exact ties."""

HELD_OUT_EVERY = 8  # sample k is held out when k % 8 == 7
HELD_OUT_SAMPLES = 16  # at most this many held-out samples (memory: one batch of inputs)
IN_SAMPLE_SAMPLES = 8  # with fewer than 8 samples none is held out: score on the first ones instead
REFINE_RUNS = 2  # per-tensor refinement scores at most this many changes (each run costs as much as a candidate) ...
REFINE_SPREAD = 1.25  # ... on tensors whose candidate amax values differ by at least this factor
MIN_GAIN_DB = 0.1  # a per-tensor change must raise SQNR by this much to be kept
SIMULATED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
MAX_SQNR_DB = 200.0  # an exact match (no error at all) scores this
EXTERNAL_DATA_BYTES = 1_800_000_000  # weights above this go to a side file (protobuf refuses messages over 2 GiB)

Feed = dict[str, np.ndarray]


class SimulationError(Exception):
    """ONNX Runtime refused to load or run a simulation model (the message says why)."""


class HeldOut:
    """Splits calibration batches into samples for the histograms and samples kept for scoring.

    Sample ``k`` (counted over the whole data, so batching does not change the split) is held out when
    ``k % 8 == 7``, up to :data:`HELD_OUT_SAMPLES`. The first :data:`IN_SAMPLE_SAMPLES` samples are also
    kept (they stay in the histograms) to score on when the data is too small to hold any out. A model
    whose inputs have a fixed axis 0 is split by whole calls instead of by samples.
    """

    def __init__(self, batched: bool):
        self.batched = batched
        self.held: list[Feed] = []
        self.in_sample: list[Feed] = []
        self.held_count = 0
        self.in_sample_count = 0
        self.calls = 0

    def split(self, feed: Feed, n: int, first: int) -> tuple[Feed, int]:
        """Keep the held-out part of a checked batch of ``n`` samples starting at sample ``first``.

        Returns the part that goes into the histograms and its sample count.
        """
        call = self.calls
        self.calls += 1
        if not self.batched:  # whole calls
            if self.in_sample_count < IN_SAMPLE_SAMPLES:
                self.in_sample.append(feed)
                self.in_sample_count += n
            if call % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 and self.held_count < HELD_OUT_SAMPLES:
                self.held.append(feed)
                self.held_count += n
                return {}, 0
            return feed, n
        index = first + np.arange(n)
        if self.in_sample_count < IN_SAMPLE_SAMPLES:
            take = min(n, IN_SAMPLE_SAMPLES - self.in_sample_count)
            self.in_sample.append({k: v[:take] for k, v in feed.items()})
            self.in_sample_count += take
        held = np.flatnonzero(index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1)[:HELD_OUT_SAMPLES - self.held_count]
        if held.size == 0:
            return feed, n
        self.held.append({k: v[held] for k, v in feed.items()})
        self.held_count += int(held.size)
        keep = np.setdiff1d(np.arange(n), held)
        return {k: v[keep] for k, v in feed.items()}, int(keep.size)

    def scoring_feeds(self, batch_size: int) -> tuple[list[Feed], int, bool]:
        """(feeds to score on, their sample count, whether they were held out of the histograms)."""
        feeds, count, held_out = (self.held, self.held_count, True) if self.held else \
            (self.in_sample, self.in_sample_count, False)
        if self.batched and feeds:  # one run per batch_size samples
            joined = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
            feeds = [{k: v[s:s + batch_size] for k, v in joined.items()} for s in range(0, count, batch_size)]
        return feeds, count, held_out


@dataclass
class RangeChoice:
    """What ``auto`` chose, per tensor, and the evidence.

    Attributes:
        methods: tensor → range method (every calibrated tensor).
        evidence: JSON-able record: the model-wide method, per-tensor overrides, each candidate's SQNR
            and cosine, the held-out sample count, the simulated tensors and the number of simulation runs.
    """

    methods: dict[str, str]
    evidence: dict[str, Any] = field(default_factory=dict)


def _weight_axis(node: Any, input_index: int, rank: int) -> int | None:
    """The output-channel axis of a weight input of a GEMM-like node (None: quantize per tensor)."""
    if rank < 2:
        return None
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return (0 if trans_b else 1) if input_index == 1 else None
    return rank - 1 if input_index == 1 else None  # MatMul: (..., K, N) → per N


def _fake_quant_weight(w: np.ndarray, axis: int | None) -> np.ndarray:
    """Symmetric int8 round trip of a weight, per channel along ``axis`` (per tensor when None)."""
    reduce = tuple(i for i in range(w.ndim) if i != axis) if axis is not None else None
    amax = np.max(np.abs(w), axis=reduce, keepdims=True) if reduce is not None else np.max(np.abs(w))
    scale = np.where(amax > 0, amax / (INT8_LEVELS - 1), 1.0)
    return (np.clip(np.round(w / scale), -(INT8_LEVELS - 1), INT8_LEVELS - 1) * scale).astype(w.dtype)


def simulation_model(model: Any, tensors: Sequence[str]) -> tuple[Any, dict[str, str]]:
    """``model`` (a ModelProto with its weights, changed in place) as an INT8 simulation.

    Returns (model, scale inputs): each activation of ``tensors`` (float32 ones) that enters a Conv,
    ConvTranspose, MatMul or Gemm gets QuantizeLinear → DequantizeLinear with its scale a float32
    scalar graph input (name in the returned dict, keyed by tensor); the float weights of those ops are
    replaced by their per-channel int8 round trip.
    """
    from onnx import TensorProto, helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    wanted = set(tensors)
    scales: dict[str, str] = {}
    done_weights: set[str] = set()
    nodes = []
    zero = "trtopt_sim_zero_point"
    for node in model.graph.node:  # graph order is topological: a Q/DQ pair goes just before its first consumer
        if node.op_type in SIMULATED_OPS:
            for i, name in enumerate(node.input):
                if name in inits and name not in done_weights and inits[name].data_type == TensorProto.FLOAT \
                        and i < 2:  # input 2 of Conv/ConvTranspose/Gemm is the bias: kept float (as in TensorRT)
                    w = numpy_helper.to_array(inits[name])
                    inits[name].CopyFrom(numpy_helper.from_array(_fake_quant_weight(w, _weight_axis(node, i, w.ndim)),
                                                                 name))
                    done_weights.add(name)
                elif name in wanted and name not in inits:
                    if name not in scales:
                        scale = scales[name] = f"trtopt_sim_scale_{len(scales)}"
                        nodes += [helper.make_node("QuantizeLinear", [name, scale, zero], [f"{scale}_q"]),
                                  helper.make_node("DequantizeLinear", [f"{scale}_q", scale, zero], [f"{scale}_dq"])]
                    node.input[i] = f"{scales[name]}_dq"
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((), np.int8), zero))
    for scale in scales.values():
        model.graph.input.append(helper.make_tensor_value_info(scale, TensorProto.FLOAT, []))
    return model, scales


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """10·log10(Σ y² / Σ (y − ŷ)²) in dB (capped at :data:`MAX_SQNR_DB`; 0 dB for an all-zero reference)."""
    ref = reference.astype(np.float64)
    noise = float(np.sum((ref - approx.astype(np.float64)) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0.0:
        return MAX_SQNR_DB
    if signal == 0.0:
        return 0.0
    return min(10.0 * math.log10(signal / noise), MAX_SQNR_DB)


def _cosine(reference: np.ndarray, approx: np.ndarray) -> float:
    r = reference.reshape(len(reference), -1).astype(np.float64) if reference.ndim else reference.reshape(1, -1)
    a = approx.reshape(r.shape).astype(np.float64)
    denom = np.linalg.norm(r, axis=1) * np.linalg.norm(a, axis=1)
    return float(np.mean(np.where(denom > 0, (r * a).sum(1) / np.maximum(denom, 1e-300), 1.0)))


class _Scorer:
    """Runs the simulation model on the scoring samples for one set of amax values."""

    def __init__(self, run: Callable[[Feed], dict[str, np.ndarray]], scales: Mapping[str, str],
                 feeds: Sequence[Feed], reference: Sequence[Mapping[str, np.ndarray]], outputs: Sequence[str]):
        self.run, self.scales, self.feeds, self.reference, self.outputs = run, scales, feeds, reference, outputs
        self.runs = 0

    def score(self, amax: Mapping[str, float]) -> dict[str, float]:
        self.runs += 1
        scale_feed = {self.scales[t]: np.asarray(max(amax[t], 1e-30) / (INT8_LEVELS - 1), np.float32)
                      for t in self.scales}
        got: dict[str, list[np.ndarray]] = {o: [] for o in self.outputs}
        for feed in self.feeds:
            result = self.run({**feed, **scale_feed})
            for o in self.outputs:
                got[o].append(result[o])
        sqnr, cosine = [], []
        for o in self.outputs:
            ref = np.concatenate([np.atleast_1d(r[o]) for r in self.reference])
            approx = np.concatenate([np.atleast_1d(g) for g in got[o]])
            sqnr.append(sqnr_db(ref, approx))
            cosine.append(_cosine(ref, approx))
        return {"sqnr_db": float(np.mean(sqnr)), "cosine": float(np.mean(cosine))}


def choose_methods(model_path: Path, fit: Mapping[str, StreamingHistogram], float32: Sequence[str],
                   feeds: Sequence[Feed], reference: Sequence[Mapping[str, np.ndarray]], outputs: Sequence[str],
                   percentile: float, workdir: Path, threads: int | None = None,
                   channels: Mapping[str, Mapping[str, Any]] | None = None) -> RangeChoice:
    """Score the candidate methods on ``feeds`` and pick a method per tensor.

    Args:
        model_path: the FP32 ONNX model (side files beside it).
        fit: the histograms without the scoring samples (tensor → histogram).
        float32: the float32 tensors among them (QuantizeLinear of other float types needs opset 19).
        feeds: the scoring samples, as model feeds; ``reference``: the FP32 outputs for each feed.
        outputs: the float graph outputs compared.
        percentile: the percentile the ``percentile`` candidate uses.
        workdir: where the simulation model is written (a temporary folder).
        threads: ONNX Runtime intra-op threads (None: its default).
        channels: per-channel statistics of GEMM inputs (from the same samples as ``fit``), for the
            accuracy-recovery steps (`trtopt.quant.recovery`), each scored and kept only when it helps.

    Returns:
        The method per tensor and the evidence. When the model cannot be scored (no float outputs,
        opset below 10, a simulation ONNX Runtime refuses) every tensor gets ``CANDIDATES[0]`` and the
        evidence says why; choosing never fails the calibration.
    """
    import onnx

    model = onnx.load(str(model_path))  # with its weights: they are fake-quantized
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    reason = ("the model has no float outputs to compare" if not outputs
              else f"opset {opset} has no QuantizeLinear (needs 10)" if opset < 10 else None)
    if reason is None:
        sim, scales = simulation_model(model, [t for t in float32 if t in fit])
        del model
        try:
            return _score_and_choose(model_path, sim, scales, fit, float32, channels or {}, feeds, reference, outputs,
                                     percentile, workdir, threads)
        except SimulationError as e:  # an unscorable model still calibrates
            reason = str(e)
    _log.warning(f"method auto could not score the range methods on {model_path.name}: {reason}; "
                 f"using {CANDIDATES[0]} for every tensor")
    return RangeChoice(dict.fromkeys(fit, CANDIDATES[0]),
                       {"model_method": CANDIDATES[0], "scored": False, "reason": reason})


def _score_and_choose(model_path: Path, sim: Any, scales: Mapping[str, str], fit: Mapping[str, StreamingHistogram],
                      float32: Sequence[str], channels: Mapping[str, Mapping[str, Any]], feeds: Sequence[Feed],
                      reference: Sequence[Mapping[str, np.ndarray]], outputs: Sequence[str], percentile: float,
                      workdir: Path, threads: int | None) -> RangeChoice:
    # Only the simulated tensors change the score: the others get the model's method without being scored.
    amax = {m: {t: choose_amax(fit[t], m, percentile).amax for t in scales} for m in CANDIDATES}
    scorer = _Scorer(_simulation_session(sim, workdir, threads), scales, feeds, reference, outputs)
    del sim
    scores: dict[str, dict[str, float]] = {}
    for m in CANDIDATES:  # a candidate with the same ranges as an earlier one shares its score
        same = next((o for o in scores if amax[o] == amax[m]), None)
        scores[m] = scores[same] if same is not None else scorer.score(amax[m])
    best = max(CANDIDATES, key=lambda m: (scores[m]["sqnr_db"], -CANDIDATES.index(m)))
    methods = dict.fromkeys(fit, best)
    current, best_score, overrides = dict(amax[best]), scores[best], []
    for tensor, other in _refinement_trials(amax, best)[:REFINE_RUNS]:
        trial = scorer.score({**current, tensor: amax[other][tensor]})
        if trial["sqnr_db"] >= best_score["sqnr_db"] + MIN_GAIN_DB:
            overrides.append({"tensor": tensor, "method": other, "sqnr_db_before": best_score["sqnr_db"],
                              "sqnr_db_after": trial["sqnr_db"]})
            current[tensor], methods[tensor], best_score = amax[other][tensor], other, trial
    steps, trials, best_score = _score_recovery(model_path, float32, fit, channels, current, best_score,
                                                (feeds, reference, outputs), workdir, threads)
    evidence = {"model_method": best, "scored": True,
                "candidates": [{"method": m, **scores[m]} for m in CANDIDATES],
                "per_tensor": overrides, "recovery": steps, "recovery_trials": trials, "final": best_score,
                "simulated_tensors": len(scales),
                "simulation": "symmetric int8 Q/DQ on the float32 inputs of Conv/ConvTranspose/MatMul/Gemm, "
                              "per-channel int8 weights", "runs": scorer.runs + len(trials)}
    return RangeChoice(methods, evidence)


def _score_recovery(model_path: Path, float32: Sequence[str], fit: Mapping[str, StreamingHistogram],
                    channels: Mapping[str, Mapping[str, Any]], current: Mapping[str, float], best: dict[str, float],
                    data: tuple[Any, Any, Any], workdir: Path,
                    threads: int | None) -> tuple[dict[str, bool], list[dict[str, Any]], dict[str, float]]:
    """Try each recovery step on top of the ones kept so far; keep it when SQNR rises by :data:`MIN_GAIN_DB`.

    Returns (steps kept, one record per step tried, the best score). A step that changes nothing in this
    model (no outlier channels, no biases) is recorded as not applicable, without a run.
    """
    import onnx

    from trtopt.quant.recovery import RECOVERY_STEPS, apply_recovery

    kept: dict[str, bool] = dict.fromkeys(RECOVERY_STEPS, False)
    trials: list[dict[str, Any]] = []
    for step in RECOVERY_STEPS:
        model, smoothed, applied = apply_recovery(onnx.load(str(model_path)), channels, {**kept, step: True})
        if not applied.get(step):
            trials.append({"step": step, "applicable": False})
            continue
        tensors = [t for t in float32 if t in fit] + list(smoothed)
        sim, scales = simulation_model(model, tensors)
        del model
        amax = {t: current[t] if t in current else smoothed[t]["amax"] if t in smoothed
                else choose_amax(fit[t], "minmax").amax for t in scales}
        try:
            score = _Scorer(_simulation_session(sim, workdir, threads, step), scales, *data).score(amax)
        except SimulationError as e:
            trials.append({"step": step, "applicable": True, "changed": applied[step], "error": str(e), "kept": False})
            continue
        keep = score["sqnr_db"] >= best["sqnr_db"] + MIN_GAIN_DB
        trials.append({"step": step, "applicable": True, "changed": applied[step], "sqnr_db": score["sqnr_db"],
                       "cosine": score["cosine"], "sqnr_db_before": best["sqnr_db"], "kept": keep})
        if keep:
            kept[step], best = True, score
    return kept, trials, best


def _simulation_session(sim: Any, workdir: Path, threads: int | None,
                        name: str = "base") -> Callable[[Feed], dict[str, np.ndarray]]:
    """An ONNX Runtime session over a simulation model (saved in ``workdir`` under ``name``), as ``feed -> outputs``.

    ONNX Runtime's QDQ fusions are switched off: with the scales as graph inputs they still rewrite the
    Q/DQ pairs, and the result is wrong (EfficientNet-Lite0: SQNR 5.0 dB vs 13.2 dB with exact Q/DQ
    semantics, which is what the TensorRT-layout model gives; even the "basic" level does it). Every
    other optimization stays on (about 2x faster than none).
    """
    import onnx
    import onnxruntime as ort

    path = workdir / f"range_choice_simulation_{name}.onnx"
    large = sum(len(t.raw_data) for t in sim.graph.initializer) > EXTERNAL_DATA_BYTES  # protobuf stops at 2 GiB
    onnx.save_model(sim, str(path), save_as_external_data=large, location=path.name + ".data" if large else None)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    options.log_severity_level = 4  # failures are raised (and recorded), not logged
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's exception types derive from Exception only
        raise SimulationError(f"ONNX Runtime could not load the INT8 simulation ({_first_line(e)})") from e
    names = [o.name for o in session.get_outputs()]

    def run(feed: Feed) -> dict[str, np.ndarray]:
        try:
            return dict(zip(names, session.run(names, feed), strict=True))
        except Exception as e:  # as above
            raise SimulationError(f"ONNX Runtime could not run the INT8 simulation ({_first_line(e)})") from e

    return run


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200] if text else ''}"


def _refinement_trials(amax: Mapping[str, Mapping[str, float]], best: str) -> list[tuple[str, str]]:
    """(tensor, other method) pairs worth scoring, the tensors whose candidates differ most first.

    A tensor qualifies when its candidate amax values differ by at least :data:`REFINE_SPREAD`; for
    each, the other methods are tried in order of how far their amax is from the chosen one.
    """
    tensors = next(iter(amax.values())).keys()
    spread = {}
    for t in tensors:
        values = [amax[m][t] for m in CANDIDATES if amax[m][t] > 0]
        if values and max(values) / min(values) >= REFINE_SPREAD:
            spread[t] = max(values) / min(values)
    trials = []
    for t in sorted(spread, key=lambda t: -spread[t]):
        chosen = amax[best][t]
        others = sorted((m for m in CANDIDATES if m != best and not math.isclose(amax[m][t], chosen, rel_tol=1e-6)),
                        key=lambda m: -abs(math.log(max(amax[m][t], 1e-30) / max(chosen, 1e-30))))
        trials += [(t, m) for m in others]
    return trials
