"""Shared fixtures: tiny seeded models, their loaded form, and an offline hub."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS_DIR))  # makes ``tiny_models:NAME`` specs importable
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def tiny_cnn():
    """The tiny CNN as a LoadedModel (seeded weights, eval mode)."""
    from trtopt.models import load_model

    return load_model("tiny_models:tiny_cnn")


@pytest.fixture
def cli_env():
    """Environment for running the ``trtopt`` CLI in a subprocess with tiny models importable."""
    from tests_env import cli_environment

    return cli_environment()
