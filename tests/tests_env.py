"""Helpers shared by CLI tests that can't use function-scoped fixtures."""

from __future__ import annotations

import os
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent


def cli_environment() -> dict[str, str]:
    """Environment for ``python -m trtopt`` subprocesses with ``tiny_models:NAME`` importable, hub offline."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")])
    env["HF_HUB_OFFLINE"] = "1"
    return env
