"""Data and helpers shared by bench_share.py and bench_lowrank.py (real models, real data, offline)."""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

import numpy as np

from trtopt.metrics import cosine_per_sample

THREADS = 2
# Standard-library modules whose docstrings are long English prose: offline training text for MiniLM
# distillation (the model card's sentences stay held out for evaluation).
_TEXT_MODULES = ("argparse", "asyncio", "collections", "concurrent.futures", "contextlib", "csv", "dataclasses",
                 "datetime", "decimal", "email", "enum", "fractions", "functools", "http.client", "http.server",
                 "inspect", "io", "itertools", "json", "logging", "multiprocessing", "os", "pathlib", "pickle",
                 "random", "re", "shutil", "socket", "sqlite3", "statistics", "string", "subprocess", "tarfile",
                 "tempfile", "textwrap", "threading", "typing", "unittest", "urllib.request", "uuid", "zipfile")


def docstring_sentences(limit: int = 2000) -> list[str]:
    """English sentences (30-300 characters, no code) from Python standard-library docstrings, deterministic."""
    seen: set[str] = set()
    out: list[str] = []
    for name in _TEXT_MODULES:
        module = importlib.import_module(name)
        docs = [inspect.getdoc(module) or ""]
        for _, obj in sorted(vars(module).items()):
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", "").startswith(name):
                docs.append(inspect.getdoc(obj) or "")
        for doc in docs:
            text = " ".join(line.strip() for line in doc.splitlines() if line.strip() and not line.startswith((">>>", "...")))
            for s in re.split(r"(?<=[.!?])\s+", text):
                s = s.strip()
                if 30 <= len(s) <= 300 and s[0].isupper() and not re.search(r"[{}=<>\[\]_]|\(\)", s) and s not in seen:
                    seen.add(s)
                    out.append(s)
    return out[:limit]


def minilm_data() -> dict[str, Any]:
    """Token feeds (torch) for MiniLM: ``train``/``val`` from docstring sentences at 32 tokens (short text:
    32 tokens hold almost all of it and halve training cost), ``card``: the model card's sentences at 64
    tokens, held out for evaluation; plus the counts."""
    import torch

    from trtopt.models.zoo import minilm_card_sentences, tokenize_for_minilm

    text, card = docstring_sentences(), minilm_card_sentences()

    def feed(sentences: list[str], seq_len: int) -> dict[str, Any]:
        return {k: torch.from_numpy(v) for k, v in tokenize_for_minilm(sentences, seq_len=seq_len).items()}

    return {"train": feed(text[:-120], 32), "val": feed(text[-120:], 32), "card": feed(card, 64),
            "card_numpy": tokenize_for_minilm(card), "train_sentences": len(text) - 120, "card_sentences": len(card)}


def minilm_cosine(model: Any, reference: np.ndarray, card: dict[str, Any]) -> dict[str, float]:
    """Mean and min per-sentence cosine (`trtopt.metrics.cosine_per_sample`) of ``model``'s embeddings of the
    card sentences vs ``reference`` (FP32's)."""
    import torch

    with torch.no_grad():
        c = cosine_per_sample(reference, model(**card).numpy())
    return {"mean": float(np.nanmean(c)), "min": float(np.nanmin(c))}


def minilm_distill_config(steps: int, lr: float) -> Any:
    """Cosine-loss distillation from the FP32 encoder: batch 16, evaluation (for best-step restore) 4 times."""
    from trtopt.compress.config import DistillConfig

    return DistillConfig(output_loss="cosine", epochs=None, max_steps=steps, batch_size=16, lr=lr,
                         eval_every=max(steps // 4, 1), device="cpu")


def digits_distill_config(epochs: int) -> Any:
    """KD (T=4) + labels (α=0.5) on the digits train split, AdamW 1e-3, batch 64."""
    from trtopt.compress.config import DistillConfig

    return DistillConfig(alpha=0.5, temperature=4.0, epochs=epochs, batch_size=64, lr=1e-3, device="cpu")
