"""Latency regression gating: save a benchmark as a baseline, later compare a new run with it.

A baseline file is JSON (``BASELINE_FORMAT``) holding, per entry (candidate × batch size), the raw
per-call latencies in milliseconds of each repeated run (``repeats_ms``) and their statistics, plus the environment that produced them
(versions, CPU/GPU, thread settings) and, optionally, the path and sha256 of golden outputs
(``<baseline>.golden.npz``) for accuracy gating.

The comparison is a statistical test, not a threshold on two medians: for every entry the slowdown
(current / baseline, each the median over repeats of the per-repeat median) gets a hierarchical
bootstrap confidence interval: repeats are resampled, then calls within them, independently on each side
(the two runs share no rounds). Repeats matter: between two runs of an unchanged model on this 2-core
machine the median moved by up to 35 % while each run's own interval was ±3 % wide. An entry is a **regression** only when the whole interval lies
above ``1 + tolerance`` — slower by more than the tolerance *and* significantly so — and an
**improvement** when it lies below ``1 / (1 + tolerance)``; anything else is unchanged. Noise widens the
interval, so a noisy run fails to prove a regression instead of raising a false alarm. The gate passes
only what it judged: a baseline entry the run lacks, a run with no entry in common with the baseline,
and a baseline without golden outputs all fail it, named (`compare_with_baseline`, `judge_golden`).

Machine-wide slowdowns (a busy neighbour, a clock change) are not the model's fault: gated runs time a
fixed control workload (`ControlRunner`) interleaved with the candidates, and when both runs have it the
verdict is judged on candidate/control per round (the raw slowdown is reported beside it).

Numbers from different machines or software are not comparable: :func:`check_environment` refuses
unless told to (``allow_mismatch``), naming every field that differs.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trtopt._config import check_int, check_number
from trtopt.backends.base import Runner
from trtopt.errors import TrtoptError
from trtopt.feeds import CheckedFeed
from trtopt.files import atomic_output, sha256_file, write_json

BASELINE_FORMAT = 2
#: Environment fields that must match for latencies to be comparable (dotted paths into `environment()`).
#: ``cpu_isa.flags``: a virtual machine often hides the CPU model ("Intel(R) Xeon(R) Processor") while its
#: host's instruction sets (AVX2 only vs AVX-512 VNNI / AMX) change INT8 speed several times over.
ENVIRONMENT_KEYS = ("cpu_model", "cpu_isa.flags", "cpu_count_logical", "cpu_affinity_count", "machine", "gpus",
                    "packages.torch", "packages.onnxruntime", "packages.tensorrt", "thread_env", "cpu_power")
#: Run settings that change timing (dotted paths into the baseline's ``settings``): the intra-op thread
#: count the runs used (``--threads``); batch sizes are part of every entry's key instead.
SETTINGS_KEYS = ("threads",)


@dataclass(frozen=True)
class GateConfig:
    """How a run is judged against a baseline.

    Attributes:
        tolerance: slowdown allowed before an entry can be a regression (0.10 = 10 % slower).
        confidence: level of the slowdown's bootstrap interval (two-sided).
        bootstrap_samples: resamples for that interval.
        allow_environment_mismatch: compare even when the environments differ (the report says so).
    """

    tolerance: float = 0.10
    confidence: float = 0.95
    bootstrap_samples: int = 2000
    allow_environment_mismatch: bool = False

    def __post_init__(self) -> None:
        check_number("tolerance", self.tolerance, 0, 10, high_open=True, fix="give the allowed slowdown as a fraction, "
                     "e.g. 0.1 (10 % slower)")
        check_number("confidence", self.confidence, 0, 1, low_open=True, high_open=True, fix="e.g. 0.95")
        check_int("bootstrap_samples", self.bootstrap_samples, fix="e.g. 2000")


CONTROL_NAME = "trtopt-control"


class ControlRunner(Runner):
    """A fixed workload timed interleaved with the candidates, to cancel machine-wide slowdowns.

    An ONNX Runtime session over a constant MatMul+Relu chain (8 layers of 256×256, batch 8, ~0.5 ms on
    2 threads here) built in memory, run on the candidates' thread count. If a neighbour process or a
    clock change slows the machine during today's run, the control slows too, and slowdowns are judged
    on candidate/control ratios per round. It declares no inputs and runs its own constant feed.
    """

    backend = "onnxruntime"
    inputs = ()
    model_name = "the control workload"

    def __init__(self, threads: int | None = None):
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(0)
        nodes, inits, name = [], [], "x"
        for i in range(8):
            inits.append(numpy_helper.from_array((rng.standard_normal((256, 256)) / 16).astype(np.float32), f"w{i}"))
            nodes += [helper.make_node("MatMul", [name, f"w{i}"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
            name = f"r{i}"
        graph = helper.make_graph(nodes, "control", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 256])],
                                  [helper.make_tensor_value_info(name, TensorProto.FLOAT, [8, 256])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self._feed = {"x": rng.standard_normal((8, 256)).astype(np.float32)}
        self.threads = threads

    def _infer(self, feed: CheckedFeed) -> dict[str, np.ndarray]:
        return dict(zip([o.name for o in self._session.get_outputs()], self._session.run(None, self._feed), strict=True))

    def describe(self) -> dict[str, Any]:
        return {"backend": "onnxruntime", "workload": "MatMul+Relu 8×256×256, batch 8", "intra_op_threads": self.threads}

    def close(self) -> None:
        self._session = None


def control_candidate(threads: int | None = None) -> Any:
    """The control workload as a `trtopt.measure.bench.Candidate` (add it last to the candidates of a gated run)."""
    from trtopt.measure.bench import Candidate

    return Candidate(CONTROL_NAME, "onnxruntime", "fp32", ControlRunner(threads), inputs=(), source="trtopt control")


def baseline_from_bench(result: Mapping[str, Any], environment: Mapping[str, Any],
                        settings: Mapping[str, Any] | None = None, golden: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A baseline document from a `trtopt.measure.bench.bench` result (which keeps ``samples_ms`` per batch)."""
    entries = []
    sources = {c["name"]: c for c in result["candidates"]}
    for per_batch in result["per_batch"]:
        for name, stats in per_batch["candidates"].items():
            cand = sources[name]
            flat = list(per_batch["samples_ms"][name])
            bounds = np.cumsum([0, *per_batch.get("repeat_lengths", [len(flat)])])
            entries.append({"candidate": name, "backend": cand["backend"], "precision": cand["precision"],
                            "source": cand.get("source"), "batch_size": per_batch["batch_size"],
                            "latency_ms_p50": stats["latency_ms_p50"], "cov_percent": stats["cov_percent"],
                            "repeats_ms": [flat[a:b] for a, b in itertools.pairwise(bounds)]})
    return {"format": BASELINE_FORMAT, "created_utc": _now(), "environment": dict(environment),
            "settings": dict(settings or {}), "entries": entries, "golden": dict(golden) if golden else None}


def save_baseline(document: Mapping[str, Any], path: str | os.PathLike, force: bool = False) -> Path:
    """Write a baseline document atomically (refuses to overwrite without ``force``)."""
    return write_json(path, document, force=force)


def golden_path(baseline_path: str | os.PathLike) -> Path:
    """Where the golden outputs of a baseline live: ``<baseline>.golden.npz`` beside it."""
    p = Path(baseline_path)
    return p.with_name(p.name + ".golden.npz")


def save_golden(outputs: Mapping[str, Mapping[str, np.ndarray]], path: str | os.PathLike, force: bool = False) -> dict[str, Any]:
    """Save each candidate's outputs (``{candidate: {output: array}}``) as one ``.npz``; returns its record."""
    arrays = {f"{cand}::{out}": np.asarray(value) for cand, outs in outputs.items() for out, value in outs.items()}
    with atomic_output(path, force=force) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return {"path": Path(path).name, "sha256": sha256_file(path)}


def load_golden(baseline_path: str | os.PathLike, record: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Read the golden outputs a baseline names, checking their sha256 first."""
    path = Path(baseline_path).with_name(record["path"])
    if not path.is_file():
        raise TrtoptError(f"golden outputs {path} named by the baseline are missing",
                          "keep the .golden.npz beside the baseline, or re-record with --save-baseline")
    if sha256_file(path) != record["sha256"]:
        raise TrtoptError(f"golden outputs {path} do not match the baseline's sha256 (changed or corrupted)",
                          "re-record the baseline with --save-baseline")
    from trtopt.data import load_npz

    golden: dict[str, dict[str, np.ndarray]] = {}
    for key, array in load_npz(path).items():
        cand, _, out = key.partition("::")
        golden.setdefault(cand, {})[out] = array
    return golden


def load_baseline(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a baseline file; every defect is a one-line error saying how to fix it."""
    from trtopt.files import read_json

    p = Path(path)
    document = read_json(p, "baseline", "record it with trtopt bench ... --save-baseline FILE")
    if not isinstance(document, dict) or "format" not in document:
        raise TrtoptError(f"baseline {p} has no 'format' field: not a trtopt baseline",
                          "record one with trtopt bench ... --save-baseline FILE")
    if document["format"] != BASELINE_FORMAT:
        age = "older" if isinstance(document["format"], int) and document["format"] < BASELINE_FORMAT else "other"
        raise TrtoptError(f"baseline {p} has format {document['format']!r}, an {age} format than this trtopt's "
                          f"{BASELINE_FORMAT}", "re-record it with this trtopt: trtopt bench ... --save-baseline FILE")
    for key in ("environment", "entries"):
        if key not in document:
            raise TrtoptError(f"baseline {p} lacks '{key}' (truncated or edited)", "re-record it with --save-baseline")
    golden = document.get("golden")
    if golden is not None and not (isinstance(golden, dict) and isinstance(golden.get("path"), str)
                                   and isinstance(golden.get("sha256"), str)):
        raise TrtoptError(f"baseline {p} has a malformed 'golden' record (path and sha256 of the golden outputs)",
                          "re-record it with --save-baseline")
    if not isinstance(document["entries"], list):
        raise TrtoptError(f"baseline {p} has 'entries' of type {type(document['entries']).__name__}, not a list",
                          "re-record it with --save-baseline")
    for i, entry in enumerate(document["entries"]):
        repeats = entry.get("repeats_ms") if isinstance(entry, dict) else None
        if not isinstance(repeats, list) or not repeats or not all(
                isinstance(run, list) and run and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      and math.isfinite(v) and v > 0 for v in run) for run in repeats):
            raise TrtoptError(f"baseline {p} entry {i} has no valid repeats_ms (corrupted)", "re-record it with --save-baseline")
    return document


def environment_differences(baseline_env: Mapping[str, Any], current_env: Mapping[str, Any],
                            baseline_settings: Mapping[str, Any] | None = None,
                            current_settings: Mapping[str, Any] | None = None) -> list[str]:
    """``"field: baseline → current"`` for every comparability field that differs: the environment's
    (`ENVIRONMENT_KEYS`) and, when both run settings are given, the settings' (`SETTINGS_KEYS`, as ``settings.KEY``)."""
    pairs = [(key, _dig(baseline_env, key), _dig(current_env, key)) for key in ENVIRONMENT_KEYS]
    if baseline_settings is not None and current_settings is not None:
        pairs += [(f"settings.{key}", _dig(baseline_settings, key), _dig(current_settings, key)) for key in SETTINGS_KEYS]
    return [f"{key}: {old!r} → {new!r}" for key, old, new in pairs if old != new]


def check_environment(baseline_env: Mapping[str, Any], current_env: Mapping[str, Any], allow_mismatch: bool,
                      baseline_settings: Mapping[str, Any] | None = None,
                      current_settings: Mapping[str, Any] | None = None) -> list[str]:
    """Refuse (TrtoptError) when the environments or timing settings differ, unless ``allow_mismatch``; returns
    the differences (see `environment_differences`)."""
    diffs = environment_differences(baseline_env, current_env, baseline_settings, current_settings)
    if diffs and not allow_mismatch:
        settings = [d for d in diffs if d.startswith("settings.")]
        if settings:
            fix = ("run with the baseline's settings (" + ", ".join(f"--{d.split(':')[0][9:]} {_dig(baseline_settings or {}, d.split(':')[0][9:])}"
                                                                   for d in settings) + "), re-record the baseline, or pass --allow-env-mismatch")
            raise TrtoptError("the baseline was timed with other settings (" + "; ".join(diffs) + ")", fix)
        raise TrtoptError("the baseline was recorded in another environment (" + "; ".join(diffs) + ")",
                          "run on the baseline's machine type, re-record the baseline, or pass --allow-env-mismatch")
    return diffs


def compare_with_baseline(baseline: Mapping[str, Any], current: Mapping[str, Any], config: GateConfig) -> dict[str, Any]:
    """Judge every entry of ``current`` (a baseline document of today's run) against ``baseline``.

    Returns ``{"entries": [...], "regressions": n, "improvements": n, "missing": [...], "new": [...],
    "environment_differences": [...], "failures": [...], "passed": bool}``; each entry has the slowdown
    (current p50 / baseline p50), its interval and a verdict ("regression", "improvement", "unchanged").

    The gate fails (``passed`` False, a reason per problem in ``failures``) on a regression, on a
    baseline entry this run lacks (the same model under another name, another batch size: its latency
    was never judged), and when no entry was judged at all; the control workload is not an entry.
    """
    diffs = check_environment(baseline["environment"], current["environment"], config.allow_environment_mismatch,
                              baseline.get("settings"), current.get("settings"))
    old = {(e["candidate"], e["batch_size"]): e for e in baseline["entries"]}
    new = {(e["candidate"], e["batch_size"]): e for e in current["entries"]}
    rng = np.random.default_rng(0)
    rows = []
    for key in [k for k in new if k in old and k[0] != CONTROL_NAME]:
        before, after = old[key]["repeats_ms"], new[key]["repeats_ms"]
        raw = _median_of_medians(after) / _median_of_medians(before)
        control = (CONTROL_NAME, key[1])
        normalized = control in old and control in new
        if normalized:  # judge candidate/control per round: machine-wide slowdowns cancel
            before, after = _per_round_ratio(before, old[control]["repeats_ms"]), _per_round_ratio(after, new[control]["repeats_ms"])
        ratios = (_hierarchical_medians(after, rng, config.bootstrap_samples)
                  / _hierarchical_medians(before, rng, config.bootstrap_samples))
        alpha = 1.0 - config.confidence
        low, high = (float(q) for q in np.quantile(ratios, [alpha / 2, 1 - alpha / 2]))
        slowdown = _median_of_medians(after) / _median_of_medians(before)
        verdict = ("regression" if low > 1.0 + config.tolerance
                   else "improvement" if high < 1.0 / (1.0 + config.tolerance) else "unchanged")
        rows.append({"candidate": key[0], "batch_size": key[1], "baseline_ms_p50": _median_of_medians(old[key]["repeats_ms"]),
                     "current_ms_p50": _median_of_medians(new[key]["repeats_ms"]), "slowdown": slowdown,
                     "slowdown_ci_low": low, "slowdown_ci_high": high, "verdict": verdict, "raw_slowdown": raw,
                     "control_normalized": normalized, "repeats": {"baseline": len(before), "current": len(after)}})
    regressions = [r for r in rows if r["verdict"] == "regression"]
    missing = [f"{c} @ batch {b}" for c, b in old if (c, b) not in new and c != CONTROL_NAME]
    failures = [f"regression: {r['candidate']} @ batch {r['batch_size']} is {r['slowdown']:.2f}× slower" for r in regressions]
    failures += [f"baseline entry {m} is missing from this run, so it was not judged" for m in missing]
    if not rows:
        judged = sum(c != CONTROL_NAME for c, _ in old)
        failures.append(f"no entry was judged: the baseline has {judged} entr{'y' if judged == 1 else 'ies'} "
                        f"and this run {sum(c != CONTROL_NAME for c, _ in new)}, none in common")
    return {"tolerance": config.tolerance, "confidence": config.confidence, "entries": rows,
            "regressions": len(regressions), "improvements": sum(r["verdict"] == "improvement" for r in rows),
            "missing": missing, "new": [f"{c} @ batch {b}" for c, b in new if (c, b) not in old and c != CONTROL_NAME],
            "environment_differences": diffs, "failures": failures, "passed": not failures}


def judge_golden(baseline_path: str | os.PathLike, baseline: Mapping[str, Any], outputs: Mapping[str, Mapping[str, Any]],
                 tolerances: Any, per_output: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Compare this run's outputs (``{candidate: {output: array}}``) with the golden ones the baseline records.

    Returns ``{"results": {candidate: compare_outputs result}, "failures": [...], "passed": bool}``. It
    fails when the baseline records no golden outputs (``golden`` null or absent: nothing would be
    checked), when a candidate with golden outputs is not in this run, and when outputs differ beyond
    ``tolerances`` (a `trtopt.measure.compare.Tolerances`; ``per_output`` by output name).

    Raises:
        TrtoptError: the golden file is missing or does not match its recorded sha256.
    """
    from trtopt.measure.compare import compare_outputs

    if not baseline.get("golden"):
        reason = "the baseline records no golden outputs (golden: null), so this run's outputs were not checked"
        return {"results": {}, "failures": [reason], "passed": False}
    golden = load_golden(baseline_path, baseline["golden"])
    results = {name: compare_outputs(golden[name], outputs[name], tolerances, per_output) for name in golden if name in outputs}
    failures = [f"golden outputs of {name} were not compared: {name} is not in this run" for name in golden if name not in outputs]
    failures += [f"{name}: outputs differ from the golden ones in " + ", ".join(o["output"] for o in r["outputs"] if not o["passed"])
                 for name, r in results.items() if not r["passed"]]
    if not results and not failures:
        failures.append(f"the golden file {baseline['golden'].get('path')} holds no outputs, so nothing was checked")
    return {"results": results, "failures": failures, "passed": not failures}


def markdown_summary(comparison: Mapping[str, Any], golden: Mapping[str, Any] | None = None) -> str:
    """A Markdown summary fit for a CI log: one row per entry, the verdicts, and golden-output results.

    ``golden`` is :func:`judge_golden`'s result (None: outputs were not part of the gate). The last line
    is the verdict, PASS only when the gate passed; a FAIL names every reason.
    """
    tol = comparison["tolerance"]
    heading = (f"## Latency vs baseline (regression = slower by > {tol:.0%}, "
               f"{comparison['confidence']:.0%} interval entirely above)")
    lines = [heading, "",
             "| candidate | batch | baseline p50 (ms) | current p50 (ms) | raw × | slowdown × [CI] | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in comparison["entries"]:
        mark = {"regression": "**REGRESSION**", "improvement": "improvement", "unchanged": "unchanged"}[r["verdict"]]
        interval = f"{r['slowdown']:.3f} [{r['slowdown_ci_low']:.3f}, {r['slowdown_ci_high']:.3f}]"
        lines.append(f"| {r['candidate']} | {r['batch_size']} | {r['baseline_ms_p50']:.3f} | {r['current_ms_p50']:.3f} | "
                     f"{r['raw_slowdown']:.3f} | {interval} | {mark} |")
    if any(r["control_normalized"] for r in comparison["entries"]):
        lines += ["", ("Slowdown is judged relative to the control workload timed in the same rounds "
                       "(raw × = plain ratio of medians).")]
    for label in ("missing", "new"):
        if comparison[label]:
            lines += ["", f"{label.capitalize()} entries: " + ", ".join(comparison[label])]
    if comparison["environment_differences"]:
        lines += ["", "Environment differs (compared anyway): " + "; ".join(comparison["environment_differences"])]
    if golden is not None:
        lines += ["", "## Outputs vs golden", ""]
        for cand, result in golden["results"].items():
            failed = [o["output"] for o in result["outputs"] if not o["passed"]]
            lines.append(f"- {cand}: " + ("match" if not failed else "**MISMATCH** in " + ", ".join(failed)))
    failures = gate_failures(comparison, golden)
    counts = f"{comparison['regressions']} regression(s), {comparison['improvements']} improvement(s)"
    lines += ["", f"**FAIL**: {counts}; " + "; ".join(failures) if failures else f"**PASS**: {counts}"]
    return "\n".join(lines) + "\n"


def gate_failures(comparison: Mapping[str, Any], golden: Mapping[str, Any] | None = None) -> list[str]:
    """Every reason the gate fails: latency (:func:`compare_with_baseline`), then outputs (:func:`judge_golden`)."""
    return [*comparison["failures"], *(golden["failures"] if golden is not None else [])]


def append_history(path: str | os.PathLike, comparison: Mapping[str, Any], environment: Mapping[str, Any],
                   golden: Mapping[str, Any] | None = None) -> Path:
    """Append one JSON line (time, verdicts and their reasons, per-entry p50s, environment summary) to a history file.

    ``golden`` is :func:`judge_golden`'s result, or None when outputs were not gated. The history is
    append-only JSON Lines so a CI job can chart latency over time; each line is written with a single
    ``write`` call, so an interrupted job never leaves half a line.
    """
    failures = gate_failures(comparison, golden)
    record = {"created_utc": _now(), "passed": not failures, "failures": failures,
              "regressions": comparison["regressions"], "golden_passed": None if golden is None else golden["passed"],
              "entries": [{k: r[k] for k in ("candidate", "batch_size", "current_ms_p50", "slowdown", "verdict")}
                          for r in comparison["entries"]],
              "environment": {k: _dig(environment, k) for k in ENVIRONMENT_KEYS}}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")
    return p


def _per_round_ratio(candidate: Sequence[Sequence[float]], control: Sequence[Sequence[float]]) -> list[list[float]]:
    """Per repeat, each round's candidate latency divided by the control's latency of the same round."""
    return [[c / k for c, k in zip(cand, ctrl, strict=True)] for cand, ctrl in zip(candidate, control, strict=True)]


def _median_of_medians(repeats: Sequence[Sequence[float]]) -> float:
    """A run's latency: the median over repeats of each repeat's median (ms)."""
    return float(np.median([np.median(run) for run in repeats]))


def _hierarchical_medians(repeats: Sequence[Sequence[float]], rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` bootstrap replicates of :func:`_median_of_medians`: resample repeats, then calls within each.

    Resampling at both levels makes the interval as wide as the run-to-run variation the repeats show,
    which a bootstrap of pooled calls would hide (it treats one run's offset as certain).
    """
    medians = np.empty((len(repeats), n))
    for i, run in enumerate(repeats):
        values = np.asarray(run, dtype=np.float64)
        medians[i] = np.median(values[rng.integers(0, values.size, size=(n, values.size))], axis=1)
    chosen = rng.integers(0, len(repeats), size=(n, len(repeats)))
    return np.median(medians[chosen, np.arange(n)[:, None]], axis=1)


def _dig(data: Mapping[str, Any], dotted: str) -> Any:
    value: Any = data
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if dotted == "gpus" and isinstance(value, list):  # names only: clocks and temperatures vary run to run
        return [g.get("name") for g in value]
    return value


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
