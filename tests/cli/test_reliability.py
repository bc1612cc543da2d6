"""Issue 15 (files in and out), each reproduction as a test: never lose a file, never read a bad one, every
bad input one line.

Commands run in this process (``trtopt.cli.main.main``) where they can; a refusal must leave the folder
exactly as it was (no output, no temporary, inputs byte-identical).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.cli import assert_one_line_error, refused, run_here

TINY = "tests.helpers.tiny_models:tiny_cnn"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.helpers.tiny_artifacts import make_tiny_artifacts

    return make_tiny_artifacts(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def work(tmp_path, monkeypatch, tiny):
    """A fresh folder holding tiny.onnx, ranges.json and tiny.cache, as the current directory."""
    for path in tiny.values():
        shutil.copy(path, tmp_path / path.name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --------------------------------------------------------------------------- 1. outputs checked before any work


@pytest.mark.parametrize("args", [
    ["quantize", "tiny.onnx", "--ranges", "ranges.json", "-o", "tiny.onnx"],
    ["quantize", "tiny.onnx", "--ranges", "ranges.json", "-o", "q.onnx", "--json", "ranges.json"],
    ["compare", "tiny.onnx", "tiny.onnx", "--json", "tiny.onnx"],
    ["calibrate", "tiny.onnx", "-o", "r.json", "--cache", "tiny.onnx"],
    ["cache", "convert", "tiny.cache", "-o", "tiny.cache"],
    ["export", TINY, "-o", "out.onnx", "--json", "out.onnx"],
], ids=["quantize-o", "quantize-json", "compare-json", "calibrate-cache", "cache-convert", "export-twice"])
def test_an_output_that_is_an_input_is_refused_even_with_force(work, capsys, args):
    result = refused([*args, "--force"], capsys, work)
    assert "is also an input" in result.stderr or "named for two outputs" in result.stderr


def test_a_device_is_never_replaced(work, capsys):
    refused(["calibrate", "tiny.onnx", "-o", "/dev/null", "--force"], capsys, work, "/dev/null", "special file")
    assert not Path("/dev/null").is_file() and Path("/dev/null").exists()


@pytest.mark.parametrize("args,needle", [
    (["calibrate", "tiny.onnx", "-o", "."], "is a directory"),
    (["bench", "tiny.onnx", "--iterations", "1", "--baseline", "b.json", "--history", "."], "is a directory"),
    (["bench", "tiny.onnx", "--iterations", "1", "--json", "plain.txt/out.json"], "which is a file"),
])
def test_directories_and_impossible_paths_are_refused_before_any_work(work, capsys, args, needle):
    (work / "plain.txt").write_text("x", encoding="utf-8")
    refused([*args, "--force"], capsys, work, needle)


def test_a_long_legal_output_name_works_and_a_too_long_one_fails_before_work(work, capsys):
    limit = os.pathconf(work, "PC_NAME_MAX")
    long_name = "r" * (limit - 5) + ".json"  # trtopt's temporary name for it would be ~30 bytes longer
    assert run_here(["cache", "to-ranges", "tiny.cache", "-o", long_name], capsys).returncode == 0
    assert json.loads((work / long_name).read_text(encoding="utf-8"))["tensors"]
    assert not [p for p in work.iterdir() if p.name.startswith(".")]
    refused(["cache", "to-ranges", "tiny.cache", "-o", "r" * (limit + 1) + ".json"], capsys, work, f"{limit} bytes")
    # calibrate derives a data manifest name 5 bytes longer than its -o: refused before calibrating
    refused(["calibrate", "tiny.onnx", "-o", "c" * (limit - 5) + ".json"], capsys, work, f"{limit} bytes")


@pytest.mark.parametrize("args,existing", [
    (["quantize", "tiny.onnx", "--ranges", "ranges.json", "-o", "q.onnx", "--json", "taken.json"], "taken.json"),
    (["calibrate", "tiny.onnx", "-o", "r.json", "--cache", "taken.cache"], "taken.cache"),
    (["cluster", TINY, "-o", "m.shared.npz", "--checkpoint-out", "taken.pt"], "taken.pt"),
    (["cluster", TINY, "-o", "m.shared.npz", "--onnx", "taken.onnx"], "taken.onnx"),
    (["prune", TINY, "-o", "p.pt", "--json", "taken.json"], "taken.json"),
    (["export", TINY, "-o", "e.onnx", "--json", "taken.json"], "taken.json"),
    (["bench", "tiny.onnx", "--iterations", "1", "--json", "taken.json"], "taken.json"),
    (["compare", "tiny.onnx", "tiny.onnx", "--json", "taken.json"], "taken.json"),
    (["factorize", TINY, "-o", "f.onnx", "--json", "taken.json"], "taken.json"),
], ids=lambda v: v if isinstance(v, str) else v[0])
def test_a_second_output_is_checked_before_the_main_one_is_written(work, capsys, args, existing):
    (work / existing).write_text("keep me", encoding="utf-8")
    refused(args, capsys, work, existing, "already exists")


def test_an_unwritable_folder_is_one_line_before_any_work(work, capsys, monkeypatch):
    """A read-only folder or filesystem (simulated: as root only a read-only mount would refuse)."""
    real_access = os.access
    locked = work / "locked"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked else real_access(p, mode, **kw))
    refused(["calibrate", "tiny.onnx", "-o", "ok.json", "--cache", "locked/c.cache"], capsys, work,
            "locked", "not writable")


def test_a_full_disk_is_one_line_and_leaves_no_file(work, capsys, monkeypatch):
    real_replace = os.replace

    def full(src, dst):
        if str(dst).endswith("r.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    refused(["calibrate", "tiny.onnx", "-o", "r.json"], capsys, work, "r.json", "No space left on device")


def test_a_full_disk_anywhere_in_a_command_is_one_line(work, capsys, monkeypatch):
    from trtopt.cli import doctor

    def full(_args):
        raise OSError(errno.EDQUOT, "Disk quota exceeded", "somewhere/out.bin")

    monkeypatch.setattr(doctor, "cmd_doctor", full)
    assert_one_line_error(run_here(["doctor"], capsys), "Disk quota exceeded", "somewhere/out.bin")


# --------------------------------------------------------------------------- 2. --force replaces only trtopt's own


def test_bundle_into_the_current_folder_never_deletes_it(work, capsys, tiny):
    (work / "notes.txt").write_text("mine", encoding="utf-8")
    refused(["bundle", "tiny.onnx", "-o", ".", "--force"], capsys, work, "holds the input")
    refused(["bundle", tiny["onnx"], "-o", ".", "--force"], capsys, work, "current folder")  # input elsewhere


def test_bundle_into_the_folder_of_its_input_never_empties_it(work, capsys):
    base = work / "base"
    base.mkdir()
    shutil.move(work / "tiny.onnx", base / "tiny.onnx")
    (base / "notes.txt").write_text("mine", encoding="utf-8")
    refused(["bundle", "base/tiny.onnx", "-o", "base", "--force"], capsys, work, "holds the input base/tiny.onnx")


def test_force_replaces_a_bundle_but_not_a_foreign_folder(work, capsys):
    assert run_here(["bundle", "tiny.onnx", "-o", "b"], capsys).returncode == 0
    stale = work / "b" / "stale.txt"
    stale.write_text("from an earlier bundle", encoding="utf-8")
    refused(["bundle", "tiny.onnx", "-o", "b"], capsys, work, "exists and is not empty")
    assert run_here(["bundle", "tiny.onnx", "-o", "b", "--force"], capsys).returncode == 0
    assert not stale.exists() and (work / "b" / "manifest.json").is_file()
    photos = work / "photos"
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(b"jpeg")
    refused(["bundle", "tiny.onnx", "-o", "photos", "--force"], capsys, work, "not a bundle folder trtopt wrote")


# --------------------------------------------------------------------------- 3. every file read is validated


def _edit_ranges(path: Path, **tensor_fields) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    for entry in data["tensors"].values():
        entry.update(tensor_fields)
    path.write_text(json.dumps(data), encoding="utf-8")  # json writes NaN/Infinity as Python reads them


@pytest.mark.parametrize("fields,needle", [
    ({"amax": float("nan")}, "NaN or infinite"), ({"amax": float("inf")}, "NaN or infinite"),
    ({"amax": 0.0}, "-amax <= min <= max <= amax"), ({"amax": -1.0}, "amax is negative"),
    ({"amax": "1.5"}, "field 'amax' is '1.5', not a number"), ({"min": True}, "field 'min' is True"),
])
def test_unusable_ranges_are_refused_where_they_are_read(work, capsys, fields, needle):
    _edit_ranges(work / "ranges.json", **fields)
    for args in (["quantize", "tiny.onnx", "--ranges", "ranges.json", "-o", "q.onnx"],
                 ["cache", "from-ranges", "ranges.json", "-o", "c.cache"],
                 ["bundle", "tiny.onnx", "--ranges", "ranges.json", "-o", "b"]):
        refused(args, capsys, work, "ranges.json", needle)


@pytest.mark.parametrize("edit,needle", [
    (lambda d: d.update(samples="many"), "field 'samples' is 'many' (str)"),
    (lambda d: d.update(tensors=[1, 2]), "field 'tensors' is [1, 2] (list)"),
    (lambda d: d.update(settings=7), "field 'settings' is 7"),
    (lambda d: d["tensors"].update(input=3), "tensor 'input' is 3, not an object"),
])
def test_ranges_of_the_wrong_shape_name_the_field(work, capsys, edit, needle):
    data = json.loads((work / "ranges.json").read_text(encoding="utf-8"))
    edit(data)
    (work / "ranges.json").write_text(json.dumps(data), encoding="utf-8")
    refused(["quantize", "tiny.onnx", "--ranges", "ranges.json", "-o", "q.onnx"], capsys, work, needle)


@pytest.mark.parametrize("word,shown", [("7fc00000", "nan"), ("00000000", "0.0"), ("bf800000", "-1.0")])
def test_caches_with_unusable_scales_are_refused_and_never_become_nan_json(work, capsys, word, shown):
    lines = (work / "tiny.cache").read_text(encoding="utf-8").splitlines()
    (work / "tiny.cache").write_text("\n".join([lines[0], *(f"{ln.rpartition(': ')[0]}: {word}" for ln in lines[1:])])
                                     + "\n", encoding="utf-8")
    for args in (["cache", "convert", "tiny.cache", "-o", "c.cache", "--trt-version", "10.16.0"],
                 ["cache", "to-ranges", "tiny.cache", "-o", "r.json"],
                 ["build", "tiny.onnx", "-o", "e.engine", "--plan-only", "--trt-version", "10.3", "--calib-cache",
                  "tiny.cache", "--minShapes", "input:1x3x32x32", "--optShapes", "input:8x3x32x32", "--maxShapes", "input:8x3x32x32"],
                 ["bundle", "tiny.onnx", "--calib-cache", "tiny.cache", "-o", "b"]):
        refused(args, capsys, work, "tiny.cache", "not finite and positive", f"input: {shown}")
    inspected = run_here(["cache", "inspect", "tiny.cache"], capsys)  # the diagnosis still reads it
    assert inspected.returncode == 0 and "not finite and positive" in inspected.stdout


def test_an_op_type_filter_that_matches_nothing_names_the_op_types_present(work, capsys):
    refused(["quantize", "tiny.onnx", "--ranges", "ranges.json", "-o", "q.onnx", "--op-types", "Convv"], capsys, work,
            "'Convv'", "Conv, Gemm, ReduceMean, Relu")
    refused(["quantize", "tiny.onnx", "--ranges", "ranges.json", "-o", "q.onnx", "--op-types", "Softmax"], capsys, work,
            "match no node", "Conv, Gemm, ReduceMean, Relu")
    refused(["quantize", "tiny.onnx", "--ranges", "ranges.json", "-o", "q.onnx", "--op-types", "Relu"], capsys, work,
            "placed no Q/DQ node")


def test_object_arrays_are_never_unpickled(work, capsys):
    np.save(work / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(work / "obj.npz", input=np.array([object(), 1], dtype=object))
    for data in ("obj.npy", "obj.npz"):
        refused(["calibrate", "tiny.onnx", "-o", "r.json", "--data", data], capsys, work, data, "object array")


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(work, capsys):
    from PIL import Image

    from trtopt.data import MAX_IMAGE_PIXELS

    images = work / "images"
    images.mkdir()
    side = int(MAX_IMAGE_PIXELS ** 0.5) + 1
    with Image.new("1", (side, side)) as bomb:  # 1 bit per pixel: a 1 MB PNG that decodes to 300 MB as RGB
        bomb.save(images / "bomb.png")
    refused(["calibrate", "tiny.onnx", "-o", "r.json", "--data", "images"], capsys, work, "bomb.png",
            f"{side}x{side} pixels")


@pytest.mark.parametrize("recipe,needle", [
    (b"model: x\n\xff\xfe\n", "not UTF-8 text (byte 9, line 2)"),
    (b"model: " + TINY.encode() + b"\ninput_shapes: {input: [-3, 32, 32]}\n", "line 2: input_shapes.input"),
    (b"model: " + TINY.encode() + b"\nbatch_sizes: [100000000000000000000000]\n", "integers in 1..65536"),
    (b"model: " + TINY.encode() + b"\ninput_shapes: {input: [3, 100000, 100000]}\n", "30,000,000,000 elements"),
])
def test_bad_recipes_are_one_line_before_any_work(work, capsys, recipe, needle):
    (work / "r.yaml").write_bytes(recipe)
    refused(["optimize", "r.yaml", "--out", "runs/r"], capsys, work, "r.yaml", needle)


def test_a_model_with_nan_weights_fails_export_and_is_not_written(work, capsys):
    refused(["export", "tests.helpers.tiny_models:nan_weights", "-o", "nan.onnx"], capsys, work,
            "computes NaN or inf in output 'output'")


# --------------------------------------------------------------------------- 4. tracebacks become one line


def test_a_model_factory_that_raises_is_one_line(work, capsys):
    refused(["export", "tests.helpers.tiny_models:raising", "-o", "m.onnx"], capsys, work,
            "tests.helpers.tiny_models:raising raised RuntimeError: weights file missing")


@pytest.mark.parametrize("args,needle", [
    (["bench", "tiny.onnx", "--batch-sizes", "100000000"], "--batch-sizes 100000000 is outside 1..65536"),
    (["bench", "tiny.onnx", "--input-shape", "1x3x100000x100000"], "30,000,000,000 elements"),
    (["bench", "tiny.onnx", "--input-shape", "input:[1,3,20000,20000]"], "more than this machine can hold"),
    (["calibrate", "tiny.onnx", "-o", "r.json", "--samples", "100000000"], "more than this machine can hold"),
])
def test_huge_sizes_are_one_line_before_allocating(work, capsys, monkeypatch, args, needle):
    from trtopt.cli import _common

    monkeypatch.setattr(_common, "_available_memory", lambda: 8 * 10**9)  # the same on every machine
    refused([*args, "--iterations", "1"] if args[0] == "bench" else args, capsys, work, needle)


def test_bench_on_a_model_without_inputs_is_one_line(work, capsys):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    constant = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones((1, 4), np.float32)))
    graph = helper.make_graph([constant, helper.make_node("Identity", ["c"], ["y"])], "no_inputs", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), work / "constant.onnx")
    refused(["bench", "constant.onnx", "--iterations", "1"], capsys, work, "constant.onnx has no inputs")


@pytest.mark.parametrize("labels,needle", [
    (np.full(8, 10), "outside 0..9"), (np.full(8, -1), "outside 0..9"), (np.zeros(8, np.float32), "float32, not integer"),
    (np.zeros((8, 1), np.int64), "shape (8, 1)"),
])
def test_distill_labels_that_are_no_class_indices_are_one_line(work, capsys, labels, needle):
    inputs = np.random.default_rng(0).uniform(-1, 1, (8, 3, 32, 32)).astype(np.float32)
    np.savez(work / "train.npz", input=inputs, labels=labels)
    refused(["distill", TINY, TINY, "-o", "student.pt", "--data", "train.npz", "--labels", "--steps", "1"], capsys,
            work, "labels in train.npz", needle)


def test_a_closed_stdout_ends_quietly():
    """``trtopt doctor | head``: the reader goes away; no traceback, status 128 + SIGPIPE."""
    from tests.helpers.env import cli_environment

    proc = subprocess.Popen([sys.executable, "-m", "trtopt", "doctor"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=cli_environment())
    proc.stdout.close()  # before trtopt prints anything
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 128 + signal.SIGPIPE
    assert stderr == ""


def test_int8_targets_without_tensorrt_writes_the_report(work, capsys):
    (work / "r.yaml").write_text(f"model: {TINY}\nint8_targets: [onnxruntime]\nstages: [export, calibrate, quantize]\n",
                                 encoding="utf-8")
    assert run_here(["optimize", "r.yaml", "--out", "run"], capsys).returncode == 0
    markdown = (work / "run" / "report.md").read_text(encoding="utf-8")
    assert "no TensorRT Q/DQ model: int8_targets leaves tensorrt out" in markdown
    assert json.loads((work / "run" / "report.json").read_text(encoding="utf-8"))["int8"]["onnxruntime"]


# --------------------------------------------------------------------------- 5. SIGTERM like SIGINT; the sweep


def _trtopt_temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "trtopt-" in p.name)


def test_sigterm_during_calibration_removes_its_temp_folder(work, capsys, monkeypatch):
    import tempfile

    from trtopt.quant import calibrate as calibrate_module

    temp = work / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    seen: list[list[str]] = []
    real_update = calibrate_module._update

    def update_then_term(*args):
        seen.append(_trtopt_temporaries(temp))
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` would, while the temp folder exists
        return real_update(*args)

    monkeypatch.setattr(calibrate_module, "_update", update_then_term)
    handler = signal.getsignal(signal.SIGTERM)
    result = run_here(["calibrate", "tiny.onnx", "-o", "r.json"], capsys)
    assert result.returncode == 128 + signal.SIGTERM
    assert result.stderr.strip() == "trtopt: interrupted (SIGTERM); no partial outputs were kept"
    assert seen and seen[0][0].startswith("trtopt-calibrate-")
    assert _trtopt_temporaries(temp) == [] and not (work / "r.json").exists()
    assert signal.getsignal(signal.SIGTERM) == handler  # restored for whoever called main()


def test_sigterm_during_an_export_removes_the_staging_folder(tmp_path):
    from tests.helpers.env import cli_environment

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "trtopt", "-q", "export", "tests.helpers.tiny_models:slow", "-o",
                             str(out / "slow.onnx"), "--exporter", "torchscript"], stderr=subprocess.PIPE,
                            env=cli_environment(), text=True)
    deadline = time.monotonic() + 120
    while not (out.is_dir() and _trtopt_temporaries(out)) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert _trtopt_temporaries(out), "the export ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.strip() == "trtopt: interrupted (SIGTERM); no partial outputs were kept"
    assert list(out.iterdir()) == []


def test_startup_sweeps_stale_temp_folders_of_dead_processes(work, capsys, monkeypatch):
    import tempfile

    from trtopt import files

    temp = work / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    stale = temp / f"trtopt-calibrate-{files._HOST}-{dead}-0badcafe"
    live = temp / f"trtopt-calibrate-{files._HOST}-{os.getpid()}-0badcafe"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "augmented.onnx").write_bytes(b"x" * 1000)
    assert run_here(["cache", "inspect", "tiny.cache"], capsys).returncode == 0
    assert _trtopt_temporaries(temp) == [live.name]
