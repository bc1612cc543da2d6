"""How often the regression gate cries wolf, and how often it catches a real slowdown, on this machine.

For one ONNX model (a MatMul chain, ~1-3 ms per call) a baseline is recorded, then the *unchanged*
model is re-timed 10 times and judged against it, and so are models with 1.25× and 2× the work. Each
verdict is computed twice from the same samples: judged on raw latencies, and judged relative to the
control workload timed in the same rounds (what ``trtopt bench --baseline`` does). Repeats per run: 5.

Writes benchmarks/results/regression_gate.json. Run: ``python benchmarks/bench_regression_gate.py``.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from test_baseline import chain_model, timed_document  # noqa: E402  (the same models the tests use)

from trtopt.environment import environment  # noqa: E402
from trtopt.files import write_json  # noqa: E402
from trtopt.measure.baseline import CONTROL_NAME, GateConfig, compare_with_baseline

RERUNS = 10
TOLERANCE = 0.10


def without_control(document: dict) -> dict:
    raw = copy.deepcopy(document)
    raw["entries"] = [e for e in raw["entries"] if e["candidate"] != CONTROL_NAME]
    return raw


def verdicts(baseline: dict, current: dict) -> dict:
    config = GateConfig(tolerance=TOLERANCE)
    normalized = compare_with_baseline(baseline, current, config)["entries"]
    raw = compare_with_baseline(without_control(baseline), without_control(current), config)["entries"]
    return {"normalized": [(r["verdict"], round(r["slowdown"], 4)) for r in normalized],
            "raw": [(r["verdict"], round(r["slowdown"], 4)) for r in raw]}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="trtopt-gate-"))
    model = chain_model(work / "model.onnx", layers=8, width=512)
    baseline = timed_document(model)
    runs = {"unchanged": [], "1.25x_work": [], "2x_work": []}
    for _ in range(RERUNS):
        runs["unchanged"].append(verdicts(baseline, timed_document(model)))
    for label, layers in (("1.25x_work", 10), ("2x_work", 16)):
        slowed = chain_model(work / "slowed.onnx", layers=layers, width=512)
        for _ in range(RERUNS // 2):
            runs[label].append(verdicts(baseline, timed_document(slowed)))
    summary = {}
    for label, results in runs.items():
        for mode in ("raw", "normalized"):
            flags = [v for r in results for v, _ in r[mode]]
            summary[f"{label}_{mode}_regression_rate"] = sum(f == "regression" for f in flags) / len(flags)
            summary[f"{label}_{mode}_false_improvement_rate"] = sum(f == "improvement" for f in flags) / len(flags)
    result = {"what": __doc__.split("\n\n")[0], "tolerance": TOLERANCE, "reruns": RERUNS, "repeats_per_run": 5,
              "iterations_per_repeat": 30, "batch_sizes": [1, 8], "threads": 1,
              "baseline_p50_ms": {f"batch {e['batch_size']}": e["latency_ms_p50"] for e in baseline["entries"]
                                  if e["candidate"] != CONTROL_NAME},
              "summary": summary, "runs": runs, "environment": environment()}
    path = write_json(HERE / "results" / "regression_gate.json", result, force=True)
    print(json.dumps(summary, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
