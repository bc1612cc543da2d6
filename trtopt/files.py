"""Writing results safely: atomic writes, `--force` checks and content hashes.

Every artifact trtopt writes goes through here, so an interrupted run never leaves a half-written file
and an existing output is never overwritten unless the caller passed ``force=True``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trtopt.errors import TrtoptError


def ensure_writable(path: str | os.PathLike, force: bool) -> Path:
    """Return ``path`` as a Path after checking it may be written.

    Raises TrtoptError when it exists and ``force`` is false, or when it names a directory.
    """
    p = Path(path)
    if p.is_dir():
        raise TrtoptError(f"output {p} is a directory", "give a file path")
    if p.exists() and not force:
        raise TrtoptError(f"output {p} already exists", "pass --force to overwrite it or choose another path")
    return p


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The temporary file lives in the same directory (so the rename is atomic on POSIX) and is removed
    when the block raises, so readers only ever see the old file or the complete new one.
    """
    target = ensure_writable(path, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_temp_file(target)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _create_temp_file(target: Path) -> Path:
    """Create an empty, uniquely named file beside ``target`` with the permissions the umask gives.

    (``tempfile.mkstemp`` would create it 0600, and the rename would carry that onto the result.)
    """
    for _ in range(100):
        tmp_path = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp_path
    raise FileExistsError(f"no free temporary name beside {target}")


def write_text(path: str | os.PathLike, text: str, force: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_output(path, force) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, data: Any, force: bool = False) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically; returns the path."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n", force)


def _json_default(obj: Any) -> Any:
    """Serialize numpy scalars/arrays and paths that reach JSON."""
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot serialize {type(obj).__name__} to JSON")


@contextlib.contextmanager
def staging_dir(near: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory on the same filesystem as ``near``; removed afterwards.

    Used for multi-file artifacts (an ONNX model and its ``.onnx.data`` side file) that are built
    completely before being moved into place.
    """
    parent = Path(near).parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".trtopt-", dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (bounded memory for multi-GB weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_bytes), b""):
            h.update(block)
    return h.hexdigest()
