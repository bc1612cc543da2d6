"""Pruning + knowledge distillation, measured: accuracy before/after and exported ONNX latency on ORT CPU.

Parts (``--part``), each writing ``benchmarks/results/distill_<part>.json``:

- ``digits``: ``zoo:digits_cnn`` (teacher, 98.9 % on the digits test split) structurally pruned to ~50 %
  of its conv channels (`trtopt.compress.prune`, Torch-Pruning's dependency graph), then trained for the same
  number of steps twice from the same pruned weights: distilled from the unpruned teacher
  (α·CE + (1 − α)·T²·KL) and, for contrast, fine-tuned with CE only. Reports test accuracy of the
  teacher, right after pruning, after KD and after CE fine-tuning, and the exported ONNX latency of
  the teacher vs the distilled student on ONNX Runtime CPU (interleaved, 2 threads, batch 1 and larger
  batches, median speedup with a 95 % paired-bootstrap interval).
- ``minilm``: ``zoo:minilm_l6`` with attention heads and FFN width pruned, distilled on unlabelled
  sentences of the Lee corpus (embedding cosine to the teacher); reports cosine to the teacher and the
  Lee document-similarity correlation (Pearson/Spearman vs the human ratings) before and after.
- ``sparse``: ``zoo:digits_cnn`` with 2:4 semi-structured sparsity, distilled with the sparsity mask
  fixed (``keep_zeros``); reports accuracy before/after and runs the 2:4 checker on the exported ONNX.

Run each under the machine's benchmark lock, e.g.
``flock /tmp/trtopt-heavy.lock .venv/bin/python benchmarks/bench_distill.py --part digits``.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trtopt.compress.config import DistillConfig, PruneConfig
from trtopt.compress.distill import distill
from trtopt.compress.prune import count_macs, prune
from trtopt.datasets import load_dataset
from trtopt.environment import environment
from trtopt.export import ExportConfig, export_onnx
from trtopt.files import write_json
from trtopt.measure.bench import bench, onnx_candidate
from trtopt.measure.profile import TimingConfig
from trtopt.metrics import cosine_per_sample, topk_accuracy
from trtopt.models.load import load_model
from trtopt.models.spec import LoadedModel

RESULTS = Path(__file__).resolve().parent / "results"


@torch.inference_mode()
def accuracy(module: torch.nn.Module, inputs: np.ndarray, labels: np.ndarray) -> float:
    module.eval()
    logits = module(torch.from_numpy(inputs))
    return topk_accuracy(logits.numpy(), labels)


def _speedups(report: dict[str, Any], baseline: str, candidate: str) -> list[dict[str, Any]]:
    rows = []
    for per_batch in report["per_batch"]:
        stats = per_batch["candidates"]
        speed = stats[candidate]["speedup_vs_baseline"]
        rows.append({"batch_size": per_batch["batch_size"],
                     f"{baseline}_latency_ms_p50": stats[baseline]["latency_ms_p50"],
                     f"{candidate}_latency_ms_p50": stats[candidate]["latency_ms_p50"],
                     "speedup": speed["speedup"], "speedup_ci95": [speed["speedup_ci_low"], speed["speedup_ci_high"]]})
    return rows


def _time_onnx(models: dict[str, LoadedModel], feed: dict[str, np.ndarray], batch_sizes: tuple[int, ...],
               threads: int, iterations: int, workdir: Path) -> tuple[dict[str, Any], dict[str, int]]:
    candidates, sizes = [], {}
    for name, loaded in models.items():
        art = export_onnx(loaded, workdir / f"{name}.onnx", ExportConfig(), feed={k: v[:8] for k, v in feed.items()})
        sizes[name] = art.size_bytes
        candidates.append(onnx_candidate(art, name, threads=threads))
    timing = TimingConfig(warmup_iterations=30, iterations=iterations)
    return bench(candidates, feed, batch_sizes, timing), sizes


def part_digits(args: argparse.Namespace) -> dict[str, Any]:
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    x_train, x_test = train.inputs["input"], test.inputs["input"]
    teacher = load_model("zoo:digits_cnn")
    example = (torch.from_numpy(x_train[:4]),)
    pruned = prune(teacher.module, example, PruneConfig(method="structured", ratio=args.ratio, protect_first_last=False))
    widths = [pruned.module.conv1.out_channels, pruned.module.conv2.out_channels, pruned.module.conv3.out_channels]
    runs = {}
    for epochs in (args.epochs, args.short_epochs):  # the full budget, and a short one where soft targets matter more
        base = {"epochs": epochs, "batch_size": 32, "lr": 3e-3, "weight_decay": 1e-4, "scheduler": "cosine",
                "seed": 0, "restore_best": False}  # test split only monitored: nothing is selected on it
        for kind, kd_teacher, cfg in (("kd", teacher.module, DistillConfig(alpha=args.alpha, temperature=args.temperature, **base)),
                                      ("ce_finetune", None, DistillConfig(alpha=1.0, **base))):
            start = time.perf_counter()
            result = distill(copy.deepcopy(pruned.module), kd_teacher, (x_train, train.labels), cfg,
                             eval_data=(x_test, test.labels))
            runs[f"{kind}_{epochs}ep"] = {"student": result.student, "seconds": round(time.perf_counter() - start, 2),
                                          "test_accuracy": round(accuracy(result.student, x_test, test.labels), 5),
                                          "eval_history": result.eval_history,
                                          "epoch_losses": [round(v, 5) for v in result.epoch_losses], "config": result.config}
    accs = {"teacher": accuracy(teacher.module, x_test, test.labels),
            "pruned_before_training": accuracy(pruned.module, x_test, test.labels),
            **{f"pruned_{name}": run["test_accuracy"] for name, run in runs.items()}}
    runs["kd"] = runs[f"kd_{args.epochs}ep"]
    student = LoadedModel(runs["kd"]["student"], "pruned+kd digits_cnn", teacher.inputs)
    with tempfile.TemporaryDirectory() as tmp:
        timing, sizes = _time_onnx({"teacher": teacher, "pruned_kd": student}, test.inputs, tuple(args.batch_sizes),
                                   args.threads, args.iterations, Path(tmp))
    return {
        "title": "digits CNN: structured pruning (~50 % channels) + distillation from the unpruned teacher",
        "dataset": "sklearn digits: train 1438 / test 359 (trtopt.datasets)",
        "prune": {"config": pruned.to_dict()["config"], "widths_before": [32, 64, 128], "widths_after": widths,
                  "parameters_before": pruned.parameters_before, "parameters_after": pruned.parameters_after,
                  "pruning_rate_percent": round(pruned.pruning_rate_percent, 2), "channel_ratio": pruned.channel_ratio,
                  "macs_before": pruned.macs_before, "macs_after": pruned.macs_after,
                  "macs_reduction": round(pruned.macs_reduction, 3)},
        "test_accuracy": {k: round(v, 5) for k, v in accs.items()},
        "kd_minus_teacher_points": round(100 * (runs["kd"]["test_accuracy"] - accs["teacher"]), 2),
        "training": {k: {kk: vv for kk, vv in v.items() if kk != "student"} for k, v in runs.items() if k != "kd"},
        "onnx_size_bytes": sizes,
        "latency_ort_cpu": _speedups(timing, "teacher", "pruned_kd"),
        "timing_raw": timing,
        "threads": args.threads,
    }


def _lee_files() -> tuple[list[str], np.ndarray, list[str]]:
    """The Lee corpus from the gensim wheel's test data (read as files, Latin-1; gensim is not imported).

    Returns (the 50 test documents, their 50×50 mean human similarity ratings, the 300 background
    documents: training text, disjoint from the test documents).
    """
    import importlib.util

    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the Lee corpus ships in the gensim wheel: pip install --no-deps gensim==4.4.0")
    data = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data"
    docs = [d.strip() for d in (data / "lee.cor").read_text(encoding="latin-1").splitlines() if d.strip()]
    ratings = np.loadtxt(data / "similarities0-1.txt", encoding="latin-1")
    background = [d.strip() for d in (data / "lee_background.cor").read_text(encoding="latin-1").splitlines() if d.strip()]
    return docs, ratings, background


def _sentences(docs: list[str]) -> list[str]:
    import re

    return [s.strip() for d in docs for s in re.split(r"(?<=[.!?])\s+", d) if len(s.strip()) >= 30]


@torch.inference_mode()
def _embed(module: torch.nn.Module, feed: dict[str, np.ndarray], batch_size: int = 64) -> torch.Tensor:
    module.eval()
    outs = []
    for start in range(0, len(feed["input_ids"]), batch_size):
        outs.append(module(torch.from_numpy(feed["input_ids"][start:start + batch_size]),
                           torch.from_numpy(feed["attention_mask"][start:start + batch_size])))
    return torch.cat(outs)


def _lee_scores(module: torch.nn.Module, docs_feed: dict[str, np.ndarray], ratings: np.ndarray,
                reference: torch.Tensor, held_out: dict[str, np.ndarray], reference_held_out: torch.Tensor) -> dict[str, float]:
    """Lee correlation (upper triangle of the 50×50 matrices) and mean cosine to the teacher's embeddings."""
    from scipy.stats import pearsonr, spearmanr

    emb = _embed(module, docs_feed)
    sims = torch.nn.functional.normalize(emb, dim=1) @ torch.nn.functional.normalize(emb, dim=1).T
    iu = np.triu_indices(len(ratings), 1)
    model_sims, human = sims.numpy()[iu], ratings[iu]
    cos_docs = cosine_per_sample(reference.numpy(), emb.numpy())
    cos_sent = cosine_per_sample(reference_held_out.numpy(), _embed(module, held_out).numpy())
    return {"lee_pearson": round(float(pearsonr(model_sims, human)[0]), 4),
            "lee_spearman": round(float(spearmanr(model_sims, human)[0]), 4),
            "cosine_to_teacher_lee_docs_mean": round(float(np.nanmean(cos_docs)), 4),
            "cosine_to_teacher_heldout_sentences_mean": round(float(np.nanmean(cos_sent)), 4),
            "cosine_to_teacher_heldout_sentences_min": round(float(np.nanmin(cos_sent)), 4)}


def part_minilm(args: argparse.Namespace) -> dict[str, Any]:
    from trtopt.models.zoo import tokenize_for_minilm

    docs, ratings, background = _lee_files()
    sentences = _sentences(background)
    held_out, train_sentences = sentences[-200:], sentences[:-200]
    teacher = load_model("zoo:minilm_l6")
    docs_feed = tokenize_for_minilm(docs, seq_len=args.doc_seq_len)
    train_feed = tokenize_for_minilm(train_sentences, seq_len=args.seq_len)
    held_feed = tokenize_for_minilm(held_out, seq_len=args.seq_len)
    ref_docs, ref_held = _embed(teacher.module, docs_feed), _embed(teacher.module, held_feed)
    example = (torch.from_numpy(train_feed["input_ids"][:4]), torch.from_numpy(train_feed["attention_mask"][:4]))
    pruned = prune(teacher.module, example, PruneConfig(method="structured", ratio=args.ratio))
    scores = {"teacher": _lee_scores(teacher.module, docs_feed, ratings, ref_docs, held_feed, ref_held),
              "pruned_before_training": _lee_scores(pruned.module, docs_feed, ratings, ref_docs, held_feed, ref_held)}
    config = DistillConfig(output_loss="cosine", epochs=None, max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           warmup_steps=max(1, args.steps // 10), weight_decay=0.01, seed=0, eval_every=max(1, args.steps // 4),
                           restore_best=False)
    start = time.perf_counter()
    result = distill(copy.deepcopy(pruned.module), teacher.module, (dict(train_feed), None), config,
                     eval_data=(dict(held_feed), None))
    seconds = round(time.perf_counter() - start, 1)
    scores["pruned_distilled"] = _lee_scores(result.student, docs_feed, ratings, ref_docs, held_feed, ref_held)
    tokens = (torch.from_numpy(docs_feed["input_ids"][:2]), torch.from_numpy(docs_feed["attention_mask"][:2]))
    return {
        "title": "all-MiniLM-L6-v2: attention heads + FFN width pruned, distilled on unlabelled Lee background sentences",
        "data": {"train_sentences": len(train_sentences), "heldout_sentences": len(held_out), "seq_len": args.seq_len,
                 "lee_documents": len(docs), "lee_doc_seq_len": args.doc_seq_len,
                 "source": "gensim 4.4.0 wheel: test/test_data/lee_background.cor (training), lee.cor + similarities0-1.txt (benchmark)"},
        "prune": {"config": pruned.to_dict()["config"], "heads": pruned.heads,
                  "ffn_width_after": sorted({m.out_features for n, m in pruned.module.named_modules() if n.endswith("intermediate.dense")}),
                  "parameters_before": pruned.parameters_before, "parameters_after": pruned.parameters_after,
                  "pruning_rate_percent": round(pruned.pruning_rate_percent, 2),
                  "macs_before": pruned.macs_before, "macs_after": pruned.macs_after,
                  "macs_reduction": round(pruned.macs_reduction, 3),
                  "linear_macs_per_document": {"teacher": sum(count_macs(teacher.module, tokens).values()),
                                               "pruned": sum(count_macs(result.student, tokens).values())}},
        "distill": {"config": result.config, "steps": result.steps, "seconds": seconds,
                    "step_losses_first_last": [round(result.step_losses[0], 5), round(result.step_losses[-1], 5)],
                    "eval_history": result.eval_history},
        "scores": scores,
        "threads": args.threads,
    }


def part_sparse(args: argparse.Namespace) -> dict[str, Any]:
    from trtopt.trt.sparsity import check_2to4

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    x_train, x_test = train.inputs["input"], test.inputs["input"]
    teacher = load_model("zoo:digits_cnn")
    sparse = prune(teacher.module, (torch.from_numpy(x_train[:4]),), PruneConfig(method="2:4"))
    zeros_before = {n: int((m.weight == 0).sum()) for n, m in sparse.module.named_modules() if hasattr(m, "weight") and m.weight is not None and m.weight.dim() > 1}
    config = DistillConfig(alpha=args.alpha, temperature=args.temperature, epochs=args.epochs, batch_size=32, lr=1e-3,
                           weight_decay=1e-4, keep_zeros=True, seed=0, restore_best=False)
    start = time.perf_counter()
    result = distill(copy.deepcopy(sparse.module), teacher.module, (x_train, train.labels), config,
                     eval_data=(x_test, test.labels))
    seconds = round(time.perf_counter() - start, 1)
    zeros_after = {n: int((m.weight == 0).sum()) for n, m in result.student.named_modules() if n in zeros_before}
    with tempfile.TemporaryDirectory() as tmp:
        art = export_onnx(LoadedModel(result.student, "2:4 + kd digits_cnn", teacher.inputs), Path(tmp) / "sparse.onnx",
                          ExportConfig(), feed={"input": x_test[:8]})
        check = check_2to4(art.path)
    return {
        "title": "digits CNN: 2:4 semi-structured sparsity, distilled with the mask fixed",
        "prune": {k: v for k, v in sparse.to_dict().items() if k in ("parameters_before", "nonzero_parameters_after",
                                                                      "pruning_rate_percent", "layers", "skipped")},
        "test_accuracy": {"teacher": round(accuracy(teacher.module, x_test, test.labels), 5),
                          "sparse_before_training": round(accuracy(sparse.module, x_test, test.labels), 5),
                          "sparse_kd": round(accuracy(result.student, x_test, test.labels), 5)},
        "zero_weights_before_after": {n: [zeros_before[n], zeros_after[n]] for n in zeros_before},
        "onnx_2to4_check": check.to_dict(),
        "distill": {"config": result.config, "seconds": seconds, "eval_history": result.eval_history},
        "threads": args.threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("digits", "minilm", "sparse"), required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=300, help="timed calls per model and batch size")
    parser.add_argument("--epochs", type=int, default=30, help="digits/sparse: training epochs")
    parser.add_argument("--short-epochs", type=int, default=3, help="digits: the short training budget")
    parser.add_argument("--ratio", type=float, default=0.5, help="structured pruning ratio (channels)")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 512])
    parser.add_argument("--steps", type=int, default=120, help="minilm: optimizer steps")
    parser.add_argument("--batch-size", type=int, default=32, help="minilm: sentences per step")
    parser.add_argument("--lr", type=float, default=2e-4, help="minilm: peak learning rate")
    parser.add_argument("--seq-len", type=int, default=48, help="minilm: tokens per training sentence")
    parser.add_argument("--doc-seq-len", type=int, default=256, help="minilm: tokens per Lee document")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    result = {"digits": part_digits, "minilm": part_minilm, "sparse": part_sparse}[args.part](args)
    result["seconds_total"] = round(time.perf_counter() - start, 1)
    result["environment"] = environment()
    out = args.out or RESULTS / f"distill_{args.part}.json"
    write_json(out, result, force=True)
    summary = {k: result[k] for k in ("test_accuracy", "latency_ort_cpu", "scores") if k in result}
    print(summary)
    print(f"wrote {out} in {result['seconds_total']} s")


if __name__ == "__main__":
    main()
