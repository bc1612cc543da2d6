"""One model through ONNX Runtime, ExecuTorch and LiteRT, FP32 and INT8: size, CPU latency, agreement with PyTorch.

Models: the pretrained EfficientNet-Lite0 (``zoo:efficientnet_lite0``; evaluated on the 19 real photos of
scikit-image, calibrated on 32 random crops of them), the pretrained all-MiniLM-L6-v2 sentence encoder
(``zoo:minilm_l6``; model-card sentences, half to calibrate, half to evaluate), and a seeded 2-layer
``torch.nn.TransformerEncoder`` (d_model 128, 4 heads, 32 tokens; random float inputs) so every runtime
has a transformer it can quantize. Per model, all variants are timed interleaved in one process at
batch 1 with 2 threads each (ONNX Runtime FP32 is the baseline; PyTorch eager gives the reference
outputs but is not timed, see ``run_model``), and compared with PyTorch FP32:
top-1 agreement for the CNN, embedding cosine for the transformers.

INT8: ONNX Runtime = trtopt calibrate + quantize (onnxruntime target, U8S8); ExecuTorch = PT2E with
XNNPACKQuantizer (symmetric int8, per-channel weights) lowered to XNNPACK; LiteRT = PT2E with
litert-torch's quantizer, full-integer .tflite (int8 in/out; the runner's (de)quantization is timed).

Edge conversions take about a minute each on 2 cores, so converted files are kept in
``engines/edge/`` (ignored by git) and reused when their sidecar still matches; ``--rebuild`` redoes
them. Writes ``benchmarks/results/edge_cpu.json``. Run under the lock:
``flock /tmp/trtopt-heavy.lock python benchmarks/bench_edge.py``.
"""

from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from trtopt.backends.ort import OrtConfig
from trtopt.data import iter_photo_crops, load_feed
from trtopt.edge.artifact import inspect_edge
from trtopt.edge.convert import EdgeConfig
from trtopt.edge.export import export_edge
from trtopt.environment import environment, package_version
from trtopt.errors import TrtoptError
from trtopt.export import ExportConfig, export_onnx
from trtopt.files import write_json
from trtopt.measure.bench import Candidate, bench, edge_candidate, onnx_candidate, run_all, torch_candidate
from trtopt.measure.profile import TimingConfig
from trtopt.metrics import cosine_per_sample, top1_agreement
from trtopt.models.load import load_model
from trtopt.models.spec import InputSpec, LoadedModel
from trtopt.quant.calibrate import CalibrationConfig, calibrate
from trtopt.quant.quantize import QuantizeConfig, quantize

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "edge_cpu.json"
BUILD = ROOT / "engines" / "edge"
THREADS = 2
BATCH = 1


def encoder() -> LoadedModel:
    """A seeded 2-layer TransformerEncoder: (N, 32, 128) float → (N, 128) mean-pooled features."""
    import torch

    torch.manual_seed(0)

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layer = torch.nn.TransformerEncoderLayer(128, 4, 256, dropout=0.0, batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.encoder(x).mean(dim=1)

    return LoadedModel(Encoder().eval(), "torch:TransformerEncoder(d128,h4,L2,seq32) seeded",
                       (InputSpec("input", (32, 128), "float32", -1.0, 1.0),), output_names=("features",),
                       description="torch.nn.TransformerEncoder, 2 layers, seeded weights")


def datasets(name: str, loaded: LoadedModel) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], str]:
    """(calibration feed, evaluation feed, what they are) for each bench model."""
    if name == "efficientnet_lite0":
        photos = load_feed("skimage:photos", loaded.inputs, preprocess=loaded.preprocess)
        crops = {"input": np.concatenate([b["input"] for b in iter_photo_crops(32, pre=loaded.preprocess)])}
        return crops, photos, "calibrate: 32 random crops of the photos; evaluate: the 19 scikit-image photos"
    if name == "minilm_l6":
        from trtopt.models.zoo import minilm_card_sentences, tokenize_for_minilm

        card = minilm_card_sentences()
        return (tokenize_for_minilm(card[::2][:32]), tokenize_for_minilm(card[1::2]),
                "calibrate: 32 model-card sentences; evaluate: the other model-card sentences")
    rng = np.random.default_rng(0)
    return ({"input": rng.uniform(-1, 1, (32, 32, 128)).astype(np.float32)},
            {"input": rng.uniform(-1, 1, (16, 32, 128)).astype(np.float32)}, "seeded uniform [-1, 1) inputs")


def build_edge(loaded: LoadedModel, path: Path, precision: str, calib: dict[str, np.ndarray], rebuild: bool) -> dict[str, Any]:
    """Convert (or reuse) one edge file; returns {"artifact"} or {"error"} and the conversion time."""
    if not rebuild and path.is_file():
        try:
            art = inspect_edge(path)
            if art.source == loaded.spec and art.precision == precision:
                return {"artifact": art, "convert_s": None, "cached": True}
        except TrtoptError:
            pass
    start = time.perf_counter()
    try:
        art = export_edge(loaded, path, EdgeConfig(precision=precision, batch_size=BATCH),
                          calibration=calib if precision == "int8" else None, force=True)
    except TrtoptError as e:
        return {"error": str(e), "convert_s": round(time.perf_counter() - start, 1)}
    except Exception as e:  # recorded, not hidden: a converter crash trtopt did not turn into a TrtoptError
        return {"error": f"{type(e).__name__}: {e}"[:400], "traceback": traceback.format_exc()[-600:],
                "convert_s": round(time.perf_counter() - start, 1)}
    return {"artifact": art, "convert_s": round(time.perf_counter() - start, 1), "cached": False}


def agreement(ref: np.ndarray, out: np.ndarray, classes: bool) -> dict[str, float]:
    r, o = ref.reshape(len(ref), -1), out.reshape(len(out), -1)
    cos = cosine_per_sample(r, o)
    result = {"cosine_mean": float(np.nanmean(cos)), "cosine_min": float(np.nanmin(cos))}
    if classes:
        result["top1_agreement"] = top1_agreement(r, o)
        result["top1_agree_count"] = f"{round(result['top1_agreement'] * len(r))}/{len(r)}"
    return result


def run_model(name: str, loaded: LoadedModel, timing: TimingConfig, rebuild: bool, formats: tuple[str, ...]) -> dict[str, Any]:
    folder = BUILD / name
    folder.mkdir(parents=True, exist_ok=True)
    calib, evaluation, data_note = datasets(name, loaded)
    classes = name == "efficientnet_lite0"
    ort = OrtConfig(intra_op_threads=THREADS)
    # PyTorch eager gives the reference outputs but is not in the timed round: right after an XNNPACK
    # runtime (ExecuTorch, LiteRT) its threads find the 2 cores busy with that runtime's spinning
    # threadpool (measured on the encoder: 9.4 ms alone, 45.8 ms right after a .pte call).
    reference_cand = torch_candidate(loaded, name="pytorch-fp32", threads=THREADS)
    cands: list[Candidate] = []
    rows: dict[str, dict[str, Any]] = {"pytorch-fp32": {"runtime": "pytorch", "precision": "fp32",
                                                        "size_bytes": reference_cand.size_bytes, "timed": False}}
    start = time.perf_counter()
    fp32 = export_onnx(loaded, folder / "fp32.onnx", ExportConfig(), feed=evaluation, force=True)
    ranges = calibrate(fp32.path, calib, CalibrationConfig(method="percentile" if classes else "minmax"))
    # Transformers on ONNX Runtime: MatMul/Gemm only (quantizing every op costs MiniLM its accuracy).
    op_types = None if classes else ("MatMul", "Gemm")
    int8 = quantize(fp32.path, ranges, folder / "int8.onnx", QuantizeConfig(target="onnxruntime", op_types=op_types),
                    force=True)
    onnx_s = round(time.perf_counter() - start, 1)
    for label, art in (("onnxruntime-fp32", fp32), ("onnxruntime-int8", int8)):
        cands.append(onnx_candidate(art, label, ort))
        rows[label] = {"runtime": "onnxruntime", "precision": art.precision, "size_bytes": art.size_bytes,
                       "convert_s": onnx_s, "notes": list(art.notes)}
    for fmt, runtime in (("tflite", "litert"), ("pte", "executorch")):  # ExecuTorch last in each round (spins most)
        if fmt not in formats:
            continue
        for precision in ("fp32", "int8"):
            label = f"{runtime}-{precision}"
            built = build_edge(loaded, folder / f"{precision}.{fmt}", precision, calib, rebuild)
            rows[label] = {"runtime": runtime, "precision": precision, "convert_s": built["convert_s"],
                           "cached": built.get("cached")}
            if "error" in built:
                rows[label].update(error=built["error"], traceback=built.get("traceback"))
                print(f"  {name} {label}: {built['error'][:200]}", flush=True)
                continue
            art = built["artifact"]
            rows[label].update(size_bytes=art.size_bytes, notes=list(art.notes))
            cands.append(edge_candidate(art.path, label, threads=THREADS))
    ref = next(iter(run_all(reference_cand, evaluation).values()))
    reference_cand.runner.close()
    for cand in cands:
        rows[cand.name]["agreement_vs_pytorch"] = agreement(ref, next(iter(run_all(cand, evaluation).values())), classes)
    timed = bench(cands, evaluation, (BATCH,), timing)  # baseline: onnxruntime-fp32 (first)
    per = timed["per_batch"][0]["candidates"]
    for label, stats in per.items():
        rows[label]["latency_ms_p50"] = stats["latency_ms_p50"]
        if label != "onnxruntime-fp32":
            rows[label]["speedup_vs_onnxruntime_fp32"] = stats["speedup_vs_baseline"]
        rows[label]["runner"] = next(c.runner.describe() for c in cands if c.name == label)
    for cand in cands:
        cand.runner.close()
    return {"model": loaded.spec, "description": loaded.description, "data": data_note, "batch_size": BATCH,
            "samples_evaluated": len(ref), "rows": rows}


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| model | runtime | precision | size MB | p50 ms (b1, 2 thr) | speedup vs ORT FP32 [95% CI] | agreement with PyTorch FP32 |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        for row in r["rows"].values():
            if row.get("timed") is False:
                lines.append(f"| {r['model']} | pytorch | fp32 | {row['size_bytes'] / 1e6:.2f} | (not timed) | – | reference |")
                continue
            if "error" in row:
                lines.append(f"| {r['model']} | {row['runtime']} | {row['precision']} | – | – | – | failed: {row['error'][:90]} |")
                continue
            sp = row.get("speedup_vs_onnxruntime_fp32")
            spd = f"{sp['speedup']:.2f}× [{sp['speedup_ci_low']:.2f}, {sp['speedup_ci_high']:.2f}]" if sp else "1 (baseline)"
            ag = row.get("agreement_vs_pytorch", {})
            agree = (f"top-1 {ag['top1_agree_count']}, " if "top1_agree_count" in ag else "") + \
                (f"cos {ag['cosine_mean']:.4f}" if ag else "reference")
            lines.append(f"| {r['model']} | {row['runtime']} | {row['precision']} | {row['size_bytes'] / 1e6:.2f} | "
                         f"{row['latency_ms_p50']:.2f} | {spd} | {agree} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0", "minilm_l6", "encoder"])
    parser.add_argument("--formats", nargs="+", default=["pte", "tflite"])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--rebuild", action="store_true", help="convert the edge files again")
    args = parser.parse_args()
    timing = TimingConfig(warmup_iterations=5, iterations=args.iterations, min_iterations=10)
    start = time.perf_counter()
    results = []
    for name in args.models:
        loaded = encoder() if name == "encoder" else load_model(f"zoo:{name}")
        results.append(run_model(name, loaded, timing, args.rebuild, tuple(args.formats)))
        print(table(results[-1:]), flush=True)
    out = {"environment": environment(), "threads": THREADS, "timing": timing.to_dict(),
           "versions": {p: package_version(p) for p in ("executorch", "torchao", "litert-torch", "ai-edge-litert",
                                                         "onnxruntime", "torch")},
           "models": results, "table_markdown": table(results), "wall_s": round(time.perf_counter() - start, 1)}
    write_json(OUT, out, force=True)
    print(f"wrote {OUT} in {out['wall_s']} s")


if __name__ == "__main__":
    main()
