"""Bring your own model: export → calibrate → quantize (both targets) → compare → build --plan-only through
the CLI, on the kinds of models users bring (issue 14), each declared only by flags.

Each (model, step) is one test so the table of outcomes reads off the test report; the chain of a model runs
once (its export cell runs it, in this process: that cell's duration is the chain's) and each later step
uses the earlier steps' files.
Tiny configurations keep every chain to seconds: timm/torchvision architectures at small resolutions with
random init, a 2-layer BERT (hidden 32) from ``transformers.BertConfig`` calibrated on padded batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers.cli import run_here

BERT_FLAGS = ["--input-shape", "input_ids:2x12,attention_mask:2x12", "--input-dtype", "input_ids:int64,attention_mask:int64",
              "--input-range", "input_ids:[0,99]", "--input-range", "attention_mask:[0,1]"]

#: model → (spec, export flags, data file maker or None for random data)
MODELS = {
    "timm-cnn-random-init": ("timm:resnet10t", ["--input-shape", "input:2x3x32x32"], None),
    "timm-non-224": ("timm:mobilevit_xxs", ["--input-shape", "input:2x3x128x128"], None),  # native 256
    "torchvision-segmentation": ("torchvision:lraspp_mobilenet_v3_large", ["--input-shape", "input:2x3x64x64"], None),
    "bert-config-dynamic-seq": ("tests.helpers.byom_models:bert_tiny",
                                [*BERT_FLAGS, "--dynamic", "input_ids:1=seq,attention_mask:1=seq"], "padded_tokens"),
    "dict-output": ("tests.helpers.byom_models:dict_output", ["--input-shape", "input:2x3x32x32"], None),
}

STEPS = ("export", "calibrate", "calibration-cache", "quantize-onnxruntime", "quantize-tensorrt", "compare", "build-plan")

#: cells that fail for reasons owned by the calibration work (branch calib): flip at merge
CALIB_BRANCH = {
    ("timm-cnn-random-init", "calibration-cache"): "random-init timm zeroes the last BatchNorm gamma of each block, "
                                                   "so some tensors are exactly 0 and the TensorRT cache refuses them",
    ("timm-non-224", "calibration-cache"): "random-init mobilevit: 3 tensors exactly 0 in one run (getitem_9, "
                                           "getitem_27, getitem_36), a separate CLI run passed: not strict",
}
#: of those, the cells whose failure did not reproduce every time (strict=False until the calib branch lands)
FLAKY = {("timm-non-224", "calibration-cache")}

_chains: dict[str, dict[str, str]] = {}


def padded_tokens(path: Path) -> Path:
    """12 padded token sequences of length 12 (real lengths 3..12): ids 0 and mask 0 after the end."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, (12, 12))
    mask = np.ones((12, 12), np.int64)
    for row, length in enumerate(rng.integers(3, 13, 12)):
        ids[row, length:] = 0
        mask[row, length:] = 0
    np.savez(path, input_ids=ids, attention_mask=mask)
    return path


def _chain(name: str, root: Path, capsys) -> dict[str, str]:
    """Run the model's chain once; per step "ok" or the one-line error (a step after a failed one: "skipped")."""
    if name in _chains:
        return _chains[name]
    spec, flags, data_maker = MODELS[name]
    work = root / name
    work.mkdir()
    data = ["--data", str(globals()[data_maker](work / "data.npz"))] if data_maker else ["--samples", "8"]
    onnx, ranges = work / "m.onnx", work / "ranges.json"
    commands = {
        "export": ["export", spec, "-o", onnx, *flags, *data],
        "calibrate": ["calibrate", onnx, "-o", ranges, "--method", "minmax", *data],
        "calibration-cache": ["calibrate", onnx, "-o", work / "ranges-cache.json", "--method", "minmax",
                              "--cache", work / "m.cache", *data],
        "quantize-onnxruntime": ["quantize", onnx, "--ranges", ranges, "--target", "onnxruntime", "-o", work / "ort.onnx"],
        "quantize-tensorrt": ["quantize", onnx, "--ranges", ranges, "--target", "tensorrt", "-o", work / "trt.onnx"],
        "compare": ["compare", onnx, work / "ort.onnx", "--rtol", "1", "--atol", "1e3", "--min-cosine", "0", *data],
        "build-plan": ["build", work / "trt.onnx", "--plan-only", "--trt-version", "10.3", "-o", work / "m.engine",
                       *_profile_flags(name)],
    }
    outcome: dict[str, str] = {}
    for step, args in commands.items():
        needs = {"calibrate": "export", "calibration-cache": "export", "quantize-onnxruntime": "calibrate", "quantize-tensorrt": "calibrate",
                 "compare": "quantize-onnxruntime", "build-plan": "quantize-tensorrt"}.get(step)
        if needs and outcome[needs] != "ok":
            outcome[step] = f"skipped ({needs} failed)"
            continue
        result = run_here(args, capsys)
        outcome[step] = "ok" if result.returncode == 0 else result.stderr.strip()
    _chains[name] = outcome
    return outcome


def _profile_flags(name: str) -> list[str]:
    if name.startswith("bert"):
        return ["--minShapes", "input_ids:1x4,attention_mask:1x4", "--optShapes", "input_ids:4x12,attention_mask:4x12",
                "--maxShapes", "input_ids:8x32,attention_mask:8x32"]
    shape = next(f for f in MODELS[name][1] if ":" in f).split(":")[1].split("x")[1:]
    dims = "x".join(shape)
    return ["--minShapes", f"input:1x{dims}", "--optShapes", f"input:4x{dims}", "--maxShapes", f"input:8x{dims}"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("byom")


def _cells():
    for name in MODELS:
        for step in STEPS:
            marks = [pytest.mark.slow]
            if (name, step) in CALIB_BRANCH:
                marks.append(pytest.mark.xfail(strict=(name, step) not in FLAKY,
                                               reason=f"calib branch: {CALIB_BRANCH[name, step]}"))
            yield pytest.param(name, step, id=f"{name}-{step}", marks=marks)


@pytest.mark.parametrize("name, step", list(_cells()))
def test_bring_your_own_model(name, step, root, capsys):
    outcome = _chain(name, root, capsys)
    assert outcome[step] == "ok", outcome[step]
