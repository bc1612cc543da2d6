"""Running the ``trtopt`` CLI (in a subprocess or in this process), and the one-line-error contract every bad
input must meet."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple


def run(args, cwd, env):
    return subprocess.run([sys.executable, "-m", "trtopt", "-q", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


class Outcome(NamedTuple):
    """What a CLI run in this process gave: its exit status and its captured output."""

    returncode: int
    stdout: str
    stderr: str


def run_here(args, capsys) -> Outcome:
    """``trtopt -q ARGS`` in this process (no interpreter start, no torch import per call); cwd as it is."""
    from trtopt.cli.main import main

    capsys.readouterr()
    code = main(["-q", *map(str, args)])
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("trtopt: error: ") and "fix:" in lines[0]
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


def snapshot(folder: Path, folders: bool = False) -> dict[str, str]:
    """Every file below ``folder`` (hidden ones too) → sha256 of its bytes; with ``folders``, every folder too ("dir")."""
    return {str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if folders or p.is_file()}


def refused(args, capsys, folder: Path, *needles):
    """Run ``args`` in this process; assert the one-line error naming ``needles`` and that ``folder`` did not
    change at all."""
    before = snapshot(folder)
    result = run_here(args, capsys)
    assert_one_line_error(result, *needles)
    assert snapshot(folder) == before
    return result
