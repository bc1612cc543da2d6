"""Shared fixtures: tiny seeded models, their loaded form, and an offline hub.

Helpers live in `tests.helpers` (importable because pytest puts the repository root on sys.path:
``pythonpath = ["."]`` in pyproject.toml); test modules never import each other.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def tiny_cnn():
    """The tiny CNN as a LoadedModel (seeded weights, eval mode)."""
    from trtopt.models.load import load_model

    return load_model("tests.helpers.tiny_models:tiny_cnn")


@pytest.fixture
def cli_env():
    """Environment for running the ``trtopt`` CLI in a subprocess with tiny models importable."""
    from tests.helpers.env import cli_environment

    return cli_environment()
