"""Data and helpers shared by bench_share.py and bench_lowrank.py (real models, real data, offline)."""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

import numpy as np

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


def cosine_rows(a: Any, b: Any) -> np.ndarray:
    """Cosine similarity of matching rows."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
