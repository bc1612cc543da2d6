"""Reading ``torch.save`` files as data only.

Every PyTorch file trtopt reads without ``--trust-code`` (state dicts, checkpoints, trtopt model files,
distillation checkpoints) is read here, with ``torch.load(weights_only=True)`` on the CPU: it unpickles
tensors and plain containers and refuses any other class a file names (PyTorch docs, ``torch.load``,
"weights_only"), so a data file cannot run code.
"""

from __future__ import annotations

import os
from typing import Any

from trtopt.errors import TrtoptError, first_line


def _load(path: str | os.PathLike) -> Any:
    import torch

    return torch.load(str(path), map_location="cpu", weights_only=True)


def try_read_plain(path: str | os.PathLike) -> Any | None:
    """The contents of ``path`` if it is a ``torch.save`` file of tensors and plain containers, else None.

    None covers a pickle of Python objects (refused by ``weights_only``), TorchScript, a file that is not a
    torch file, and a truncated or unreadable one: callers tell those apart themselves where it matters.
    """
    import pickle
    import zipfile

    try:
        return _load(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile):
        return None


def read_plain(path: str | os.PathLike, what: str, fix: str) -> Any:
    """The contents of the ``torch.save`` file ``path`` (tensors and plain containers only).

    Args:
        what: what the file is to the user ("checkpoint"), the error's first word.
        fix: the fix the error gives when the file can't be read.

    Raises:
        TrtoptError: "<what> <path> cannot be read (<error type>: <first line>)" with ``fix``; also for a
            file that names a Python class (``weights_only`` refuses it).
    """
    try:
        return _load(path)
    except Exception as e:  # torch raises many kinds for a bad file (pickle, zip, EOF, RuntimeError)
        raise TrtoptError(f"{what} {path} cannot be read ({first_line(e, limit=120, with_type=True)})", fix) from e
