"""Third-party ONNX through calibrate → quantize (onnxruntime target) → compare.

The models are the ones shipped inside the installed ``onnx`` wheel (``onnx/backend/test/data``:
simple, pytorch-converted, pytorch-operator; written by ONNX's and PyTorch's own exporters years ago,
opsets 1–21), each fed its own ``test_data_set_0`` inputs, plus the operator cases of
``onnx.backend.test.case.node.collect_testcases()`` with tensor data. For each model: FP32 in ONNX
Runtime (checked against the case's own reference outputs), minmax calibration on its inputs,
quantization for the onnxruntime target, INT8 in ONNX Runtime, comparison with FP32.

Outcomes: ``ok`` (every stage ran), ``not_quantizable`` (it ran, calibrated, and quantize refused
because there is no Conv/MatMul/Gemm for INT8 to speed up), ``error`` (a stage refused with trtopt's
one-line error, which names the op and target for unsupported ops), ``crash`` (an exception that is not
a TrtoptError: a trtopt bug; there should be none). Models whose ops ONNX Runtime no longer has at their
old opset are retried after ``trtopt.quant.foreign.upgrade_opset`` to opset 17 and counted separately.

Writes ``benchmarks/results/foreign_onnx.json``. Run: ``flock /tmp/trtopt-heavy.lock python
benchmarks/bench_foreign_onnx.py`` (about a minute on 2 cores; no timing, so the lock only keeps
others' timings clean).
"""

from __future__ import annotations

import collections
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from trtopt.environment import environment
from trtopt.errors import TrtoptError
from trtopt.files import write_json
from trtopt.quant.foreign import check_pipeline, load_case, node_cases, shipped_cases, upgrade_opset

OUT = Path(__file__).resolve().parent / "results" / "foreign_onnx.json"


def _guarded(name: str, run: Any) -> dict[str, Any]:
    try:
        record = run()
    except TrtoptError as e:
        record = {"status": "error", "stage": "load", "error": str(e)}
    except Exception as e:  # a trtopt bug: recorded, not hidden
        record = {"status": "crash", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-800:]}
    record["model"] = name
    return record


def shipped(tmp: Path) -> list[dict[str, Any]]:
    records = []
    for folder in shipped_cases():
        name = f"{folder.parent.name}/{folder.name}"

        def run(folder: Path = folder) -> dict[str, Any]:
            case = load_case(folder)
            record = check_pipeline(case.model, case.inputs, expected=case.outputs)
            if record["status"] == "error" and record["stage"] == "fp32" and "opset" in (record["error"] or ""):
                upgraded = upgrade_opset(case.model, tmp / f"{folder.name}.onnx", opset=17, force=True)
                retry = check_pipeline(upgraded.path, case.inputs, expected=case.outputs)
                record["after_upgrade_to_opset_17"] = {k: retry.get(k) for k in
                                                        ("status", "stage", "error", "int8_vs_fp32", "fp32_vs_reference")}
            return record

        records.append(_guarded(name, run))
    return records


def operators(tmp: Path) -> list[dict[str, Any]]:
    import onnx

    records = []
    for name, model, inputs, outputs in node_cases():
        def run(name: str = name, model: Any = model, inputs: Any = inputs, outputs: Any = outputs) -> dict[str, Any]:
            path = tmp / f"{name}.onnx"
            onnx.save(model, str(path))
            return check_pipeline(path, inputs, expected=outputs)

        record = _guarded(f"node/{name}", run)
        # Keep the file small: only what explains the outcome.
        keep = ("model", "status", "stage", "error", "int8_vs_fp32", "fp32_vs_reference")
        records.append({k: record[k] for k in keep if record.get(k) is not None and (k != "error" or record["status"] == "error")})
    return records


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    counts = collections.Counter(r["status"] for r in records)
    fp32_ref = [r["fp32_vs_reference"]["passed"] for r in records if r.get("fp32_vs_reference")]
    cosines = [r["int8_vs_fp32"]["min_cosine"] for r in records if r.get("int8_vs_fp32") and r["int8_vs_fp32"]["min_cosine"] is not None]
    errors = collections.Counter((r.get("stage"), (r.get("error") or "").split(";")[0].split(" of ")[0]) for r in records
                                 if r["status"] == "error")
    upgraded = [r["after_upgrade_to_opset_17"] for r in records if "after_upgrade_to_opset_17" in r]
    out: dict[str, Any] = {
        "models": len(records), "ok": counts["ok"], "not_quantizable": counts["not_quantizable"],
        "error": counts["error"], "crash": counts["crash"],
        "through_calibrate_quantize_compare": counts["ok"],
        "fp32_matches_shipped_reference": f"{sum(fp32_ref)}/{len(fp32_ref)}",
        "int8_vs_fp32_cosine_min": min(cosines) if cosines else None,
        "int8_vs_fp32_cosine_median": float(np.median(cosines)) if cosines else None,
        "errors_by_stage_and_message": [{"stage": s, "error": m, "count": c} for (s, m), c in errors.most_common()],
    }
    if upgraded:
        out["opset_upgraded_retry"] = {"models": len(upgraded),
                                       **collections.Counter(u["status"] for u in upgraded)}
    return out


def main() -> None:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trtopt-foreign-bench-") as tmp:
        shipped_records = shipped(Path(tmp))
        operator_records = operators(Path(tmp))
    result = {
        "what": "third-party ONNX models from the onnx wheel through calibrate (minmax, own inputs) → quantize "
                "(onnxruntime target, U8S8) → compare (INT8 vs FP32 in ONNX Runtime)",
        "threads": 1,
        "environment": environment(),
        "shipped_models": {"summary": summarize(shipped_records), "models": shipped_records},
        "operator_cases": {"summary": summarize(operator_records), "cases": operator_records},
        "wall_s": round(time.perf_counter() - start, 1),
    }
    write_json(OUT, result, force=True)
    for group in ("shipped_models", "operator_cases"):
        s = result[group]["summary"]
        print(f"{group}: {s['models']} models: ok {s['ok']}, not quantizable {s['not_quantizable']}, "
              f"error {s['error']}, crash {s['crash']}; upgraded retry {s.get('opset_upgraded_retry')}")
    print(f"wrote {OUT} in {result['wall_s']} s")


if __name__ == "__main__":
    main()
