"""Helpers shared by CLI tests that can't use function-scoped fixtures."""

from __future__ import annotations

import os
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = TESTS_DIR.parent


def cli_environment() -> dict[str, str]:
    """Environment for ``python -m trtopt`` subprocesses with ``tests.helpers.tiny_models:NAME`` importable, hub offline."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env["HF_HUB_OFFLINE"] = "1"
    return env
