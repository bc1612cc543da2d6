"""Structured pruning proves itself: the mask-equivalence residual of every pruning test model and of
torchvision/timm CNNs and a ViT at three channel ratios.

For each model and ratio, `trtopt.compress.prune.prune` (structured, L1, round-to 8, first/last layers
protected) runs its always-on check: the pruned model against the original with the removed channels
masked, layer by layer (`trtopt.compress.prune_check`). Recorded per row: the residuals (relative max
error of the outputs and the worst Conv/Linear layer), the channel ratio asked and got, the notes saying
why a layer lost another ratio, parameters before/after, the seconds the prune took (check included) and
the check's own seconds;
a model structured pruning refuses (a channel shuffle) is recorded with the one-line reason. Models use
random init (the check does not depend on trained weights) except EfficientNet-Lite0 (ImageNet weights,
shipped in its package); images are 64×64 (ViT-Tiny at its 224×224), batch 2.

Writes ``benchmarks/results/prune_equivalence.json``. Run under nice on the shared build machines::

    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/bench_prune_equivalence.py [--models resnet50 ...] [--ratios 0.3 0.5 0.7]

Rows of models not run are kept from the existing file (``--fresh`` drops them); the file is rewritten after
every row.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from trtopt.compress.config import PruneConfig
from trtopt.compress.prune import example_inputs_for, prune
from trtopt.environment import environment
from trtopt.errors import TrtoptError
from trtopt.files import write_json
from trtopt.models.inputs import parse_declarations
from trtopt.models.load import load_model

RESULTS = Path(__file__).resolve().parent / "results"

# name -> (model spec, input shape without batch, PruneConfig overrides)
MODELS: dict[str, tuple[str, tuple[int, ...] | None, dict[str, Any]]] = {
    "tiny_resnet": ("tests.helpers.tiny_prune_models:tiny_resnet", None, {}),
    "tiny_bert": ("tests.helpers.tiny_prune_models:tiny_bert", None, {}),
    "hardcoded_reshape": ("tests.helpers.tiny_prune_models:hardcoded_reshape", None, {"ignored_layers": ("conv3",)}),
    "grouped_no_shuffle": ("tests.helpers.tiny_prune_models:grouped_no_shuffle", None,
                           {"round_to": 1, "protect_first_last": False, "ignored_layers": ("head",)}),
    "grouped_shuffle": ("tests.helpers.tiny_prune_models:grouped_shuffle", None,
                        {"round_to": 1, "protect_first_last": False, "ignored_layers": ("head",)}),
    "mobilenet_v3_small": ("torchvision:mobilenet_v3_small", (3, 64, 64), {}),
    "shufflenet_v2_x0_5": ("torchvision:shufflenet_v2_x0_5", (3, 64, 64), {}),
    "resnet50": ("torchvision:resnet50", (3, 64, 64), {}),
    "efficientnet_lite0": ("zoo:efficientnet_lite0", (3, 64, 64), {}),
    "vit_tiny_patch16_224": ("timm:vit_tiny_patch16_224", (3, 224, 224), {}),
}


def run(name: str, ratio: float) -> dict[str, Any]:
    spec, shape, overrides = MODELS[name]
    loaded = load_model(spec, inputs=parse_declarations([f"input:2x{'x'.join(map(str, shape))}"]))
    args = example_inputs_for(loaded, batch_size=2)
    row: dict[str, Any] = {"model": name, "spec": spec, "input_shape": list(loaded.inputs[0].shape), "ratio_asked": ratio}
    started = time.perf_counter()
    try:
        result = prune(loaded.module, args, PruneConfig("structured", ratio, **overrides))
    except TrtoptError as e:
        row.update(refused=str(e), prune_seconds=time.perf_counter() - started)
        return row
    check = result.equivalence
    row.update(prune_seconds=time.perf_counter() - started, output_residual=check.output_residual,
               max_layer_residual=check.max_layer_residual, layers_compared=check.layers_compared,
               tolerance=check.tolerance, check_seconds=check.seconds, channel_ratio=result.channel_ratio,
               parameters_before=result.parameters_before, parameters_after=result.parameters_after,
               pruning_rate_percent=result.pruning_rate_percent, heads=result.heads,
               ratio_notes=result.ratio_notes, skipped=result.skipped)
    return row


def _write(rows: list[dict[str, Any]], threads: int) -> Path:
    checked = [r for r in rows if "refused" not in r]
    return write_json(RESULTS / "prune_equivalence.json", {
        "benchmark": "structured pruning mask-equivalence residuals", "threads": threads,
        "max_output_residual": max((r["output_residual"] for r in checked), default=None),
        "max_layer_residual": max((r["max_layer_residual"] for r in checked), default=None),
        "rows": rows, "environment": environment()}, force=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fresh", action="store_true", help="drop the rows of models not run this time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = RESULTS / "prune_equivalence.json"
    # rows of other models/ratios are kept (one model at a time fits a busy shared machine); the file is
    # rewritten after every row, so an interrupted run keeps what it measured
    rows = [] if args.fresh or not path.exists() else json.loads(path.read_text())["rows"]
    for name in args.models:
        for ratio in args.ratios:
            row = run(name, ratio)
            rows = [r for r in rows if (r["model"], r["ratio_asked"]) != (name, ratio)] + [row]
            rows.sort(key=lambda r: (list(MODELS).index(r["model"]), r["ratio_asked"]))
            _write(rows, args.threads)
            outcome = (f"refused: {row['refused'][:120]}" if "refused" in row else
                       f"outputs {row['output_residual']:.1e}, worst layer {row['max_layer_residual']:.1e} "
                       f"({row['layers_compared']} layers), channel ratio {row['channel_ratio']:.3f}, "
                       f"check {row['check_seconds']:.1f} s")
            print(f"{name} @ {ratio}: {outcome} [{row['prune_seconds']:.1f} s]", flush=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
