"""Malformed files of every kind the CLI reads, thrown at every command that reads them.

Each case writes one bad input (truncated, garbage, empty, the wrong type of file, or well-formed with values
no reader may accept) beside the tiny CNN's good artifacts and runs one command on it in this process.
Every case must end the same way: exit 2, one stderr line ``trtopt: error: ... fix: ...``, no traceback,
no output or temporary left behind, and every input byte-identical afterwards.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.cli import assert_one_line_error, run_here, snapshot

TINY = "tests.helpers.tiny_models:tiny_cnn"
GARBAGE = np.random.default_rng(15).integers(0, 256, 4096, dtype=np.uint8).tobytes()


@dataclass(frozen=True)
class Case:
    id: str
    write: Callable[[Path], None]  # writes the bad input into the work folder
    args: tuple[str, ...]


def _bytes(name: str, data: bytes | Callable[[Path], bytes]) -> Callable[[Path], None]:
    def write(work: Path) -> None:
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data(work) if callable(data) else data)
    return write


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _png(width: int, height: int, data: bytes = b"") -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (the pixel data need not match)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(data)) + chunk(b"IEND", b""))


def _truncated(name: str) -> Callable[[Path], bytes]:
    return lambda work: (work / name).read_bytes()[: (work / name).stat().st_size // 2]


def _json(data) -> bytes:
    return json.dumps(data).encode()


def _edited_json(name: str, edit: Callable[[dict], None]) -> Callable[[Path], bytes]:
    def make(work: Path) -> bytes:
        data = json.loads((work / name).read_text(encoding="utf-8"))
        edit(data)
        return json.dumps(data).encode()
    return make


def _onnx_missing_data(_work: Path) -> bytes:
    from onnx import TensorProto, helper

    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 4], data_location=TensorProto.EXTERNAL)
    weight.external_data.add(key="location", value="weights.bin")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _onnx_empty_graph(_work: Path) -> bytes:
    import onnx

    return onnx.ModelProto(ir_version=8).SerializeToString()


# The bad variants of each kind of file: (variant id, bytes or bytes from the work folder).
ONNX = [("empty", b""), ("garbage", GARBAGE), ("truncated", _truncated("tiny.onnx")), ("json", _json({"not": "onnx"})),
        ("text", b"hello"), ("empty-graph", _onnx_empty_graph), ("missing-data", _onnx_missing_data)]
NPY = [("empty", b""), ("garbage", GARBAGE), ("truncated", _npy(np.zeros((8, 3, 32, 32), np.float32))[:300]),
       ("object", _npy(np.array([{"a": 1}], dtype=object))), ("wrong-shape", _npy(np.zeros((8, 5), np.float32))),
       ("strings", _npy(np.array(["abc"] * 8))), ("nan", _npy(np.full((8, 3, 32, 32), np.nan, np.float32))),
       ("npz-bytes", _npz(input=np.zeros((8, 3, 32, 32), np.float32)))]
NPZ = [("empty", b""), ("garbage", GARBAGE), ("truncated", _npz(input=np.zeros((8, 3, 32, 32), np.float32))[:900]),
       ("object", _npz(input=np.array([object(), 1], dtype=object))),
       ("wrong-name", _npz(pixels=np.zeros((8, 3, 32, 32), np.float32), other=np.zeros(8, np.float32))),
       ("npy-bytes", _npy(np.zeros((8, 3, 32, 32), np.float32))), ("no-samples", _npz(input=np.zeros((0, 3, 32, 32), np.float32)))]
IMAGES = [("empty", b""), ("garbage", GARBAGE), ("truncated", _png(64, 64, bytes(64 * 64 * 3 + 64))[:60]),
          ("text", b"not an image"), ("bomb", _png(100_000, 100_000))]
RECIPES = [("empty", b""), ("garbage", GARBAGE), ("not-utf8", b"model: x\n\xff\xfe\n"), ("list", b"- model: x\n"),
           ("scalar", b"42\n"), ("unknown-key", f"model: {TINY}\nbatchsize: 8\n".encode()),
           ("wrong-type", f"model: {TINY}\nbatch_sizes: eight\n".encode()),
           ("negative-shape", f"model: {TINY}\ninput_shapes: {{input: [-3, 32, 32]}}\n".encode()),
           ("huge-batch", f"model: {TINY}\nbatch_sizes: [100000000000000000000000]\n".encode()),
           ("python-tag", b"model: !!python/object/apply:os.system ['echo pwned']\n"),
           ("nested", b"model: " + b"[" * 5000 + b"\n"), ("tabs", b"model: x\n\texport: {}\n")]
RANGES = [("empty", b""), ("garbage", GARBAGE), ("truncated", _truncated("ranges.json")), ("list", _json([1, 2])),
          ("version", _edited_json("ranges.json", lambda d: d.update(version=99))),
          ("nan", _edited_json("ranges.json", lambda d: [t.update(amax=float("nan")) for t in d["tensors"].values()])),
          ("negative", _edited_json("ranges.json", lambda d: [t.update(amax=-1) for t in d["tensors"].values()])),
          ("string-amax", _edited_json("ranges.json", lambda d: [t.update(amax="1") for t in d["tensors"].values()])),
          ("tensors-list", _edited_json("ranges.json", lambda d: d.update(tensors=[]))),
          ("samples", _edited_json("ranges.json", lambda d: d.update(samples=-1))),
          # finite in JSON but not in float32: the scale was written as inf (or 0) into a model that loaded fine
          ("beyond-float32", _edited_json("ranges.json", lambda d: [t.update(amax=1e300, min=-1e300, max=1e300)
                                                                      for t in d["tensors"].values()])),
          ("below-float32", _edited_json("ranges.json", lambda d: [t.update(amax=1e-300, min=-1e-300, max=1e-300)
                                                                     for t in d["tensors"].values()])),
          ("not-utf8", b"\xff\xfe{}"), ("nested", b"[" * 100000)]
CACHES = [("empty", b""), ("garbage", GARBAGE), ("header-only", b"TRT-100300-EntropyCalibration2\n"),
          ("bad-header", b"TRT-9XXX-Nope\ninput: 3c010204\n"), ("bad-hex", b"TRT-100300-EntropyCalibration2\ninput: zzzz\n"),
          ("nan", b"TRT-100300-EntropyCalibration2\ninput: 7fc00000\n"),
          ("duplicate", b"TRT-100300-EntropyCalibration2\ninput: 3c010204\ninput: 3c010204\n"),
          ("utf16", "TRT-100300-EntropyCalibration2\ninput: 3c010204\n".encode("utf-16"))]


def _baseline(edit: Callable[[dict], None]) -> bytes:
    document = {"format": 2, "environment": {}, "settings": {}, "golden": None,
                "entries": [{"candidate": "tiny.onnx", "batch_size": 1, "repeats_ms": [[1.0, 1.1]]}]}
    edit(document)
    return _json(document)


BASELINES = [("empty", b""), ("garbage", GARBAGE), ("truncated", _baseline(lambda d: None)[:40]), ("list", _json([])),
             ("format", _baseline(lambda d: d.update(format=1))), ("no-entries", _baseline(lambda d: d.pop("entries"))),
             ("entries-dict", _baseline(lambda d: d.update(entries={"a": 1}))),
             ("repeats-flat", _baseline(lambda d: d["entries"][0].update(repeats_ms=[1.0, 2.0]))),
             ("repeats-nan", _baseline(lambda d: d["entries"][0].update(repeats_ms=[[float("nan")]]))),
             ("not-utf8", b"\xff\xfe{}"), ("nested", b"[" * 100000)]
PLANS = [("empty", b""), ("garbage", GARBAGE), ("truncated", b'{"format": 1, "trt_ver'), ("list", _json([])),
         ("format", _json({"format": 999})), ("not-utf8", b"\xff\xfe{}"), ("nested", b"[" * 100000)]
SIDECARS = [("empty", b""), ("garbage", GARBAGE), ("list", _json([])), ("version", _json({"version": 999})),
            ("fields", _json({"version": 1})), ("not-utf8", b"\xff\xfe{}")]
CHECKPOINTS = [("empty", b""), ("garbage", GARBAGE), ("truncated-zip", b"PK\x03\x04" + GARBAGE[:100]),
               ("npz", _npz(x=np.zeros(3)))]
MODEL_FILES = [("empty", b""), ("garbage", GARBAGE), ("zip", b"PK\x05\x06" + bytes(18))]


def _edge_sidecar(data: bytes) -> Callable[[Path], None]:
    def write(work: Path) -> None:
        (work / "m.pte").write_bytes(b"not really a program")
        (work / "m.pte.json").write_bytes(data)
    return write


def _cases() -> list[Case]:
    cases: list[Case] = []

    def add(kind: str, name: str, variants, commands) -> None:
        for variant, data in variants:
            for command in commands:
                cases.append(Case(f"{kind}-{variant}-{'-'.join(command[:2])}", _bytes(name, data), tuple(command)))

    add("onnx", "bad.onnx", ONNX, [
        ["calibrate", "bad.onnx", "-o", "out.json"], ["quantize", "bad.onnx", "--ranges", "ranges.json", "-o", "out.onnx"],
        ["quantize", "bad.onnx", "--precision", "fp16", "-o", "out.onnx"], ["bench", "bad.onnx", "--iterations", "1"],
        ["compare", "tiny.onnx", "bad.onnx"], ["build", "bad.onnx", "-o", "out.engine", "--plan-only", "--trt-version", "10.3"],
        ["bundle", "bad.onnx", "-o", "out"], ["check-2to4", "bad.onnx", "--json", "out.json"],
        ["cache", "inspect", "tiny.cache", "--onnx", "bad.onnx"]])
    add("npy", "bad.npy", NPY, [
        ["calibrate", "tiny.onnx", "-o", "out.json", "--data", "bad.npy"],
        ["bench", "tiny.onnx", "--iterations", "1", "--data", "bad.npy"], ["compare", TINY, "tiny.onnx", "--data", "bad.npy"],
        ["export", TINY, "-o", "out.onnx", "--data", "bad.npy"]])
    add("npz", "bad.npz", NPZ, [
        ["calibrate", "tiny.onnx", "-o", "out.json", "--data", "bad.npz"],
        ["bench", "tiny.onnx", "--iterations", "1", "--data", "bad.npz"],
        ["quantize", "tiny.onnx", "-o", "out.onnx", "--data", "bad.npz"],
        ["export", TINY, "-o", "out.onnx", "--data", "bad.npz"],
        ["distill", TINY, TINY, "-o", "out.pt", "--data", "bad.npz", "--steps", "1"]])
    add("image", "images/bad.png", IMAGES, [
        ["calibrate", "tiny.onnx", "-o", "out.json", "--data", "images"],
        ["bench", "tiny.onnx", "--iterations", "1", "--data", "images"]])
    add("recipe", "bad.yaml", RECIPES, [["optimize", "bad.yaml", "--out", "out"]])
    add("ranges", "bad.json", RANGES, [
        ["quantize", "tiny.onnx", "--ranges", "bad.json", "-o", "out.onnx"],
        ["cache", "from-ranges", "bad.json", "-o", "out.cache"], ["bundle", "tiny.onnx", "--ranges", "bad.json", "-o", "out"]])
    add("cache", "bad.cache", CACHES, [
        ["cache", "convert", "bad.cache", "-o", "out.cache"],
        ["cache", "to-ranges", "bad.cache", "-o", "out.json"],
        ["build", "tiny.onnx", "-o", "out.engine", "--plan-only", "--trt-version", "10.3", "--calib-cache", "bad.cache",
         "--minShapes", "input:1x3x32x32", "--optShapes", "input:8x3x32x32", "--maxShapes", "input:8x3x32x32"],
        ["bundle", "tiny.onnx", "--calib-cache", "bad.cache", "-o", "out"]])
    # `cache inspect` is the diagnosis: it reports unusable scales (exit 0) instead of refusing them
    add("cache", "bad.cache", [v for v in CACHES if v[0] != "nan"], [["cache", "inspect", "bad.cache"]])
    add("baseline", "baseline.json", BASELINES, [["bench", "tiny.onnx", "--iterations", "1", "--baseline", "baseline.json"]])
    add("plan", "plan.json", PLANS, [["build", "tiny.onnx", "--plan", "plan.json", "--plan-only", "-o", "out.engine"]])
    add("checkpoint", "bad.pt", CHECKPOINTS, [
        ["export", TINY, "--checkpoint", "bad.pt", "-o", "out.onnx"], ["prune", TINY, "--checkpoint", "bad.pt", "-o", "out.pt"],
        ["compare", TINY, "tiny.onnx", "--checkpoint", "bad.pt"]])
    add("model-file", "bad.pt", MODEL_FILES, [["export", "bad.pt", "-o", "out.onnx"], ["bench", "bad.pt", "--iterations", "1"]])
    for variant, data in SIDECARS:
        for command in (["bench", "m.pte", "--iterations", "1"], ["compare", "m.pte", "tiny.onnx"]):
            cases.append(Case(f"edge-sidecar-{variant}-{command[0]}", _edge_sidecar(data), tuple(command)))
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.helpers.tiny_artifacts import make_tiny_artifacts

    return make_tiny_artifacts(tmp_path_factory.mktemp("tiny"))


def test_the_fuzz_covers_every_kind_of_input():
    kinds = {case.id.split("-")[0] for case in CASES}
    assert kinds == {"onnx", "npy", "npz", "image", "recipe", "ranges", "cache", "baseline", "plan", "checkpoint",
                     "model", "edge"}
    assert len(CASES) > 200


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_malformed_input_is_one_line_and_changes_nothing(case, tiny, tmp_path, monkeypatch, capsys):
    for path in tiny.values():
        shutil.copy(path, tmp_path / path.name)
    case.write(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path, folders=True)
    assert_one_line_error(run_here(case.args, capsys))
    assert snapshot(tmp_path, folders=True) == before


# A folder or a pipe (FIFO) named where a command reads a file: refused by name, never reported as missing, never
# read (a pipe with no writer would block the command forever).
NOT_FILES = [["calibrate", "IN", "-o", "out.json"], ["calibrate", "tiny.onnx", "-o", "out.json", "--data", "IN"],
             ["quantize", "tiny.onnx", "--ranges", "IN", "-o", "out.onnx"], ["cache", "inspect", "IN"],
             ["optimize", "IN", "--out", "out"], ["export", "IN", "-o", "out.onnx"],
             ["compare", TINY, "tiny.onnx", "--checkpoint", "IN"]]


@pytest.mark.parametrize("kind, needle", [("folder", "is a directory, not a file"), ("pipe", "is a special file")])
@pytest.mark.parametrize("args", NOT_FILES, ids=["-".join(a[:2] + a[-1:]) for a in NOT_FILES])
def test_a_folder_or_pipe_as_input_file_is_named(kind, needle, args, tiny, tmp_path, monkeypatch, capsys):
    import os

    shutil.copy(tiny["onnx"], tmp_path / "tiny.onnx")
    (tmp_path / "IN").mkdir() if kind == "folder" else os.mkfifo(tmp_path / "IN")
    monkeypatch.chdir(tmp_path)
    data = args[args.index("--data") + 1] if "--data" in args else None
    if data == "IN" and kind == "folder":  # a folder is a valid --data source: an image folder
        needle = "holds no images"
    assert_one_line_error(run_here(args, capsys), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["IN", "tiny.onnx"]
