"""Low-rank factorization on pretrained models, measured on held-out real data (issue 17).

One JSON row per (model, setting), written as soon as it is measured:

- parameters before/after (whole model), factorized / skipped layers (skips grouped by reason);
- ONNX file size (FP32 original vs factorized);
- ONNX Runtime CPU latency (2 threads) at batch 1 and 8, p50, timed **interleaved in one run** for three
  sessions: the FP32 ONNX, the *same* FP32 ONNX in a second session (the control: its "speedup" shows the
  machine's noise) and the factorized ONNX; speedups are paired-bootstrap median ratios vs the first;
- fidelity to FP32 on held-out data right after factorizing and after ``--steps`` distillation steps from
  the FP32 model (BatchNorm statistics frozen: a few small batches would re-estimate them badly).

Models and data (the helpers of ``bench_share_pretrained.py``):
- EfficientNet-Lite0/1/2 (ImageNet weights): trained on random crops of scikit-image photos 0-9, fidelity
  = top-1 agreement with FP32 on crops of photos 10-18 (held out); the timed batch is held-out crops.
- all-MiniLM-L6-v2: trained on standard-library docstring sentences (32 tokens), fidelity = mean cosine
  to FP32 embeddings of the model card's sentences (64 tokens, held out), timed on those.

Settings: ``energy:E`` (keep E of each layer's squared singular values) or ``params:F`` (a parameter budget,
F of the selected layers' parameters), optionally with ``/min_rank=N``. Writes ``benchmarks/results/lowrank_pretrained.json`` (rows keyed by
model and setting; a rerun replaces its rows and keeps the others). Run from the repository root with
``PYTHONPATH=.`` (this checkout's trtopt) under ``nice``; 2 threads.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_share_pretrained import CNNS, cnn_data, minilm_data
from compress_common import THREADS

from trtopt.compress.config import DistillConfig, LowRankConfig
from trtopt.compress.distill import distill, fidelity_probe
from trtopt.compress.lowrank import factorize_
from trtopt.compress.trainer import frozen_batchnorm
from trtopt.environment import environment
from trtopt.export import ExportConfig, export_onnx
from trtopt.files import write_json
from trtopt.measure.bench import bench, onnx_candidate
from trtopt.measure.profile import TimingConfig
from trtopt.models.load import load_model

OUT = Path(__file__).resolve().parent / "results" / "lowrank_pretrained.json"
DEFAULT_SETTINGS = {"minilm": ["energy:0.95", "energy:0.9", "params:0.5"],
                    **{name: ["energy:0.9", "params:0.5"] for name in CNNS}}


def low_rank_config(setting: str) -> LowRankConfig:
    """``energy:E`` → the energy rule at E; ``params:F`` → a parameter budget of F; a suffix ``/min_rank=N``
    sets that field (``/min_rank=1``: the selection before the thin-split floor)."""
    rule, *extra = setting.split("/")
    fields = {key: int(value) for key, _, value in (e.partition("=") for e in extra)}
    kind, _, value = rule.partition(":")
    if kind == "energy":
        return LowRankConfig(energy=float(value), **fields)
    if kind == "params":
        return LowRankConfig(method="params", param_budget=float(value), **fields)
    raise SystemExit(f"unknown setting {setting!r}: write energy:E or params:F (+ /min_rank=N)")


def timed(fp32: Path, factorized: Path, feed: dict[str, np.ndarray], batch_sizes: tuple[int, ...],
          iterations: int) -> dict[str, Any]:
    """p50 latency and speedup vs FP32 of: FP32, FP32 again in a second session (control), the factorized model."""
    cands = [onnx_candidate(fp32, "fp32", threads=THREADS), onnx_candidate(fp32, "fp32_control", threads=THREADS),
             onnx_candidate(factorized, "factorized", threads=THREADS)]
    try:
        result = bench(cands, feed, batch_sizes, TimingConfig(warmup_iterations=5, iterations=iterations))
    finally:
        for c in cands:
            c.runner.close()
    out = {}
    for per_batch in result["per_batch"]:
        row = {"load_average": per_batch["load_average"]}
        for name, v in per_batch["candidates"].items():
            row[f"{name}_latency_ms_p50"] = v["latency_ms_p50"]
            s = v.get("speedup_vs_baseline")
            if s:
                row[f"{name}_speedup"] = s["speedup"]
                row[f"{name}_speedup_ci"] = [s["speedup_ci_low"], s["speedup_ci_high"]]
        out[f"batch_{per_batch['batch_size']}"] = row
    return out


def skip_reasons(layers: list[dict[str, Any]]) -> dict[str, int]:
    """Skipped layers counted by reason (numbers stripped so that one reason is one key)."""
    import re

    return dict(Counter(re.sub(r"\d[\d,.]*", "N", la["skipped"]) for la in layers if la["skipped"]))


def save_row(row: dict[str, Any]) -> None:
    """Add or replace ``row`` (keyed by model and setting) in OUT; a lock lets runs for several models share it."""
    import fcntl

    with open(Path(tempfile.gettempdir()) / "bench_lowrank_pretrained.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(OUT.read_text()) if OUT.exists() else {"rows": []}
        results.update({"benchmark": "low-rank factorization on pretrained models (issue 17)", "threads": THREADS,
                        "environment": environment()})
        results["rows"] = [r for r in results["rows"]
                           if (r["model"], r["setting"]) != (row["model"], row["setting"])] + [row]
        write_json(OUT, results, force=True)


def run_model(name: str, settings: list[str], steps: int, batch: int, lr: float, cnn_train: int, cnn_eval: int,
              iterations: int, tmp: Path) -> None:
    embeddings = name == "minilm"
    loaded = load_model("zoo:minilm_l6" if embeddings else f"zoo:efficientnet_{name}")
    if embeddings:
        data = minilm_data(8)
        feed = {k: v.numpy() for k, v in data["held_out"][0].items()}
        example = {k: v[:1] for k, v in data["held_out"][0].items()}
    else:
        data = cnn_data(cnn_train, cnn_eval, 8, CNNS[name])
        feed = {loaded.inputs[0].name: data["held_out"][0]}
        example = torch.from_numpy(data["held_out"][0][:1])
    teacher = loaded.module
    held_out = fidelity_probe(teacher, data["held_out"], embeddings)
    fp32 = export_onnx(loaded, tmp / f"{name}_fp32.onnx", ExportConfig(), feed=feed, force=True)
    for setting in settings:
        start = time.perf_counter()
        config = low_rank_config(setting)
        student, report = factorize_(copy.deepcopy(teacher), config, example_inputs=example)
        rep = report.to_dict()
        art = export_onnx(dataclasses.replace(loaded, module=student.eval()), tmp / f"{name}_lowrank.onnx",
                          ExportConfig(), feed=feed, force=True)
        row: dict[str, Any] = {
            "model": loaded.spec, "setting": setting, "config": rep["config"], "data": data["description"],
            "parameters_before": rep["parameters_before"], "parameters_after": rep["parameters_after"],
            "parameter_reduction": rep["parameter_reduction"], "factorized_layers": rep["factorized_layers"],
            "skipped_layers": rep["skipped_layers"], "skipped_by_reason": skip_reasons(rep["layers"]),
            "schemes": dict(Counter(la["scheme"] for la in rep["layers"] if not la["skipped"])),
            "onnx_bytes_fp32": fp32.size_bytes, "onnx_bytes_factorized": art.size_bytes,
            "fidelity_factorized": held_out(student)}
        print(loaded.spec, setting, f"params {rep['parameters_before']:,} → {rep['parameters_after']:,} "
              f"({rep['parameter_reduction']:.1%}), {rep['factorized_layers']} factorized; fidelity "
              f"{row['fidelity_factorized']['value']:.3f}", flush=True)
        if rep["factorized_layers"]:
            row["ort_latency"] = timed(fp32.path, art.path, feed, (1, 8), iterations)
            print("  ", json.dumps(row["ort_latency"]), flush=True)
        save_row(row)
        if steps and rep["factorized_layers"]:
            tune = DistillConfig(output_loss="cosine" if embeddings else "kl", epochs=None, max_steps=steps,
                                 batch_size=batch, lr=lr, restore_best=False, device="cpu")
            with frozen_batchnorm(student.requires_grad_(True)):
                fit = distill(student, teacher, data["train"], tune)
            row["distill"] = {"steps": fit.steps, "batch_size": batch, "lr": lr, "seconds": fit.seconds,
                              "loss_first": fit.step_losses[0], "loss_last": fit.step_losses[-1],
                              "data": data["description"].split(";")[0], "batchnorm": "statistics frozen"}
            row["fidelity_distilled"] = held_out(student.eval())
            print(f"   after {steps} distillation steps: {row['fidelity_distilled']['value']:.3f}", flush=True)
        row["seconds"] = time.perf_counter() - start
        save_row(row)
        del student


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["minilm", "lite0", "lite1", "lite2"], choices=("minilm", *CNNS))
    parser.add_argument("--settings", nargs="+", default=None, help="energy:E / params:F (default: per model)")
    parser.add_argument("--steps", type=int, default=20, help="distillation steps after factorizing")
    parser.add_argument("--batch", type=int, default=8, help="samples per distillation step")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of the distillation (AdamW, cosine)")
    parser.add_argument("--cnn-train", type=int, default=160)
    parser.add_argument("--cnn-eval", type=int, default=45)
    parser.add_argument("--iterations", type=int, default=40, help="timed rounds per batch size (interleaved)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as d:
        for name in args.models:
            run_model(name, args.settings or DEFAULT_SETTINGS[name], args.steps, args.batch, args.lr, args.cnn_train,
                      args.cnn_eval, args.iterations, Path(d))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
