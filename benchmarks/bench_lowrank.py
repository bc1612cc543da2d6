"""Low-rank factorization on real models at several energy levels: parameter reduction, ORT CPU speedup of
the exported ONNX vs the original's ONNX (interleaved timing, 2 threads), accuracy before/after distillation.

- zoo:digits_cnn (Conv2d + Linear, conv scheme "auto"): top-1 on the sklearn digits test split (359 real
  images) after factorizing and after distillation (KD from the FP32 model + labels, train split).
- zoo:minilm_l6 (all Linear layers of the encoder): mean embedding cosine vs FP32 on the model card's
  sentences (held out), after factorizing and after cosine distillation on stdlib docstring sentences.
Each model's ONNX files (original + one per energy level) are timed together, interleaved, at batch 1
and 8 (MiniLM: 64 tokens). Writes ``benchmarks/results/lowrank.json`` (``--part`` runs one model and
keeps the other's earlier results). Run under ``flock /tmp/trtopt-heavy.lock``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compress_common import THREADS, digits_distill_config, minilm_cosine, minilm_data, minilm_distill_config

from trtopt.backends.ort import OrtConfig
from trtopt.compress.config import LowRankConfig
from trtopt.compress.distill import distill
from trtopt.compress.lowrank import factorize_
from trtopt.environment import environment
from trtopt.export import ExportConfig, export_onnx
from trtopt.files import write_json
from trtopt.measure.bench import bench, onnx_candidate
from trtopt.measure.profile import TimingConfig
from trtopt.metrics import topk_accuracy
from trtopt.models.load import load_model
from trtopt.models.spec import LoadedModel

OUT = Path(__file__).resolve().parent / "results" / "lowrank.json"


def timed(paths: dict[str, Path], feed: dict[str, np.ndarray], batch_sizes: tuple[int, ...], iterations: int) -> dict[str, Any]:
    """ORT latency of every ONNX file, interleaved; speedups vs the first (the original)."""
    ort = OrtConfig(intra_op_threads=THREADS)
    cands = [onnx_candidate(p, name, ort) for name, p in paths.items()]
    result = bench(cands, feed, batch_sizes, TimingConfig(warmup_iterations=5, iterations=iterations))
    for c in cands:
        c.runner.close()
    out = {}
    for per_batch in result["per_batch"]:
        c = per_batch["candidates"]
        out[f"batch_{per_batch['batch_size']}"] = {
            name: {"latency_ms_p50": v["latency_ms_p50"], "speedup_vs_original": v.get("speedup_vs_baseline")}
            for name, v in c.items()}
    return out


def summary(report: Any) -> dict[str, Any]:
    d = report.to_dict()
    keep = ("factorized_layers", "skipped_layers", "parameters_before", "parameters_after", "parameter_reduction",
            "compression_ratio_parameters", "factorized_macs_before", "factorized_macs_after", "seconds")
    return {**{k: d[k] for k in keep}, "layers": [{k: la[k] for k in ("name", "scheme", "rank", "energy_kept", "params_before",
                                                                     "params_after", "skipped")} for la in d["layers"]]}


def digits(tmp: Path, energies: tuple[float, ...], epochs: int) -> dict[str, Any]:
    from trtopt.datasets import load_dataset

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    x_test = torch.from_numpy(test.inputs["input"])
    loaded = load_model("zoo:digits_cnn")
    teacher = loaded.module

    def acc(model: Any) -> float:
        with torch.no_grad():
            return topk_accuracy(model(x_test).numpy(), test.labels)

    paths = {"original": export_onnx(loaded, tmp / "digits.onnx", ExportConfig(), feed=test.inputs, force=True).path}
    result: dict[str, Any] = {"model": "zoo:digits_cnn", "dataset": "sklearn digits test split (359 images)",
                              "top1_accuracy_fp32": acc(teacher), "levels": {}}
    for energy in energies:
        student, report = factorize_(copy.deepcopy(teacher).requires_grad_(True), LowRankConfig(energy=energy), example_inputs=x_test[:1])
        row = {"report": summary(report), "top1_accuracy_factorized": acc(student)}
        fit = distill(student, teacher, (torch.from_numpy(train.inputs["input"]), torch.from_numpy(train.labels)),
                      digits_distill_config(epochs))
        row["distill"] = {"steps": fit.steps, "seconds": fit.seconds, "config": fit.config}
        row["top1_accuracy_distilled"] = acc(student)
        name = f"energy_{energy}"
        art = export_onnx(LoadedModel(student.eval(), name, loaded.inputs), tmp / f"{name}.onnx", ExportConfig(),
                          feed=test.inputs, force=True)
        row["onnx_bytes"] = art.size_bytes
        paths[name] = art.path
        result["levels"][name] = row
        print(name, {k: v for k, v in row.items() if "accuracy" in k}, report.parameter_reduction, flush=True)
    result["onnx_bytes_original"] = (tmp / "digits.onnx").stat().st_size
    result["onnx_paths"] = {k: str(v) for k, v in paths.items()}
    return result


def minilm(tmp: Path, energies: tuple[float, ...], steps: int, lr: float) -> dict[str, Any]:
    loaded = load_model("zoo:minilm_l6")
    teacher = loaded.module
    data = minilm_data()
    with torch.no_grad():
        ref = teacher(**data["card"]).numpy()
    feed = data["card_numpy"]
    paths = {"original": export_onnx(loaded, tmp / "minilm.onnx", ExportConfig(), feed=feed, force=True).path}
    result: dict[str, Any] = {"model": "zoo:minilm_l6", "layers": "every nn.Linear of the encoder",
                              "evaluation": f"{data['card_sentences']} model-card sentences (held out)", "levels": {}}
    for energy in energies:
        student, report = factorize_(copy.deepcopy(teacher).requires_grad_(True), LowRankConfig(energy=energy),
                                    example_inputs={k: v[:1] for k, v in data["card"].items()})
        row = {"report": summary(report), "cosine_vs_fp32_factorized": minilm_cosine(student, ref, data["card"])}
        fit = distill(student, teacher, (data["train"], None), minilm_distill_config(steps, lr), eval_data=(data["val"], None))
        row["distill"] = {"steps": fit.steps, "seconds": fit.seconds, "eval_history": fit.eval_history,
                          "data": f"{data['train_sentences']} stdlib docstring sentences, cosine loss to FP32"}
        row["cosine_vs_fp32_distilled"] = minilm_cosine(student, ref, data["card"])
        name = f"energy_{energy}"
        art = export_onnx(LoadedModel(student.eval(), name, loaded.inputs, loaded.output_names), tmp / f"{name}.onnx",
                          ExportConfig(), feed=feed, force=True)
        row["onnx_bytes"] = art.size_bytes
        paths[name] = art.path
        result["levels"][name] = row
        print(name, row["cosine_vs_fp32_factorized"], row["cosine_vs_fp32_distilled"], report.parameter_reduction, flush=True)
    result["onnx_bytes_original"] = (tmp / "minilm.onnx").stat().st_size
    result["onnx_paths"] = {k: str(v) for k, v in paths.items()}
    return result


def time_saved(results: dict[str, Any], iterations: int) -> None:
    """Time the ONNX files a previous ``--stage build`` left in the work folder (interleaved, per model)."""
    from compress_common import minilm_data

    from trtopt.datasets import load_dataset

    if "digits_cnn" in results:
        paths = {k: Path(v) for k, v in results["digits_cnn"]["onnx_paths"].items()}
        results["digits_cnn"]["ort_latency"] = timed(paths, load_dataset("digits", "test").inputs, (1, 32), iterations)
    if "minilm" in results:
        paths = {k: Path(v) for k, v in results["minilm"]["onnx_paths"].items()}
        results["minilm"]["ort_latency"] = timed(paths, minilm_data()["card_numpy"], (1, 8), max(iterations // 3, 20))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=("digits", "minilm", "all"), default="all")
    parser.add_argument("--stage", choices=("build", "time", "all"), default="all",
                        help="build: factorize, distill, evaluate, export into --workdir; time: ORT timing of those files")
    parser.add_argument("--workdir", default=None, help="keeps the ONNX files between --stage build and --stage time")
    parser.add_argument("--cnn-energies", type=float, nargs="+", default=[0.95, 0.85, 0.7])
    parser.add_argument("--minilm-energies", type=float, nargs="+", default=[0.9, 0.75])
    parser.add_argument("--cnn-epochs", type=int, default=3)
    parser.add_argument("--minilm-steps", type=int, default=60)
    parser.add_argument("--minilm-lr", type=float, default=5e-4)
    parser.add_argument("--iterations", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    results: dict[str, Any] = json.loads(OUT.read_text()) if OUT.exists() else {}
    results.update({"benchmark": "low-rank factorization (trtopt.compress.lowrank)", "threads": THREADS, "environment": environment()})
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        work = Path(args.workdir) if args.workdir else Path(d)
        work.mkdir(parents=True, exist_ok=True)
        if args.stage in ("build", "all"):
            if args.part in ("digits", "all"):
                results["digits_cnn"] = digits(work, tuple(args.cnn_energies), args.cnn_epochs)
            if args.part in ("minilm", "all"):
                results["minilm"] = minilm(work, tuple(args.minilm_energies), args.minilm_steps, args.minilm_lr)
        if args.stage in ("time", "all"):
            time_saved(results, args.iterations)
        results[f"seconds_{args.part}_{args.stage}"] = time.perf_counter() - start
        write_json(OUT, results, force=True)
    print(f"wrote {OUT} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
