"""trtopt.files: atomic writes, --force checks, JSON of numpy values, hashes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from trtopt.errors import TrtoptError
from trtopt.files import atomic_output, ensure_writable, sha256_file, write_json, write_text


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
