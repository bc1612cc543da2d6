"""Weight sharing on pretrained models, measured on held-out real data (issue 17).

For each model: storage ratio of the shared state vs FP32 parameters (the ``save_shared`` file size too)
and fidelity to the FP32 model on *held-out* data, for

1. uniform 4 bits (one codebook per layer);
2. mixed bits without fine-tuning (`trtopt.compress.share.choose_bits`: per-layer bits from sensitivity
   measured on the training split, first/last and depthwise layers at 8 bits, ``--target-ratio``);
3. the same mixed bits + tied fine-tuning (distillation from FP32 on the training split, weights tied);
4. (CNN, ``--combined``) prune (unstructured 50 %) + share on the INT8 grid: one row with the combined
   storage ratio (zeros cost nothing after deflate) and fidelity.

Data:
- EfficientNet-Lite0/1/2 (ImageNet weights): the 19 scikit-image photos split by photo: random 224/240/260 px crops
  (with flips) of photos 0-9 train and choose bits, crops of photos 10-18 are held out; metric: top-1
  agreement with FP32. Goal ≥ 6× at agreement ≥ 0.95.
- all-MiniLM-L6-v2: ~1,300 sentences from Python standard-library docstrings train and choose bits; the
  model card's sentences are held out; metric: mean cosine to FP32 embeddings. Goal ≥ 7× at cosine ≥ 0.98.

``--ceilings`` measures uniform sharing at 8/6/4 bits, per layer and per channel, on the same held-out data:
what the best single setting keeps, i.e. whether the goal is reachable at all with scalar codebooks.

Writes ``benchmarks/results/share_pretrained_<model>.json`` per model, again after every row (a stopped run
keeps what it measured). Every top-1 agreement has its 95 % Wilson interval (binomial over the samples).
Run under ``nice``; 2 threads.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compress_common import THREADS, docstring_sentences

from trtopt.compress.config import ShareConfig, tied_finetune
from trtopt.compress.distill import fidelity_probe
from trtopt.compress.share import save_shared, share_weights
from trtopt.environment import environment
from trtopt.files import write_json

RESULTS = Path(__file__).resolve().parent / "results"
CNNS = {"lite0": 224, "lite1": 240, "lite2": 260}  # EfficientNet-Lite variant → input size (px)


def photo_crops(photo_ids: list[int], count: int, seed: int, size: int = 224) -> np.ndarray:
    """``count`` random ``size`` px crops (half flipped) of the given scikit-image photos resized to ``size`` + 32
    px (the models' evaluation resize), ImageNet-normalized; float32 (count, 3, size, size)."""
    from trtopt.data import skimage_photos
    from trtopt.models.spec import ImagePreprocess

    full = size + 32
    photos = skimage_photos(ImagePreprocess(size=full, resize=full))[photo_ids]
    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, size, size), np.float32)
    for k in range(count):
        img = photos[k % len(photos)]
        top, left = rng.integers(0, full - size + 1, size=2)
        crop = img[:, top:top + size, left:left + size]
        out[k] = crop[:, :, ::-1] if rng.random() < 0.5 else crop
    return out


def cnn_data(train_count: int, eval_count: int, probe_count: int, size: int) -> dict[str, Any]:
    train = photo_crops(list(range(10)), train_count, seed=1, size=size)
    return {"train": (train, None), "choose": (train[:probe_count], None),
            "held_out": (photo_crops(list(range(10, 19)), eval_count, seed=2, size=size), None),
            "description": f"train: {train_count} {size} px crops of skimage photos 0-9 (bits chosen on {probe_count} of them); "
                           f"held out: {eval_count} crops of photos 10-18"}


def minilm_data(probe_count: int) -> dict[str, Any]:
    from trtopt.models.zoo import minilm_card_sentences, tokenize_for_minilm

    text = docstring_sentences()
    card = minilm_card_sentences()

    def feed(sentences: list[str], seq_len: int) -> dict[str, Any]:
        return {k: torch.from_numpy(v) for k, v in tokenize_for_minilm(sentences, seq_len=seq_len).items()}

    train = feed(text, 32)
    return {"train": (train, None), "choose": ({k: v[:probe_count] for k, v in train.items()}, None),
            "held_out": (feed(card, 64), None),
            "description": f"train: {len(text)} stdlib docstring sentences (32 tokens; bits chosen on {probe_count}); "
                           f"held out: {len(card)} model-card sentences (64 tokens)"}


CEILINGS = ((8, "layer"), (8, "channel"), (6, "layer"), (6, "channel"), (4, "channel"))


def with_interval(fidelity: dict[str, Any]) -> dict[str, Any]:
    """The probe's result plus, for a top-1 agreement, its 95 % Wilson score interval over the samples."""
    if fidelity.get("metric") != "top1_agreement":
        return fidelity
    from scipy.stats import binomtest

    n = int(fidelity["samples"])
    ci = binomtest(round(fidelity["value"] * n), n).proportion_ci(confidence_level=0.95, method="wilson")
    return {**fidelity, "ci95_wilson": [float(ci.low), float(ci.high)]}


def reference_confidence(model: Any, inputs: np.ndarray) -> dict[str, Any]:
    """How decided the FP32 model is on ``inputs`` (N, C, H, W): its top-1 softmax probability and top-1 minus
    top-2 logit margin (quartiles), and the fraction of samples it gives its top-1 class under 0.5 - small
    margins are what makes top-1 agreement fragile under small output errors."""
    with torch.no_grad():
        logits = torch.cat([model.eval()(torch.from_numpy(np.ascontiguousarray(inputs[i:i + 32])))
                            for i in range(0, len(inputs), 32)]).double()
    top2 = logits.topk(2, dim=1).values
    prob = torch.softmax(logits, dim=1).amax(dim=1).numpy()
    margin = (top2[:, 0] - top2[:, 1]).numpy()
    return {"samples": len(inputs), "top1_probability_quartiles": np.percentile(prob, [25, 50, 75]).tolist(),
            "top1_top2_logit_margin_quartiles": np.percentile(margin, [25, 50, 75]).tolist(),
            "fraction_top1_probability_below_0.5": float((prob < 0.5).mean())}


def row(outcome: Any, held_out: Any, tmp: Path, name: str) -> dict[str, Any]:
    info = save_shared(outcome.model, tmp / f"{name}.npz", force=True)
    r = outcome.result
    bits = sorted({la.bits for la in r.layers if la.skipped is None})
    grans = sorted(set(getattr(outcome.model, "trtopt_share", {}).get(la.name, {}).get("granularity", "")
                       for la in r.layers if la.skipped is None))
    out = {"variant": name, "state_ratio_vs_fp32": r.compression_ratio, "file_ratio_vs_fp32": info.compression_ratio,
           "file_bytes": info.file_bytes, "state_bytes_fp32": r.state_bytes_fp32, "bits_used": bits,
           "granularities_used": grans, "fidelity_held_out": with_interval(held_out(outcome.model))}
    if outcome.bits is not None:
        out["layer_bits"] = outcome.bits.layer_bits
        out["layer_granularity"] = outcome.bits.layer_granularity
        out["unshared"] = outcome.bits.unshared
        out["protected"] = outcome.bits.protected
        out["fidelity_on_choice_data"] = outcome.bits.measured
        out["evaluations"] = outcome.bits.evaluations
    if outcome.finetune is not None:
        out["finetune"] = {k: outcome.finetune[k] for k in ("steps", "seconds", "loss_first", "loss_last", "config")}
    if outcome.finetune is None:
        out["seconds"] = r.seconds
    print(name, {k: out[k] for k in ("state_ratio_vs_fp32", "file_ratio_vs_fp32")}, out["fidelity_held_out"], flush=True)
    return out


def run_model(spec: str, target: float, steps: int, lr: float, batch: int, data: dict[str, Any], embeddings: bool,
              candidate_bits: tuple[int, ...], tmp: Path, save: Callable[[dict[str, Any]], None], combined: bool,
              variants: tuple[str, ...], granularity: str) -> None:
    """Measure the chosen ``variants`` ("confidence": the FP32 model's own margins on the held-out data, CNNs;
    "ceilings", "uniform", "mixed", "finetune"; "finetune" needs "mixed")
    of one model, calling ``save(result)`` after every row."""
    from trtopt.models.load import load_model

    model = load_model(spec).module
    held_out = fidelity_probe(model, data["held_out"], embeddings)
    choose = fidelity_probe(model, data["choose"], embeddings)
    step = (lambda m: print("  ·", m, flush=True)) if "-v" in sys.argv else None
    start = time.perf_counter()
    result: dict[str, Any] = {"model": spec, "data": data["description"], "goal_ratio": target,
                              "candidate_bits": list(candidate_bits), "mixed_granularity": granularity, "rows": []}

    def add(r: dict[str, Any]) -> None:
        result["rows"].append(r)
        result["seconds"] = time.perf_counter() - start
        save(result)

    if "confidence" in variants and not embeddings:
        result["held_out_reference_confidence"] = reference_confidence(model, data["held_out"][0])
        result["seconds"] = time.perf_counter() - start
        save(result)
    if "ceilings" in variants:
        for bits, gran in CEILINGS:
            add(row(share_weights(model, ShareConfig(bits=bits, granularity=gran)), held_out, tmp,
                    f"uniform_{bits}bit_{gran}"))
    if "uniform" in variants:
        add(row(share_weights(model, ShareConfig(bits=4)), held_out, tmp, "uniform_4bit_layer"))
    if "mixed" in variants:
        mixed_cfg = ShareConfig(target_ratio=target, candidate_bits=candidate_bits, granularity=granularity)
        mixed = share_weights(model, mixed_cfg, choose, on_step=step)
        add(row(mixed, held_out, tmp, f"mixed_{granularity}_{target}x"))
        if "finetune" in variants:
            tuned_cfg = ShareConfig(layer_bits=mixed.bits.layer_bits, granularity=granularity,
                                    layer_granularity=mixed.bits.layer_granularity, exclude=tuple(mixed.bits.unshared),
                                    finetune=tied_finetune(steps, lr, batch))
            tuned = share_weights(model, tuned_cfg, None, data["train"], embeddings, on_step=step)
            tuned.bits = mixed.bits
            add(row(tuned, held_out, tmp, f"mixed_{granularity}_{target}x_tied_finetune_{steps}"))
    if combined:
        result["combined"] = combined_row(model, held_out, data, tmp)
        save(result)


def combined_row(model: Any, held_out: Any, data: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Prune (unstructured 50 %, magnitude) + share at 4 bits with codebooks on the INT8 grid + INT8: one row.

    Zero stays an exact codebook value only if k-means keeps it; the zeros of the pruned weights form the
    largest cluster, so they do. Storage: the ``save_shared`` file (deflate also shrinks the index runs of
    zeros); the INT8 grid makes a later symmetric INT8 quantization of these weights exact.
    """
    from trtopt.compress.config import PruneConfig
    from trtopt.compress.prune import prune

    example = torch.from_numpy(np.ascontiguousarray(data["held_out"][0][:1]))
    pruned = prune(model, example, PruneConfig(method="unstructured", ratio=0.5)).module
    outcome = share_weights(pruned, ShareConfig(bits=4, int8_grid=True))
    info = save_shared(outcome.model, tmp / "combined.npz", force=True)
    fp32 = sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())
    zeros = sum(int((m.weight == 0).sum()) for m in outcome.model.modules() if hasattr(m, "weight")
                and isinstance(m.weight, torch.Tensor) and m.weight.dim() > 1)
    return {"recipe": "prune unstructured 50% → share 4 bits per layer on the INT8 grid (→ INT8 exact)",
            "file_bytes": info.file_bytes, "file_ratio_vs_fp32": fp32 / info.file_bytes,
            "zero_weights_after": zeros, "fidelity_held_out_pruned_only": held_out(pruned),
            "fidelity_held_out": held_out(outcome.model)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["lite0", "minilm"], choices=(*CNNS, "minilm"))
    parser.add_argument("--variants", nargs="+", default=["uniform", "mixed", "finetune"],
                        choices=("confidence", "ceilings", "uniform", "mixed", "finetune"))
    parser.add_argument("--granularity", default="auto", choices=("layer", "channel", "auto"),
                        help="codebook granularity of the mixed rows (auto: chosen per layer with the bits)")
    parser.add_argument("--cnn-steps", type=int, default=300)
    parser.add_argument("--minilm-steps", type=int, default=160)
    parser.add_argument("--cnn-batch", type=int, default=8, help="samples per tied fine-tuning step (CNNs)")
    parser.add_argument("--minilm-batch", type=int, default=16, help="samples per tied fine-tuning step (MiniLM)")
    parser.add_argument("--cnn-train", type=int, default=256)
    parser.add_argument("--cnn-eval", type=int, default=128)
    parser.add_argument("--probe", type=int, default=64, help="training samples the bit choice is measured on")
    parser.add_argument("--combined", action="store_true")
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 5, 6, 8], help="candidate bits of mixed allocation")
    parser.add_argument("--suffix", default="", help="appended to the JSON name (share_pretrained_<model><suffix>.json)")
    parser.add_argument("-v", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    bits = tuple(args.bits)
    variants = tuple(args.variants)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name in args.models:
            out = RESULTS / f"share_pretrained_{name}{args.suffix}.json"

            def save(res: dict[str, Any], out: Path = out) -> None:
                write_json(out, {"benchmark": "weight sharing on pretrained models (issue 17)", "threads": THREADS,
                                 "command": " ".join(sys.argv), "environment": environment(), **res}, force=True)
                print(f"wrote {out} ({res['seconds']:.0f} s)", flush=True)

            if name in CNNS:
                run_model(f"zoo:efficientnet_{name}", 6.0, args.cnn_steps, 1e-4, args.cnn_batch,
                          cnn_data(args.cnn_train, args.cnn_eval, args.probe, CNNS[name]), False, bits, tmp, save,
                          args.combined, variants, args.granularity)
            else:
                run_model("zoo:minilm_l6", 7.0, args.minilm_steps, 5e-4, args.minilm_batch, minilm_data(args.probe),
                          True, bits, tmp, save, False, variants, args.granularity)


if __name__ == "__main__":
    main()
