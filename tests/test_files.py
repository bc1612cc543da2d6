"""trtopt.files: atomic writes, --force checks, JSON of numpy values, hashes."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from trtopt import files
from trtopt.errors import TrtoptError
from trtopt.files import (
    atomic_output,
    check_outputs,
    ensure_replaceable_dir,
    ensure_writable,
    replace_dir,
    sha256_file,
    staging_dir,
    temp_dir,
    write_json,
    write_text,
)


def test_atomic_output_writes_the_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("new", encoding="utf-8")
        assert not target.exists()  # readers never see a half-written file
    assert target.read_text(encoding="utf-8") == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_atomic_output_failure_keeps_old_content_and_removes_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_output(target, force=True) as tmp:
            tmp.write_text("half-written", encoding="utf-8")
            raise RuntimeError("interrupted")
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_output_failure_on_new_file_leaves_nothing(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(target) as tmp:
            tmp.write_text("partial", encoding="utf-8")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_gives_files_the_usual_permissions(tmp_path):
    """A report or JSON written by trtopt is as readable as any file the user creates (umask applies)."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x", encoding="utf-8")
    written = write_text(tmp_path / "written.txt", "x")
    assert (written.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)


def test_ensure_writable_refuses_existing_file_without_force(tmp_path):
    target = tmp_path / "exists.json"
    target.write_text("{}", encoding="utf-8")
    with pytest.raises(TrtoptError, match="already exists") as err:
        ensure_writable(target, force=False)
    assert str(target) in str(err.value) and "--force" in str(err.value)
    assert ensure_writable(target, force=True) == target
    assert ensure_writable(str(tmp_path / "new.json"), force=False) == tmp_path / "new.json"


def test_ensure_writable_refuses_directory_even_with_force(tmp_path):
    folder = tmp_path / "a_dir"
    folder.mkdir()
    for force in (False, True):
        with pytest.raises(TrtoptError, match="is a directory") as err:
            ensure_writable(folder, force=force)
        assert str(folder) in str(err.value)


def test_write_text_refuses_overwrite_without_force(tmp_path):
    target = tmp_path / "a.txt"
    write_text(target, "one")
    with pytest.raises(TrtoptError, match="already exists"):
        write_text(target, "two")
    assert target.read_text(encoding="utf-8") == "one"
    write_text(target, "two", force=True)
    assert target.read_text(encoding="utf-8") == "two"


def test_write_json_handles_numpy_and_paths(tmp_path):
    data = {
        "f32": np.float32(1.5), "f64": np.float64(0.25), "i64": np.int64(7), "flag": np.bool_(True),
        "array": np.arange(6, dtype=np.int32).reshape(2, 3), "floats": np.array([0.5, 1.0], dtype=np.float32),
        "path": Path("engines") / "model.onnx", "nested": [{"x": np.int8(-3)}],
    }
    path = write_json(tmp_path / "out.json", data)
    loaded = json.loads(path.read_text(encoding="utf-8"))
    assert loaded == {"f32": 1.5, "f64": 0.25, "i64": 7, "flag": True, "array": [[0, 1, 2], [3, 4, 5]],
                      "floats": [0.5, 1.0], "path": os.path.join("engines", "model.onnx"), "nested": [{"x": -3}]}


def test_write_json_unserializable_raises_and_writes_nothing(tmp_path):
    with pytest.raises(TypeError, match="object"):
        write_json(tmp_path / "out.json", {"x": object()})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("size", [0, 5, (1 << 20) + 17])
def test_sha256_file_matches_hashlib(tmp_path, size):
    payload = np.random.default_rng(size).integers(0, 256, size=size, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(payload)
    assert sha256_file(path) == hashlib.sha256(payload).hexdigest()
    assert sha256_file(path, chunk_bytes=7) == hashlib.sha256(payload).hexdigest()


# --------------------------------------------------------------------------- the one output check


def test_an_input_is_never_an_output_even_with_force(tmp_path):
    source = tmp_path / "model.onnx"
    source.write_bytes(b"onnx")
    link = tmp_path / "link.onnx"
    link.symlink_to(source)
    hard = tmp_path / "hard.onnx"
    os.link(source, hard)
    for output in (source, link, hard):
        with pytest.raises(TrtoptError, match="is also an input") as err:
            ensure_writable(output, force=True, inputs=["zoo:not_a_file", source])
        assert str(output) in str(err.value)
    assert source.read_bytes() == b"onnx"


def test_special_files_are_refused_even_with_force():
    for force in (False, True):
        with pytest.raises(TrtoptError, match="special file") as err:
            ensure_writable("/dev/null", force=force)
        assert "/dev/null" in str(err.value)


def test_a_file_below_a_file_is_refused(tmp_path):
    (tmp_path / "plain").write_text("x", encoding="utf-8")
    with pytest.raises(TrtoptError, match="which is a file"):
        ensure_writable(tmp_path / "plain" / "out.json", force=False)


def test_a_name_the_filesystem_cannot_hold_is_refused_before_writing(tmp_path):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    with pytest.raises(TrtoptError, match=f"longer than the {limit} bytes"):
        ensure_writable(tmp_path / ("x" * (limit + 1)), force=False)
    with pytest.raises(TrtoptError, match="longer than"):
        ensure_writable(tmp_path / ("d" * (limit + 1)) / "out.json", force=False)
    assert list(tmp_path.iterdir()) == []


def test_the_longest_legal_name_is_written_although_the_temp_name_would_be_longer(tmp_path):
    """trtopt's temporary name adds ~30 characters; a name near the limit still works and leaves no temp file."""
    name = "r" * (os.pathconf(tmp_path, "PC_NAME_MAX") - 5) + ".json"
    written = write_json(tmp_path / name, {"ok": True})
    assert json.loads(written.read_text(encoding="utf-8")) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_an_unwritable_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    """A read-only filesystem or folder (os.access says no; as root only a read-only mount does)."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == tmp_path else real_access(p, mode, **kw))
    with pytest.raises(TrtoptError, match="not writable") as err:
        ensure_writable(tmp_path / "new" / "out.json", force=False)
    assert str(tmp_path) in str(err.value)


def test_not_enough_free_space_is_refused_where_the_size_is_known(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(TrtoptError, match=r"needs about 5\.0 kB, but .* has 1\.0 kB free"):
        ensure_writable(tmp_path / "big.onnx", force=False, size_bytes=5000)
    assert ensure_writable(tmp_path / "small.json", force=False, size_bytes=100) == tmp_path / "small.json"


def test_check_outputs_refuses_one_path_for_two_outputs_and_checks_appended_files(tmp_path):
    out = tmp_path / "out.json"
    with pytest.raises(TrtoptError, match="named for two outputs"):
        check_outputs([out, str(tmp_path / "." / "out.json")], force=True)
    history = tmp_path / "history.jsonl"
    history.write_text("{}\n", encoding="utf-8")
    assert check_outputs([out], force=False, appended=[history, None]) == [out, history]  # appending needs no --force
    with pytest.raises(TrtoptError, match="is a directory"):
        check_outputs([out], force=False, appended=[tmp_path])


def test_a_full_disk_during_a_write_is_one_error_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    def full(*_args, **_kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(TrtoptError, match="No space left on device") as err:
        write_text(tmp_path / "out.txt", "data")
    assert "out.txt" in str(err.value) and err.value.fix
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_inside_a_staging_folder_is_one_error_and_leaves_nothing(tmp_path):
    import errno

    with pytest.raises(TrtoptError, match="No space left on device"):
        with staging_dir(tmp_path / "model.onnx") as stage:
            (stage / "model.onnx").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device", str(stage / "model.onnx"))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- folders: --force replaces only trtopt's


def _is_ours(path):
    return (path / "manifest.json").is_file()


def test_a_folder_holding_an_input_or_the_current_folder_is_never_replaced(tmp_path, monkeypatch):
    base = tmp_path / "base"
    base.mkdir()
    model = base / "tiny.onnx"
    model.write_bytes(b"onnx")
    (base / "manifest.json").write_text("{}", encoding="utf-8")  # even one that looks like ours
    with pytest.raises(TrtoptError, match="holds the input"):
        ensure_replaceable_dir(base, True, _is_ours, "bundle folder", inputs=[model])
    with pytest.raises(TrtoptError, match="holds the input"):
        ensure_replaceable_dir(tmp_path, True, _is_ours, "bundle folder", inputs=[model])
    monkeypatch.chdir(base)
    for folder in (".", "..", base):
        with pytest.raises(TrtoptError, match="current folder"):
            ensure_replaceable_dir(folder, True, _is_ours, "bundle folder")
    assert sorted(p.name for p in base.iterdir()) == ["manifest.json", "tiny.onnx"]


def test_only_a_folder_trtopt_wrote_is_replaced_and_only_with_force(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"jpg")
    with pytest.raises(TrtoptError, match="not a bundle folder trtopt wrote"):
        ensure_replaceable_dir(foreign, True, _is_ours, "bundle folder")
    ours = tmp_path / "bundle"
    ours.mkdir()
    (ours / "manifest.json").write_text("{}", encoding="utf-8")
    with pytest.raises(TrtoptError, match="exists and is not empty"):
        ensure_replaceable_dir(ours, False, _is_ours, "bundle folder")
    assert ensure_replaceable_dir(ours, True, _is_ours, "bundle folder") == ours
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ensure_replaceable_dir(empty, False, _is_ours, "bundle folder") == empty
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(TrtoptError, match="is a file, not a folder"):
        ensure_replaceable_dir(tmp_path / "file", True, _is_ours, "bundle folder")


def test_replace_dir_swaps_the_folder_and_keeps_the_old_one_when_the_move_fails(tmp_path, monkeypatch):
    target, new = tmp_path / "bundle", tmp_path / "new"
    target.mkdir()
    (target / "old.txt").write_text("old", encoding="utf-8")
    new.mkdir()
    (new / "new.txt").write_text("new", encoding="utf-8")
    real_replace = os.replace
    calls = []

    def failing_second(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError("simulated")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_second)
    with pytest.raises(OSError, match="simulated"):
        replace_dir(new, target)
    monkeypatch.setattr(os, "replace", real_replace)
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    replace_dir(new, target)
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


# --------------------------------------------------------------------------- temporaries and the sweep


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_temporaries_carry_host_and_pid_in_their_names(tmp_path):
    with staging_dir(tmp_path / "model.onnx") as stage:
        assert re.fullmatch(rf"\.trtopt-{files._HOST}-{os.getpid()}-[0-9a-f]{{8}}", stage.name)
    with temp_dir("calibrate") as tmp:
        assert re.fullmatch(rf"trtopt-calibrate-{files._HOST}-{os.getpid()}-[0-9a-f]{{8}}", tmp.name)
    assert not tmp.exists() and not stage.exists()


def test_sweep_removes_only_trtopt_temporaries_of_dead_processes_on_this_host(tmp_path):
    dead, host = _dead_pid(), files._HOST
    other_host = "0" * 6 if host != "0" * 6 else "1" * 6
    stale_stage = tmp_path / f".trtopt-{host}-{dead}-deadbeef"
    stale_temp = tmp_path / f"trtopt-calibrate-{host}-{dead}-deadbeef"
    stale_file = tmp_path / f".model.onnx.trtopt-{host}-{dead}-deadbeef.tmp"
    live_stage = tmp_path / f".trtopt-{host}-{os.getpid()}-deadbeef"
    foreign = tmp_path / f".trtopt-{other_host}-{dead}-deadbeef"
    lookalike = tmp_path / f"trtopt-{host}-{dead}-notours"
    user_file = tmp_path / f"trtopt-{host}-{dead}-deadbeef.tmp"  # no leading dot: not a name trtopt writes
    for folder in (stale_stage, stale_temp, live_stage, foreign, lookalike):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"x")
    for file in (stale_file, user_file):
        file.write_bytes(b"x")
    assert sorted(files.sweep_stale(tmp_path)) == sorted([stale_stage, stale_temp, stale_file])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (live_stage, foreign, lookalike, user_file))


@pytest.mark.parametrize("trailing", ["/", ""])
def test_check_suffix_on_a_folder_suggests_a_file_inside_it(tmp_path, trailing):
    """`calibrate -o out/` was told "name it out.json": a file beside the folder the user meant to write into."""
    from trtopt.files import check_suffix

    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(TrtoptError) as info:
        check_suffix(str(folder) + trailing, (".json",), "a ranges JSON")
    assert f"name a file inside it, e.g. {folder / 'output.json'}" in str(info.value)
