"""Default homes of what trtopt writes outside a run directory: ``calibration/`` and ``engines/``.

The repository (or any working directory) has two conventional folders, as DESIGN.md specifies:

- ``calibration/``: ranges JSON, TensorRT calibration caches and the data manifest of each calibration
  (``<model>.ranges.json``, ``<model>.trt<version>.cache``, ``<model>.data.json``), written by
  ``trtopt calibrate`` when no ``-o`` is given;
- ``engines/``: engines built by ``trtopt build`` without ``-o``, named from the model, the TensorRT
  version and the GPU (``<model>_trt<version>_<gpu>.engine``; engines only run where they were built, so
  the name says where that is).

Paths are relative to the current directory; nothing here creates folders (the writers do, atomically).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

CALIBRATION_DIR = Path("calibration")
ENGINES_DIR = Path("engines")
DATA_MANIFEST_FORMAT = "trtopt-calibration-data/1"


def _slug(text: str) -> str:
    """A file-name-safe form of a model stem, version or GPU name ("NVIDIA H200" → "nvidia-h200")."""
    return re.sub(r"[^a-z0-9._]+", "-", text.lower()).strip("-.") or "unnamed"


def calibration_ranges_path(model: str | os.PathLike) -> Path:
    """``calibration/<model stem>.ranges.json`` for an ONNX file ``model``."""
    return CALIBRATION_DIR / f"{_slug(Path(model).stem)}.ranges.json"


def calibration_cache_path(model: str | os.PathLike, trt_version: str) -> Path:
    """``calibration/<model stem>.trt<version>.cache``: the TensorRT calibration cache for that version."""
    return CALIBRATION_DIR / f"{_slug(Path(model).stem)}.trt{_slug(trt_version)}.cache"


def data_manifest_path(ranges_path: str | os.PathLike) -> Path:
    """The data manifest beside a ranges file: ``X.ranges.json`` (or ``X.json``) → ``X.data.json``."""
    p = Path(ranges_path)
    name = p.name
    for suffix in (".ranges.json", ".json"):
        if name.endswith(suffix):
            return p.with_name(name[: -len(suffix)] + ".data.json")
    return p.with_name(name + ".data.json")


def engine_path(model: str | os.PathLike, trt_version: str, gpu_name: str | None) -> Path:
    """``engines/<model stem>_trt<version>_<gpu>.engine`` (without ``_<gpu>`` when no GPU is known, e.g. a plan)."""
    parts = [_slug(Path(model).stem), f"trt{_slug(trt_version)}"] + ([_slug(gpu_name)] if gpu_name else [])
    return ENGINES_DIR / ("_".join(parts) + ".engine")
