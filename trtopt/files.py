"""Writing results safely: every output checked before any work, atomic writes, trtopt's own temporaries.

Every artifact trtopt writes goes through here:

- :func:`check_outputs` (one path: :func:`ensure_writable`, :func:`ensure_appendable`,
  :func:`ensure_replaceable_dir`) checks each output a command will write *before* the command starts
  its work, so a command never fails on its second output after writing its first;
- :func:`atomic_output` and :func:`staging_dir` write beside the destination and rename into place, so
  an interrupted run never leaves a half-written file, and an existing output is never overwritten
  unless the caller passed ``force=True``;
- :func:`replace_dir` swaps a folder into place; ``--force`` replaces only folders trtopt wrote itself.

Temporaries carry this host's tag and the writing process's pid in their names (``.trtopt-<host>-<pid>-<hex>``
beside outputs, ``trtopt-<purpose>-<host>-<pid>-<hex>`` in the system temp folder), so :func:`sweep_stale`
removes those of processes that died without cleaning up (SIGKILL, power loss) and never another
process's live ones.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from trtopt.errors import TrtoptError

PathLike = str | os.PathLike


def _host_tag() -> str:
    """Short hash of the host name and the pid namespace: temporaries of another machine or container sharing
    a folder (NFS, a mounted volume, a shared /tmp) belong to pids this process cannot see, so the sweep
    leaves them alone."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino  # Linux: containers on one host differ here
    except OSError:
        namespace = 0
    return hashlib.sha256(f"{socket.gethostname()}:{namespace}".encode()).hexdigest()[:6]


_HOST = _host_tag()
#: Names of trtopt's temporaries (see :func:`sweep_stale`); ``dot``/``tmp`` tell staging folders and temporary
#: files (hidden, beside outputs) from temp folders.
_TEMP_NAME = re.compile(r"(?P<dot>\.)?(?:.+\.)?trtopt-(?:[a-z]+-)?(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]{8}"
                        r"(?P<tmp>\.tmp)?")
#: errno values that only a write produces: a command that meets one failed to write, whatever it was doing.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})
_DEFAULT_NAME_MAX = 255
_DEFAULT_PATH_MAX = 4096


def ensure_writable(path: PathLike, force: bool, *, inputs: Iterable[PathLike | None] = (),
                    size_bytes: int | None = None) -> Path:
    """Return ``path`` as a Path after checking, before any work, that a file may be written there.

    Args:
        path: the output file.
        force: an existing file may be replaced.
        inputs: the command's input files (model, data, ranges, ...); entries that are not existing paths
            (model specs such as ``zoo:NAME``) are ignored.
        size_bytes: about how many bytes the write needs, when known: refused when the filesystem has less free.

    Raises TrtoptError naming the path when it is one of ``inputs`` (the same file, also through a link),
    a directory or a special file (a device such as ``/dev/null``, a pipe, a socket), even with ``force``;
    exists and ``force`` is false; has a name longer than the filesystem allows (``NAME_MAX``, 255 bytes on
    most; trtopt's temporary names are kept within it); lies below a file or an unwritable folder
    (read-only filesystem, permissions); or lies on a filesystem with less than ``size_bytes`` free.
    """
    p = _check_target(Path(path), inputs, "output")
    if p.exists() and not force:
        raise TrtoptError(f"output {p} already exists", "pass --force to overwrite it or choose another path")
    if size_bytes:
        _check_space(p, size_bytes)
    return p


def ensure_appendable(path: PathLike, *, inputs: Iterable[PathLike | None] = ()) -> Path:
    """Like :func:`ensure_writable` for a file that is appended to (a JSON Lines history): it may exist."""
    return _check_target(Path(path), inputs, "output")


def check_outputs(outputs: Iterable[PathLike | None], force: bool, *, inputs: Iterable[PathLike | None] = (),
                  appended: Iterable[PathLike | None] = (),
                  sizes: Mapping[PathLike, int | None] | None = None) -> list[Path]:
    """Check every file a command will write, before it starts (see :func:`ensure_writable`).

    ``outputs`` are written (replaced with ``force``), ``appended`` are appended to; None entries are
    flags not given, and ``"-"`` (standard output) is skipped. ``sizes`` gives the bytes an output needs where that is known. Also refuses one path
    named for two outputs. Returns the checked paths.
    """
    inputs = [i for i in inputs if i is not None]
    sizes = sizes or {}
    checked: dict[str, Path] = {}
    # "-" is standard output (the CLI's ``--json -``), not a file
    targets = [(p, False) for p in outputs if p is not None and p != "-"] + [(p, True) for p in appended if p is not None]
    for path, append in targets:
        p = (ensure_appendable(path, inputs=inputs) if append
             else ensure_writable(path, force, inputs=inputs, size_bytes=sizes.get(path)))
        key = os.path.realpath(p)
        if key in checked:
            spelled = "" if str(checked[key]) == str(p) else f" (also as {checked[key]})"
            raise TrtoptError(f"output {p} is named for two outputs{spelled}", "give each output its own path")
        checked[key] = p
    return list(checked.values())


def ensure_replaceable_dir(path: PathLike, force: bool, is_ours: Callable[[Path], bool], what: str, *,
                           inputs: Iterable[PathLike | None] = (), size_bytes: int | None = None) -> Path:
    """Check, before any work, that a folder output may be (re)placed at ``path``.

    A missing or empty folder is fine. A folder with contents is replaced only with ``force``, and only when
    ``is_ours(path)`` says trtopt wrote it (e.g. it holds a bundle's manifest): never the current folder or
    one above it, the filesystem root, the home folder, a folder holding one of ``inputs``, or anyone
    else's folder, so ``--force`` can never delete files trtopt did not write.

    Args:
        is_ours: whether an existing folder is one trtopt wrote and may replace.
        what: what the folder is, for messages ("bundle folder").
        inputs: the command's inputs (files or folders); none may lie in the folder.
        size_bytes: about how many bytes the folder will hold, when known (checked against free space).
    """
    p = Path(path)
    _check_name(p)
    real = Path(os.path.realpath(p))
    if p.exists() and not p.is_dir():
        raise TrtoptError(f"{what} {p} is a file, not a folder", "name a new folder")
    for source in inputs:
        if source is not None and os.path.exists(source):
            held = Path(os.path.realpath(source))
            if held == real or real in held.parents:
                raise TrtoptError(f"{what} {p} holds the input {source}", f"write the {what} to a new folder")
    protected = {Path(os.path.realpath(os.getcwd())), Path(real.anchor), Path.home().resolve()}
    if real in protected or real in Path(os.path.realpath(os.getcwd())).parents:
        raise TrtoptError(f"{what} {p} is the current folder, one above it, the root or the home folder",
                          f"name a new folder for the {what}, e.g. -o {p / 'bundle'}")
    if p.is_dir() and any(p.iterdir()):
        if not force:
            raise TrtoptError(f"{what} {p} exists and is not empty", "pass --force to replace it or choose another")
        if not is_ours(p):
            raise TrtoptError(f"{p} is not a {what} trtopt wrote, so --force does not replace it",
                              "choose a new or empty folder (trtopt replaces only folders it wrote)")
    _check_parent(p)
    if size_bytes:
        _check_space(p, size_bytes)
    return p


def ensure_creatable_dir(path: PathLike, what: str) -> Path:
    """Check, before any work, that a folder output (a run directory) can be made at ``path`` or already is one.

    Raises TrtoptError naming ``what`` and the path when it is a file (or another non-folder), lies below a file,
    has a name the filesystem cannot hold, or lies in a folder that is not writable.
    """
    p = Path(path)
    _check_name(p)
    if p.exists() and not p.is_dir():
        raise TrtoptError(f"{what} {p} is a file, not a folder", f"give a folder path for the {what}")
    _check_parent(p)
    return p


def _check_target(p: Path, inputs: Iterable[PathLike | None], what: str) -> Path:
    """The checks every output file gets, whether replaced or appended to."""
    _check_name(p)  # first: stat() of a name that is too long fails with ENAMETOOLONG
    if p.exists():
        for source in inputs:
            if source is not None and os.path.exists(source) and os.path.samefile(p, source):
                raise TrtoptError(f"{what} {p} is also an input of this command ({source})",
                                  "write the output to another path; the input must stay as it is")
        if p.is_dir():
            raise TrtoptError(f"{what} {p} is a directory", "give a file path")
        if not stat.S_ISREG(p.stat().st_mode):
            raise TrtoptError(f"{what} {p} is a special file (device, pipe or socket), not a regular file",
                              "give the path of a regular file")
    _check_parent(p)
    return p


def _nearest_existing(p: Path) -> Path:
    """``p``'s closest ancestor that exists (the folder a write must be allowed in)."""
    parent = Path(os.path.abspath(p)).parent
    while not os.path.exists(parent):  # os.path: a name too long to stat() counts as missing
        parent = parent.parent
    return parent


def _limit(folder: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(folder, name)
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or no such limit: the usual value
        return default


def _check_name(p: Path) -> None:
    """Refuse names the filesystem cannot hold: each new path component within NAME_MAX, the path within PATH_MAX."""
    folder = _nearest_existing(p)
    name_max = _limit(folder, "PC_NAME_MAX", _DEFAULT_NAME_MAX)
    new_parts = Path(os.path.abspath(p)).relative_to(folder).parts
    for part in new_parts:
        if len(os.fsencode(part)) > name_max:
            raise TrtoptError(f"output name {part[:40]}… is {len(os.fsencode(part))} bytes, longer than the "
                              f"{name_max} bytes the filesystem allows", "choose a shorter name")
    if len(os.fsencode(os.path.abspath(p))) >= _limit(folder, "PC_PATH_MAX", _DEFAULT_PATH_MAX):
        raise TrtoptError(f"output path {str(p)[:40]}… is longer than the filesystem allows", "choose a shorter path")


def _check_parent(p: Path) -> None:
    """The folder that will hold ``p`` (or the closest existing ancestor, which gets the new folders) is a
    writable folder."""
    folder = _nearest_existing(p)
    if not folder.is_dir():
        raise TrtoptError(f"output {p} lies below {folder}, which is a file", "choose a path inside a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TrtoptError(f"cannot write {p}: folder {folder} is not writable (read-only filesystem or permissions)",
                          "choose a writable location")


def _check_space(p: Path, size_bytes: int) -> None:
    folder = _nearest_existing(p)
    free = shutil.disk_usage(folder).free
    if free < size_bytes:
        raise TrtoptError(f"writing {p} needs about {_size(size_bytes)}, but {folder} has {_size(free)} free",
                          "free some space or write to another filesystem")


def _size(n: int) -> str:
    """Bytes in the largest decimal unit that keeps a digit before the point ("12.3 kB", "1.8 GB")."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def check_suffix(path: PathLike | None, suffixes: tuple[str, ...], what: str, flag: str = "-o") -> None:
    """Refuse an output ``path`` whose name does not end in one of ``suffixes`` (case-insensitive), the kind of
    file the command writes: readers choose how to open a file by its suffix (``.onnx`` is read as ONNX, ``.pt2``
    as an ExportedProgram), so ``prune -o x.onnx`` wrote a file no trtopt command could load. None passes.

    Raises:
        TrtoptError: "FLAG PATH: WHAT is written there, not a SUFFIX file", the fix naming PATH with the first suffix
            (a folder: a file inside it).
    """
    if path is None or str(path).lower().endswith(tuple(s.lower() for s in suffixes)):
        return
    p = Path(path)
    if str(path).endswith(os.sep) or p.is_dir():  # a folder: the user meant a file in it, not one beside it
        fix = f"name a file inside it, e.g. {p / ('output' + suffixes[0])}"
    else:
        fix = f"name it {p.with_name(p.stem + suffixes[0]) if p.suffix else p.with_name(p.name + suffixes[0])}"
    raise TrtoptError(f"{flag} {path}: the file written is {what}, whose name ends in {' or '.join(suffixes)}", fix)


def write_error(e: OSError, target: PathLike) -> TrtoptError:
    """The one-line error for a write that failed for lack of space or a read-only filesystem."""
    where = f" ({e.filename})" if e.filename and str(e.filename) != str(target) else ""
    return TrtoptError(f"writing {target} failed: {e.strerror or e}{where}",
                       "free some space or write to another (writable) filesystem")


@contextlib.contextmanager
def atomic_output(path: PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The temporary file lives in the same directory (so the rename is atomic on POSIX) and is removed
    when the block raises, so readers only ever see the old file or the complete new one. A full or
    read-only filesystem (:data:`WRITE_ERRNOS`) is a TrtoptError naming the file.
    """
    target = ensure_writable(path, force)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _sweep_once(target.parent)
        tmp_path = _create_temp_file(target)
    except OSError as e:
        raise (write_error(e, target) if e.errno in WRITE_ERRNOS else e) from e
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except OSError as e:
        if e.errno in WRITE_ERRNOS:
            raise write_error(e, target) from e
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _tag(purpose: str = "") -> str:
    """A unique temporary name: ``trtopt-[<purpose>-]<host>-<pid>-<8 hex>`` (see :func:`sweep_stale`)."""
    return f"trtopt-{purpose + '-' if purpose else ''}{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"


def _create_temp_file(target: Path) -> Path:
    """Create an empty, uniquely named file beside ``target`` with the permissions the umask gives.

    (``tempfile.mkstemp`` would create it 0600, and the rename would carry that onto the result.) The name
    is ``.<target name>.<tag>.tmp``, or ``.<tag>.tmp`` when that would exceed the filesystem's name limit,
    so any name the filesystem accepts can be written.
    """
    name_max = _limit(target.parent, "PC_NAME_MAX", _DEFAULT_NAME_MAX)
    for _ in range(100):
        name = f".{target.name}.{_tag()}.tmp"
        if len(os.fsencode(name)) > name_max:
            name = f".{_tag()}.tmp"
        tmp_path = target.with_name(name)
        try:
            os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp_path
    raise FileExistsError(f"no free temporary name beside {target}")


def write_text(path: PathLike, text: str, force: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_output(path, force) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: PathLike, data: Any, force: bool = False) -> Path:
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
def staging_dir(near: PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory on the same filesystem as ``near``; removed afterwards.

    Used for multi-file artifacts (an ONNX model and its ``.onnx.data`` side file) that are built
    completely before being moved into place. A full or read-only filesystem is a TrtoptError naming
    ``near``.
    """
    parent = Path(near).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _sweep_once(parent)
        tmp = _make_dir(parent, "." + _tag())
    except OSError as e:
        raise (write_error(e, near) if e.errno in WRITE_ERRNOS else e) from e
    try:
        yield tmp
    except OSError as e:
        if e.errno in WRITE_ERRNOS:
            raise write_error(e, near) from e
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def temp_dir(purpose: str) -> Iterator[Path]:
    """Yield a fresh folder in the system temp folder (``trtopt-<purpose>-<host>-<pid>-<hex>``); removed afterwards.

    For intermediates no user sees (augmented models, per-layer trials). ``purpose`` is lowercase letters.
    """
    if not re.fullmatch(r"[a-z]+", purpose):
        raise ValueError(f"temp_dir purpose {purpose!r} must be lowercase letters")
    tmp = _make_dir(Path(tempfile.gettempdir()), _tag(purpose))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _make_dir(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir(mode=0o700)
    return path


def replace_dir(staged: PathLike, target: PathLike) -> None:
    """Move the complete folder ``staged`` to ``target``, replacing what is there (checked beforehand by
    :func:`ensure_replaceable_dir`).

    The old folder is first renamed aside (beside ``target``, under a temporary name) and removed only
    once the new one is in place, so a failure in between leaves the old folder intact.
    """
    staged, target = Path(staged), Path(target)
    if not target.exists():
        os.replace(staged, target)
        return
    aside = target.parent / f".{_tag()}"
    os.replace(target, aside)
    try:
        os.replace(staged, target)
    except BaseException:
        os.replace(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def sweep_stale(folder: PathLike) -> list[Path]:
    """Remove trtopt temporaries in ``folder`` that processes of this host left when they died; returns them.

    Only names of trtopt's patterns (staging folders ``.trtopt-<host>-<pid>-<hex>``, temporary files
    ``.<name>.trtopt-<host>-<pid>-<hex>.tmp`` and temp folders ``trtopt-<purpose>-<host>-<pid>-<hex>``)
    whose host is this one and whose pid no longer runs are removed; anything else is left alone.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:  # gone or unreadable: nothing of ours to sweep there
        return removed
    for entry in entries:
        m = _TEMP_NAME.fullmatch(entry.name)
        if not m or m["host"] != _HOST or _alive(int(m["pid"])):
            continue
        try:
            if entry.is_dir(follow_symlinks=False) and not m["tmp"]:
                shutil.rmtree(entry.path)
            elif entry.is_file(follow_symlinks=False) and m["tmp"] and m["dot"]:
                os.unlink(entry.path)
            else:
                continue
        except OSError:  # another process swept it first, or no permission: leave it
            continue
        removed.append(Path(entry.path))
    return removed


_swept: set[str] = set()


def _sweep_once(folder: Path) -> None:
    """:func:`sweep_stale` a folder the first time this process writes into it."""
    key = os.path.realpath(folder)
    if key not in _swept:
        _swept.add(key)
        sweep_stale(folder)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a pid that cannot be signalled counts as running)."""
    if pid <= 0 or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: another user's live process
        return True
    return True


def require_file(path: PathLike, what: str, fix: str) -> Path:
    """``path`` as a Path after checking that it is a regular file trtopt can read: every input file goes
    through here, so a folder or a pipe named where a file belongs is not reported as missing, and a pipe
    (FIFO) or device is refused instead of blocking the read forever.

    Args:
        what: what the file is, for the message ("ONNX file", "ranges file").
        fix: what to do when it does not exist.

    Raises TrtoptError naming ``what`` and the path when it does not exist (a dangling link included), is a
    directory, or is a special file (device, pipe, socket).
    """
    p = Path(path)
    if not p.exists():
        raise TrtoptError(f"{what} {p} does not exist", fix)
    if p.is_dir():
        raise TrtoptError(f"{what} {p} is a directory, not a file", f"give the path of the {what} itself")
    if not p.is_file():
        raise TrtoptError(f"{what} {p} is a special file (device, pipe or socket), not a regular file",
                          f"give the path of a regular file (copy the {what} into one)")
    return p


def read_json(path: PathLike, what: str, fix: str) -> Any:
    """The JSON value in ``path``, for every JSON file trtopt reads (ranges, baselines, plans, sidecars).

    Raises TrtoptError naming ``what`` and the file when it does not exist, is not UTF-8 text, is not JSON
    (with the line and column) or is nested too deeply for Python's parser; ``fix`` says what to do. The
    caller checks the value's shape.
    """
    p = require_file(path, what, fix)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TrtoptError(f"{what} {p} is not UTF-8 text (byte {e.start}): not valid JSON", fix) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TrtoptError(f"{what} {p} is not valid JSON (line {e.lineno} column {e.colno}: {e.msg})", fix) from None
    except RecursionError:
        raise TrtoptError(f"{what} {p} is not valid JSON for trtopt (nested too deeply)", fix) from None


def sha256_file(path: PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (bounded memory for multi-GB weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_bytes), b""):
            h.update(block)
    return h.hexdigest()
