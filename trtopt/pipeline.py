"""`optimize(recipe, out_dir)`: run a recipe's stages into a run directory, resumably, and report.

The pipeline only composes stages (`export_onnx`, `calibrate`, `quantize`, `bench`, `compare_outputs`,
...) and records what each produced; it never reaches into their internals. A run directory holds:

    recipe.yaml          the resolved recipe (defaults < recipe file < CLI flags)
    stages.json          the ledger: per stage, its content key, its output files with sha256, its result
    model.onnx           FP32 export (+ model.onnx.data when large)
    ranges.json, calibration.cache            INT8 ranges and the TensorRT 10.x calibration cache
    model.int8.<target>.onnx, model.fp16.onnx quantized variants per target
    timing.json, accuracy.json                the profile and compare stages' measurements
    report.json, report.md, report.html, plots/*.png

**Resume.** A stage's key is the sha256 of its config, the content hashes of its inputs and trtopt's
version. Inputs are hashed by content, never named by path: upstream output files, a model or checkpoint
file, and every data file or image folder the stage reads (a folder: its sorted file names and their
contents; each source hashed once per run). So overwriting the calibration ``.npy`` in place re-runs
calibrate and what depends on it, while stages that never read it are reused. When the ledger holds the
same key and every recorded output file still has its recorded sha256, the stage is skipped and its
outputs reused; otherwise it runs again, and so does everything downstream whose inputs changed. The
report is always re-rendered (it is cheap and records which stages were reused). A partial rerun
(``stages`` a subset of those the existing ``report.json`` covers) writes its report into ``partial/``
beside the fuller one, which it names, instead of replacing it.

The ledger records every path inside the run directory relative to it, so a run resumes from any
working directory, and a copied or moved run directory resumes reading (and verifying) its own files.
One `optimize` at a time per run directory: it holds an OS lock on ``.trtopt.lock`` there, and a second
process is refused with one line instead of interleaving its writes. A directory that holds files but
no ledger is not a run directory: it is refused without ``force``. ``force`` re-runs every stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trtopt._config import to_dict
from trtopt._version import __version__
from trtopt.config import Recipe, dump_recipe
from trtopt.errors import TrtoptError
from trtopt.files import ensure_creatable_dir, sha256_file, write_json, write_text
from trtopt.progress import ProgressCallback, StepCallback, running

LEDGER = "stages.json"
LEDGER_FORMAT = 2
LOCK = ".trtopt.lock"


def _checked_stages(path: Path, stages: Any) -> dict[str, dict[str, Any]]:
    """The ledger's ``stages`` after checking their shape: name → {key, outputs (relative path → sha256), result}.

    A ledger edited by hand or from another tool must not crash a resume nor point a stage at files outside
    the run directory; anything else is one error naming the stage and pointing at ``--force``.
    """
    def bad(what: str) -> TrtoptError:
        return TrtoptError(f"{path} is malformed: {what}", "pass --force to re-run every stage")

    if not isinstance(stages, dict):
        raise bad(f"'stages' is a {type(stages).__name__}, not a mapping of stage name to entry")
    for name, entry in stages.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise bad(f"stage {name!r} has no string 'key'")
        outputs = entry.get("outputs")
        if not isinstance(outputs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in outputs.items()):
            raise bad(f"stage {name!r} 'outputs' is not a mapping of file → sha256")
        for rel in outputs:
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise bad(f"stage {name!r} names output {rel!r} outside the run directory")
        if not isinstance(entry.get("paths", []), list):
            raise bad(f"stage {name!r} 'paths' is not a list")
    return dict(stages)


@dataclass
class Ledger:
    """The run directory's record of stages: what ran, with which key, producing which files."""

    path: Path
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @staticmethod
    def check_folder(out: Path, force: bool) -> None:
        """Refuse a non-empty folder that is not a run directory (holds no ledger), even with ``force``.

        ``force`` re-runs the stages of a run directory; it never turns a folder trtopt did not write (the
        current directory, a folder of inputs) into one.
        """
        ensure_creatable_dir(out, "run directory")
        if out.is_dir() and not (out / LEDGER).is_file() and any(p.name != LOCK for p in out.iterdir()):
            raise TrtoptError(f"{out} holds files but is not a trtopt run directory (no {LEDGER}); trtopt does not "
                              "write a run into a folder it did not create, even with --force",
                              "choose an empty or new --out")

    @classmethod
    def open(cls, out: Path, force: bool) -> Ledger:
        """Read ``out/stages.json`` (a resumable run) or start one (with ``force``, always a new one)."""
        path = out / LEDGER
        if path.is_file() and not force:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise TrtoptError(f"{path} is corrupted", "pass --force to re-run every stage") from None
            if not isinstance(data, dict) or data.get("format") != LEDGER_FORMAT:
                found = data.get("format") if isinstance(data, dict) else type(data).__name__
                raise TrtoptError(f"{path} has format {found!r}, this trtopt writes {LEDGER_FORMAT}",
                                  "pass --force to re-run every stage")
            return cls(path, _checked_stages(path, data.get("stages", {})))
        ledger = cls(path)
        ledger.save()  # from now on the folder is recognizably a run directory, even if a stage fails
        return ledger

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, {"format": LEDGER_FORMAT, "trtopt": __version__, "stages": self.stages}, force=True)

    def reusable(self, name: str, key: str) -> dict[str, Any] | None:
        """The recorded entry of ``name`` if its key matches and all its outputs are intact, else None."""
        entry = self.stages.get(name)
        if not entry or entry.get("key") != key:
            return None
        for rel, digest in entry["outputs"].items():
            file = self.path.parent / rel
            if not file.is_file() or sha256_file(file) != digest:
                return None
        return entry

    def record(self, name: str, key: str, outputs: list[Path], result: Any, seconds: float) -> dict[str, Any]:
        """Record a finished stage (output hashes included) and save the ledger atomically.

        ``outputs`` and every path string in ``result`` inside the run directory (given absolute, as
        `_Run` makes them) are stored relative to it; ``paths`` lists where they are in ``result``.
        """
        root = self.path.parent
        paths: list[list[Any]] = []
        entry = {"key": key, "outputs": {p.relative_to(root).as_posix(): sha256_file(p) for p in outputs},
                 "result": _relative_paths(result, str(root), [], paths), "paths": paths, "seconds": round(seconds, 3)}
        self.stages[name] = entry
        self.save()
        return entry

    def resolved(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of a recorded entry whose ``result`` paths are absolute again, inside this run directory."""
        resolved = json.loads(json.dumps(entry))
        for where in entry.get("paths", []):
            parent = resolved["result"]
            for step in where[:-1]:
                parent = parent[step]
            parent[where[-1]] = str(self.path.parent / parent[where[-1]])
        return resolved


def _relative_paths(value: Any, root: str, where: list[Any], found: list[list[Any]]) -> Any:
    """``value`` with every string naming ``root`` or a path under it made relative to ``root`` (``.`` for
    ``root`` itself); the location of each goes into ``found`` (a list of keys and indexes)."""
    if isinstance(value, Mapping):
        return {k: _relative_paths(v, root, [*where, k], found) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_relative_paths(v, root, [*where, i], found) for i, v in enumerate(value)]
    if isinstance(value, str) and (value == root or value.startswith(root + os.sep)):
        found.append(where)
        return Path(value).relative_to(root).as_posix()
    return value


def content_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder: its files' relative names (sorted) and contents, recursively."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive OS lock (``fcntl.flock``) on ``out/.trtopt.lock`` for the block.

    The kernel releases it when the process ends, however it ends, so no lock outlives its run.

    Raises:
        TrtoptError: another process holds it (naming that process's id when it wrote one).
    """
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip()
            raise TrtoptError(f"{out} is in use by another trtopt optimize{f' (pid {holder})' if holder else ''}",
                              "wait for it to finish, or give another --out") from None
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)


def stage_key(name: str, material: Mapping[str, Any]) -> str:
    """sha256 of a stage's name, trtopt version and everything its output depends on (JSON, sorted)."""
    blob = json.dumps({"stage": name, "trtopt": __version__, **material}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class _Run:
    """State of one `optimize` call: the recipe, the ledger, the model loaded on first need."""

    def __init__(self, recipe: Recipe, out: Path, force: bool, step: StepCallback, progress: ProgressCallback | None):
        # absolute: the paths stages record start with it, which is how the ledger finds them (`Ledger.record`)
        self.recipe, self.out, self.force, self.step, self.progress = recipe, out.absolute(), force, step, progress
        self.ledger = Ledger.open(self.out, force)
        self.status: dict[str, str] = {}
        self._loaded: Any = None
        self._feeds: dict[str | None, Any] = {}
        self._models: dict[str, Any] = {}
        self._digests: dict[str, str] = {}

    @property
    def loaded(self) -> Any:
        if self._loaded is None:
            from trtopt.models.load import load_model

            self.step(f"loading {self.recipe.model}")
            self._loaded = load_model(self.recipe.model, checkpoint=self.recipe.checkpoint,
                                      inputs=self.recipe.input_declarations(),
                                      trust_code=self.recipe.trust_code)
        return self._loaded

    def feed(self, source: str | None) -> Any:
        if source not in self._feeds:
            from trtopt.data import load_feed

            self._feeds[source] = load_feed(source, self.loaded.inputs, preprocess=self.loaded.preprocess)
        return self._feeds[source]

    def compressed(self, entry: Mapping[str, Any]) -> Any:
        """The compressed model a PyTorch-side stage saved (a trtopt model file), loaded once over the
        run's own model: the file's architecture is the recipe's, so nothing the file names is run."""
        path = entry["result"]["module"]
        if path not in self._models:
            from trtopt.models.module_file import load_module_file

            self._models[path] = load_module_file(path, self.loaded)
        return self._models[path]

    def source_key(self, source: str | None) -> Any:
        """What identifies a model, checkpoint or data source in stage keys: the sha256 of its contents when
        it is a file or folder (`content_sha256`, once per run), else its name (``dataset:digits:test``)."""
        if source is None or not Path(source).exists():
            return source
        if source not in self._digests:
            self._digests[source] = content_sha256(Path(source))
        return {"sha256": self._digests[source]}

    def model_key(self) -> dict[str, Any]:
        """What identifies the original model in stage keys."""
        r = self.recipe
        return {"model": self.source_key(r.model), "checkpoint": self.source_key(r.checkpoint),
                "input_shapes": to_dict(r.input_shapes), **({"inputs": to_dict(r.inputs)} if r.inputs else {})}

    def stage(self, name: str, material: Mapping[str, Any], run: Callable[[], tuple[list[Path], Any]]) -> dict[str, Any]:
        """Run stage ``name`` unless the ledger holds a matching, intact result; returns the ledger entry."""
        key = stage_key(name, material)
        entry = None if self.force else self.ledger.reusable(name, key)
        if entry is not None:
            self.status[name] = "reused"
            self.step(f"{name}: unchanged, reusing {', '.join(entry['outputs']) or 'its result'}")
            return self.ledger.resolved(entry)
        started = time.perf_counter()
        outputs, result = run()
        self.status[name] = "ran"
        return self.ledger.resolved(self.ledger.record(name, key, outputs, result, time.perf_counter() - started))

    def file_digest(self, path: str | os.PathLike) -> str:
        """sha256 of a stage's output file as the ledger recorded it (hashed once, when written)."""
        target, root = Path(path).resolve(), self.out.resolve()
        for entry in self.ledger.stages.values():
            for rel, digest in entry["outputs"].items():
                if root / rel == target:
                    return digest
        return sha256_file(target)

    def digest(self, entry: Mapping[str, Any]) -> dict[str, str]:
        return dict(entry["outputs"])


def optimize(recipe: Recipe | str | os.PathLike, out_dir: str | os.PathLike | None = None, force: bool = False,
             on_step: StepCallback | None = None,
             on_progress: ProgressCallback | None = None) -> tuple[dict[str, Any], dict[str, Path]]:
    """Run ``recipe``'s stages into ``out_dir`` and write the report; returns (report, written paths).

    Args:
        recipe: a `Recipe`, or the path of a YAML recipe.
        out_dir: the run directory; default ``runs/<model name>``.
        force: re-run every stage, and accept a non-empty folder that is not a run directory.
        on_step / on_progress: progress callbacks (a message; ``(label, done, total)``).

    Stages run in the order of `trtopt.config.STAGES`, each only if listed in ``recipe.stages``. See the
    module docstring for the run directory's layout and how unchanged stages are reused.

    Raises:
        TrtoptError: a foreign non-empty ``out_dir`` without ``force``, another process running in ``out_dir``,
            or any stage's user error.
    """
    if not isinstance(recipe, Recipe):
        from trtopt.config import load_recipe

        recipe = load_recipe(recipe)
    out = Path(out_dir) if out_dir is not None else Path("runs") / recipe.model.rsplit(":", 1)[-1].rsplit("/", 1)[-1]
    Ledger.check_folder(out, force)  # before the lock file makes the folder non-empty
    created = [d for d in (out, *out.parents) if not d.exists()]  # the folders run_lock will make
    try:
        with run_lock(out):
            return _optimize(recipe, out, force, on_step, on_progress)
    except BaseException:
        if created:
            _remove_unused_run_dir(out, created[-1])
        raise


def _remove_unused_run_dir(out: Path, top: Path) -> None:
    """Remove the run directory this run created (and its new parents up to ``top``) when it failed before any
    stage finished: it then holds only the lock file and an empty ledger, nothing to resume from, and would be
    left behind as a half-made run."""
    ledger = out / LEDGER
    with suppress(OSError, ValueError, AttributeError):  # anything unexpected: leave the folder as it is
        if ({p.name for p in out.iterdir()} <= {LOCK, LEDGER}
                and (not ledger.is_file() or not json.loads(ledger.read_text(encoding="utf-8")).get("stages"))):
            ledger.unlink(missing_ok=True)
            (out / LOCK).unlink(missing_ok=True)
            for folder in (out, *out.parents):
                folder.rmdir()  # only ever an empty folder this run made
                if folder == top:
                    break


def _optimize(recipe: Recipe, out: Path, force: bool, on_step: StepCallback | None,
              on_progress: ProgressCallback | None) -> tuple[dict[str, Any], dict[str, Path]]:
    run = _Run(recipe, out, force, on_step or (lambda _m: None), on_progress)
    stages = set(recipe.stages)
    compressed = None
    for name, apply in (("prune", _apply_prune), ("factorize", _apply_factorize), ("distill", None),
                        ("cluster", _apply_cluster)):
        if name in stages:
            compressed = _distill(run, compressed) if apply is None else _torch_stage(run, name, compressed, apply)
        if name == "distill" and "qat" in stages:  # after prune/factorize/distill; cluster is refused beside it
            _qat(run, compressed)
    onnx = _export(run, compressed) if "export" in stages else None
    int8: dict[str, Any] = {}
    if "calibrate" in stages:
        int8["calibration"] = _calibrate(run, onnx)
    if "quantize" in stages:
        int8["quantize"] = _quantize(run, onnx, int8["calibration"])
    deploy = _deployables(onnx, int8.get("quantize")) if onnx else []
    qat_trt = next((p for n, p in _qat_variants(run).items() if n.endswith("-int8-tensorrt-qdq")), None)
    deploy = ([("int8-qdq-qat", qat_trt)] if qat_trt else []) + deploy
    engines = _build(run, deploy) if "build" in stages else None
    bundle = _bundle(run, deploy, int8.get("calibration")) if "bundle" in stages else None
    timing = _profile(run, onnx, int8.get("quantize"), compressed) if "profile" in stages else None
    accuracy = _compare(run, onnx, int8, compressed) if "compare" in stages else None
    from trtopt.report.write import write_report

    report = _report(run, onnx, int8, timing, accuracy)
    report["tensorrt"] = {"build": engines["result"] if engines else None, "bundle": bundle["result"] if bundle else None}
    report["compression"] = _compression_summary(run)
    # A partial rerun (fewer stages than the report already there) must not replace the fuller report:
    # it is written alongside, into partial/, and names the full one.
    where = out
    if _reported_stages(out) - stages:
        where = out / "partial"
        report["partial_of"] = "../report.html"
    paths = write_report(report, where, force=True, html=True)
    paths["recipe"] = write_text(where / "recipe.yaml", dump_recipe(recipe), force=True)
    return report, paths


def _reported_stages(out: Path) -> set[str]:
    """The stages the run directory's existing ``report.json`` covers (empty without one, or unreadable)."""
    try:
        return set(json.loads((out / "report.json").read_text(encoding="utf-8")).get("stages") or {})
    except (OSError, ValueError, AttributeError):  # no report yet, or one trtopt cannot read: nothing to keep
        return set()


def _report(run: _Run, onnx: Mapping[str, Any] | None, int8: Mapping[str, Any], timing: Mapping[str, Any] | None,
            accuracy: Mapping[str, Any] | None) -> dict[str, Any]:
    """The run's report (see `trtopt.report.model`) from the stages' recorded results and measurement files."""
    from trtopt.report.model import build_report

    r = run.recipe
    bench_result = (json.loads((run.out / "timing.json").read_text(encoding="utf-8")) if timing
                    else {"baseline": "pytorch-fp32", "candidates": [], "per_batch": []})
    acc = json.loads((run.out / "accuracy.json").read_text(encoding="utf-8")) if accuracy else {}
    timed = {c["name"] for c in bench_result["candidates"]}
    quantized = (int8.get("quantize") or {}).get("result", {})
    untimed = [u for u in _untimed_variants(run, onnx, quantized, acc) if u["name"] not in timed]
    extra: dict[str, Any] = {
        "data": {"source": r.data or "random", "calibration_source": r.calibration_data or r.data or "random"},
        "stages": {name: {"status": run.status.get(name, "not run"), "seconds": entry["seconds"]}
                   for name, entry in run.ledger.stages.items() if name in r.stages},
        "untimed": untimed,
    }
    if bench_result["candidates"]:
        base = bench_result["candidates"][0]
        extra["model"] = {"spec": r.model, "parameters": base["parameters"], "parameter_bytes": base["size_bytes"]}
    if onnx:
        extra["onnx"] = onnx["result"]
    if "task" in acc:
        extra["task_accuracy"] = acc["task"]
    for key in ("predictions", "sensitivity"):
        if key in acc:
            extra[key] = acc[key]
    if "calibration" in int8 and quantized:
        cal = int8["calibration"]["result"]
        extra["int8"] = {"ranges": cal["ranges"], "calibration": to_dict(r.calibration), "calibration_samples": cal["samples"],
                         "range_choice": cal.get("choice", {}),
                         "tensorrt_cache": cal["cache"], "trt_cache_version": r.trt_cache_version,
                         **{("tensorrt_qdq" if t == "tensorrt" else t): a for t, a in quantized.items()},
                         "weight_error": acc.get("quant_error", {}).get("weights", []),
                         "activation_sqnr": acc.get("quant_error", {}).get("activations", [])}
    return build_report(f"trtopt optimize: {r.model}", bench_result, acc.get("variants"), to_dict(r), extra)


def _untimed_variants(run: _Run, onnx: Mapping[str, Any] | None, quantized: Mapping[str, Any],
                      acc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every variant the report can show without timing (name, backend, precision, size, why untimed): the
    TensorRT layouts always, and without a profile stage the original and every variant judged for accuracy,
    so a run that only builds a bundle still gets a table of sizes and accuracies."""
    trt_note = "a TensorRT layout: judged for accuracy on the CPU, timed only on TensorRT"
    found = [{"name": name, "backend": "onnxruntime", "precision": quantized[t]["precision"],
              "size_bytes": quantized[t]["size_bytes"], "note": trt_note}
             for name, t in (("tensorrt-int8-qdq", "tensorrt"), ("fp16-casts", "fp16")) if t in quantized]
    judged = set(acc.get("variants") or {})
    if "profile" in run.recipe.stages or not judged:
        return found
    from trtopt.models.spec import parameter_bytes, parameter_count

    note = "no profile stage in this run"
    module = run.loaded.module
    variants = [{"name": "pytorch-fp32", "backend": "torch", "precision": "fp32", "size_bytes": parameter_bytes(module),
                 "parameters": parameter_count(module), "note": note}]
    onnx_sizes = {"onnxruntime-fp32": (onnx or {}).get("result", {}),
                  "onnxruntime-fp32-compressed": (onnx or {}).get("result", {}).get("compressed") or {},
                  "onnxruntime-int8": quantized.get("onnxruntime") or {}}
    variants += [{"name": n, "backend": "onnxruntime", "precision": art.get("precision", "fp32"),
                  "size_bytes": art.get("size_bytes"), "note": note} for n, art in onnx_sizes.items() if n in judged]
    if "pytorch-compressed" in judged:  # its size is in the PyTorch-side stage's file, not measured here
        variants.insert(1, {"name": "pytorch-compressed", "backend": "torch", "precision": "fp32", "size_bytes": None,
                            "note": note})
    return variants + [v for v in found if v["name"] in judged or v["name"] not in {x["name"] for x in variants}]


def _export(run: _Run, compressed: Mapping[str, Any] | None) -> dict[str, Any]:
    """The original model's FP32 ONNX, and the compressed model's when a PyTorch-side stage ran.

    Downstream stages (calibrate, quantize, build, bundle) work on the compressed ONNX when there is one:
    it is what gets deployed; the original's ONNX stays as the FP32 reference variant.
    """
    from trtopt.export import export_onnx

    r = run.recipe
    material = {**run.model_key(), "export": to_dict(r.export), "data": run.source_key(r.data),
                "compressed": run.digest(compressed) if compressed else None}

    def go() -> tuple[list[Path], Any]:
        with running(run.progress, "exporting model.onnx"):
            art = export_onnx(run.loaded, run.out / "model.onnx", r.export, feed=run.feed(r.data), force=True,
                              on_step=run.step)
        result = {**art.to_dict(), "compressed": None}
        files = [art.path, *art.data_files]
        if compressed:
            with running(run.progress, "exporting model.compressed.onnx"):
                small = export_onnx(run.compressed(compressed), run.out / "model.compressed.onnx", r.export,
                                    feed=run.feed(r.data), force=True, on_step=run.step)
            result["compressed"] = small.to_dict()
            files += [small.path, *small.data_files]
        return files, result

    return run.stage("export", material, go)


def _deployed(onnx: Mapping[str, Any]) -> str:
    """Path of the ONNX that downstream stages take: the compressed model's if any, else the original's."""
    return (onnx["result"].get("compressed") or onnx["result"])["path"]


def _compression_summary(run: _Run) -> dict[str, Any]:
    """The headline numbers of each PyTorch-side stage that ran (details stay in stages.json)."""
    keys = {"prune": ("parameters_before", "parameters_after", "pruning_rate_percent", "channel_ratio", "macs_reduction"),
            "factorize": ("parameters_before", "parameters_after", "factorized_layers", "skipped_layers"),
            "distill": ("epochs_completed", "steps", "best_metric", "stopped_early", "seconds"),
            "qat": ("mode", "quantizers", "calibration_samples"),
            "cluster": ("clustered_layers", "clustered_parameters", "compression_ratio", "fidelity_metric",
                        "fidelity_value", "fidelity_samples")}
    summary = {}
    for name, wanted in keys.items():
        entry = run.ledger.stages.get(name)
        if entry and name in run.recipe.stages:
            result = entry["result"]
            summary[name] = {k: result[k] for k in wanted if k in result}
            if name == "cluster" and result.get("bit_choice"):  # mixed bits: the chosen bits per layer
                summary[name]["layer_bits"] = result["bit_choice"]["layer_bits"]
                if set(result["bit_choice"]["layer_granularity"].values()) != {result["config"]["granularity"]}:
                    summary[name]["layer_granularity"] = result["bit_choice"]["layer_granularity"]
            if name == "cluster":
                summary[name]["storage"] = {k: result["storage"][k] for k in ("path", "file_bytes", "state_bytes_fp32",
                                                                             "compression_ratio")}
    return summary


def _torch_stage(run: _Run, name: str, previous: Mapping[str, Any] | None,
                 apply: Callable[[_Run, Any, Any], tuple[Any, dict[str, Any], list[Path]]]) -> dict[str, Any]:
    """A PyTorch-side stage: the model so far (the original, or the previous stage's saved module) →
    ``apply`` → ``model.<name>.pt`` (a trtopt model file, `trtopt.models.module_file`)."""
    from trtopt.models.module_file import save_module

    material = {**run.model_key(), name: to_dict(getattr(run.recipe, name)), "input": run.digest(previous) if previous else None}
    if name == "cluster":  # fidelity and fine-tuning read the recipe's data
        material.update(data=run.source_key(run.recipe.data), train_data=run.source_key(run.recipe.train_data))

    def go() -> tuple[list[Path], Any]:
        source = run.compressed(previous) if previous else run.loaded
        changed, result, extra = apply(run, source, getattr(run.recipe, name))
        path = save_module(changed, run.out / f"model.{name}.pt", force=True)
        return [path, *extra], {"module": str(path), **result}

    return run.stage(name, material, go)


def _apply_prune(run: _Run, source: Any, config: Any) -> tuple[Any, dict[str, Any], list[Path]]:
    from trtopt.compress.prune import prune_loaded

    run.step(f"pruning ({config.method}, ratio {config.ratio})")
    pruned, result = prune_loaded(source, config)  # prune() works on a copy: the source stays
    return pruned, result.to_dict(), []


def _apply_factorize(run: _Run, source: Any, config: Any) -> tuple[Any, dict[str, Any], list[Path]]:
    import copy

    from trtopt.compress.lowrank import factorize_
    from trtopt.compress.prune import example_inputs_for

    run.step(f"factorizing ({config.method})")
    module, report = factorize_(copy.deepcopy(source.module), config, example_inputs_for(source),  # in place: a copy
                                on_step=run.step)
    return replace(source, module=module, description=f"{source.description}, factorized"), report.to_dict(), []


def _apply_cluster(run: _Run, source: Any, config: Any) -> tuple[Any, dict[str, Any], list[Path]]:
    """k-means weight sharing (uniform or mixed bits, optionally tied fine-tuning from the stage's input model);
    measures fidelity on the recipe's ``data`` and writes the compact file (codebooks + packed indices).

    Fine-tuning checkpoints go to ``cluster_checkpoints/<digest of config and data>/``: an interrupted run
    resumes from them; another configuration starts afresh in its own folder.
    """
    import hashlib

    from trtopt.compress.distill import fidelity_probe
    from trtopt.compress.share import save_shared, share_weights
    from trtopt.data import labels_for

    r = run.recipe
    embeddings = "embedding" in source.output_names
    names = [spec.name for spec in source.inputs]

    def split(data_source: str) -> tuple[Any, Any]:
        feed = run.feed(data_source)
        inputs = feed[names[0]] if len(names) == 1 else {n: feed[n] for n in names}
        return inputs, labels_for(data_source)

    probe = fidelity_probe(source.module, split(r.data), embeddings) if r.data else None
    train = split(r.train_data) if config.finetune and r.train_data else None
    key = hashlib.sha256(json.dumps([to_dict(config), run.source_key(r.train_data)], sort_keys=True,
                                    default=str).encode()).hexdigest()[:12]
    run.step(f"clustering weights ({config.bits} bits, per {config.granularity})")
    outcome = share_weights(source.module, config, probe, train, embeddings,
                            str(run.out / "cluster_checkpoints" / key), resume=True, on_step=run.step,
                            progress=(lambda p: run.progress("tied fine-tuning", p.step, p.total_steps)) if run.progress else None)
    info = save_shared(outcome.model, run.out / "model.shared.npz", force=True)
    used = sorted({la.bits for la in outcome.result.layers if la.skipped is None})
    bits = f"{used[0]}-bit" if len(used) == 1 else f"mixed {used[0]}-{used[-1]}-bit"
    summary = outcome.to_dict()
    fid = outcome.final_fidelity
    if fid:
        summary.update(fidelity_metric=fid["metric"], fidelity_value=fid["value"], fidelity_samples=fid["samples"])
    return (replace(source, module=outcome.model, description=f"{source.description}, {bits} shared weights"),
            {**summary, "storage": info.to_dict()}, [Path(info.path)])


def _distill(run: _Run, student_entry: Mapping[str, Any]) -> dict[str, Any]:
    """Train the compressed model against the original on ``train_data`` (labels when it has them)."""
    from trtopt.compress.distill import distill
    from trtopt.data import labels_for
    from trtopt.models.module_file import save_module

    r = run.recipe
    material = {**run.model_key(), "student": run.digest(student_entry), "distill": to_dict(r.distill), "train_data": run.source_key(r.train_data),
                "eval": run.source_key(r.data)}

    def go() -> tuple[list[Path], Any]:
        import copy

        config = r.distill
        student = run.compressed(student_entry)
        names = [spec.name for spec in run.loaded.inputs]

        def inputs(feed: Mapping[str, Any]) -> Any:
            return feed[names[0]] if len(names) == 1 else {n: feed[n] for n in names}

        train = (inputs(run.feed(r.train_data)), labels_for(r.train_data))
        evaluation = (inputs(run.feed(r.data)), labels_for(r.data))
        run.step(f"distilling on {r.train_data} ({config.epochs} epoch(s), alpha {config.alpha}, T {config.temperature})")
        progress = ((lambda p: run.progress("distillation", p.step, p.total_steps)) if run.progress else None)
        result = distill(copy.deepcopy(student.module), run.loaded.module, train, config, eval_data=evaluation,
                         progress=progress)
        path = save_module(replace(student, module=result.student, description=f"{student.description}, distilled"),
                           run.out / "model.distill.pt", force=True)
        summary = result.to_dict()
        summary.pop("step_losses", None)  # per-step detail stays in the checkpoint, not the ledger
        return [path], {"module": str(path), **summary}

    return run.stage("distill", material, go)


def _qat(run: _Run, previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """Quantization-aware training of the model so far on ``train_data`` (`trtopt.compress.qat`), exported as
    ``model.qat.<target>.onnx`` for each of ``int8_targets`` (`trtopt.quant.qat_export`)."""
    from trtopt.compress.qat import qat
    from trtopt.data import labels_for
    from trtopt.quant.qat_export import export_qat

    r = run.recipe
    material = {**run.model_key(), "qat": to_dict(r.qat), "input": run.digest(previous) if previous else None,
                "train_data": run.source_key(r.train_data), "eval": run.source_key(r.data),
                "targets": list(r.int8_targets), "calibration": to_dict(r.calibration)}

    def go() -> tuple[list[Path], Any]:
        import copy

        source = run.compressed(previous) if previous else run.loaded
        names = [spec.name for spec in source.inputs]
        train_feed = run.feed(r.train_data)

        def inputs(feed: Mapping[str, Any]) -> Any:
            return feed[names[0]] if len(names) == 1 else {n: feed[n] for n in names}

        labels = labels_for(r.train_data) if r.qat.mode == "qat" else None
        run.step(f"quantization-aware training ({r.qat.mode}) on {r.train_data}")
        progress = ((lambda p: run.progress("quantization-aware training", p.step, p.total_steps)) if run.progress else None)
        result = qat(copy.deepcopy(source.module), (inputs(train_feed), labels), r.qat,
                     eval_data=(inputs(run.feed(r.data)), labels_for(r.data)), progress=progress)
        feed = {n: train_feed[n][:r.qat.calibration_samples] for n in names}
        paths = {t: run.out / f"model.qat.{t}.onnx" for t in r.int8_targets}
        artifacts = export_qat(replace(source, module=result.model), paths, feed, r.calibration, force=True,
                               on_step=run.step)
        summary = result.to_dict()
        summary["training"].pop("step_losses", None)
        return list(paths.values()), {**summary, "outputs": {t: a.to_dict() for t, a in artifacts.items()}}

    return run.stage("qat", material, go)


def _qat_variants(run: _Run) -> dict[str, str]:
    """Variant name → path of the qat stage's INT8 models (none when the stage did not run), named by the
    mode: ``qat-int8-onnxruntime`` / ``qat-int8-tensorrt-qdq``, or ``qad-…`` for distillation without labels."""
    entry = run.ledger.stages.get("qat") if "qat" in run.recipe.stages else None
    outputs = run.ledger.resolved(entry)["result"]["outputs"] if entry else {}
    names = {"onnxruntime": "int8-onnxruntime", "tensorrt": "int8-tensorrt-qdq"}
    return {f"{run.recipe.qat.mode}-{names[t]}": art["path"] for t, art in outputs.items()}


def _calibrate(run: _Run, onnx: Mapping[str, Any]) -> dict[str, Any]:
    from trtopt.quant.calibrate import calibrate
    from trtopt.quant.quantize import TARGETS
    from trtopt.trt.calibration_cache import ranges_to_cache, write_cache

    r = run.recipe
    source = r.calibration_data or r.data
    # the recipe's Q/DQ layout (op types, exclusions) on both targets: quantize and sensitivity find every range
    layouts = tuple(replace(r.quantize, target=target) for target in TARGETS)
    material = {"onnx": run.digest(onnx), "calibration": to_dict(r.calibration), "source": run.source_key(source),
                "trt_cache_version": r.trt_cache_version, "layouts": [layout.placement() for layout in layouts]}

    def go() -> tuple[list[Path], Any]:
        feed = run.feed(source)
        count = len(next(iter(feed.values())))
        run.step(f"calibrating INT8 ranges ({r.calibration.method}) on {count} samples of {source or 'random'}")
        ranges = calibrate(_deployed(onnx), feed, r.calibration, on_progress=run.progress, layouts=layouts)
        trt_cache = ranges_to_cache(ranges, trt_version=r.trt_cache_version)  # refusals come before any write
        ranges_path = ranges.save(run.out / "ranges.json", force=True)
        cache = write_cache(trt_cache, run.out / "calibration.cache", force=True)
        return [ranges_path, cache], {"ranges": str(ranges_path), "cache": str(cache), "samples": count,
                                      "source": source, "tensors": len(ranges.tensors), "choice": ranges.choice}

    return run.stage("calibrate", material, go)


def _quantize(run: _Run, onnx: Mapping[str, Any], calibration: Mapping[str, Any]) -> dict[str, Any]:
    from trtopt.artifacts import Ranges
    from trtopt.quant.quantize import quantize, to_fp16

    r = run.recipe
    material = {"onnx": run.digest(onnx), "ranges": run.digest(calibration), "quantize": to_dict(r.quantize),
                "targets": list(r.int8_targets), "fp16": r.fp16,
                "fp16_converter": r.fp16_converter}

    def go() -> tuple[list[Path], Any]:
        ranges = Ranges.load(calibration["result"]["ranges"])
        written: dict[str, Any] = {}
        for target in r.int8_targets:
            run.step(f"quantizing for {target}")
            # quantizer modelopt places Q/DQ for TensorRT; the onnxruntime layout is always trtopt's
            quantizer = r.quantize.quantizer if target == "tensorrt" else "trtopt"
            artifact = quantize(_deployed(onnx), ranges, run.out / f"model.int8.{target}.onnx",
                                replace(r.quantize, target=target, quantizer=quantizer), force=True)
            for note in artifact.notes[3:]:  # the defaults it chose: op set, weight bits, recovery steps
                run.step(f"  {note}")
            written[target] = artifact.to_dict()
        if r.fp16:
            run.step("converting to FP16 by casts")
            written["fp16"] = to_fp16(_deployed(onnx), run.out / "model.fp16.onnx", force=True,
                                      converter=r.fp16_converter).to_dict()
        return [Path(a["path"]) for a in written.values()], written

    return run.stage("quantize", material, go)


def _deployables(onnx: Mapping[str, Any], quantized: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """(name, path) of the models a TensorRT target takes: the TensorRT-layout INT8 Q/DQ, FP16 casts, FP32."""
    result = (quantized or {}).get("result", {})
    models = [("int8-qdq", result["tensorrt"]["path"])] if "tensorrt" in result else []
    models += [("fp16-casts", result["fp16"]["path"])] if "fp16" in result else []
    return models + [("fp32", _deployed(onnx))]


def _profiles(run: _Run, onnx_path: str) -> tuple[Any, ...]:
    """Optimization profiles for TensorRT: every input from batch 1 to max(batch_sizes), OPT at the max."""
    from trtopt.artifacts import inspect_onnx
    from trtopt.measure.bench import onnx_input_specs
    from trtopt.trt.plan import ShapeProfile

    top = max(run.recipe.batch_sizes)
    specs = onnx_input_specs(inspect_onnx(onnx_path), run.recipe.input_declarations())
    for s in specs:
        if not all(isinstance(d, int) for d in s.shape):
            raise TrtoptError(f"input {s.name!r} of {Path(onnx_path).name} has dynamic axes {s.dims}, so the build "
                              "profile has no lengths for them",
                              f"declare its shape in the recipe: inputs: {{{s.name}: {{shape: [1, ...]}}}}", key="inputs")
    return tuple(ShapeProfile(s.name, (1, *s.shape), (top, *s.shape), (top, *s.shape)) for s in specs)


def _build_options(run: _Run, onnx_path: str) -> Any:
    from trtopt.trt.plan import BuildOptions

    workspace = run.recipe.workspace_mib * (1 << 20) if run.recipe.workspace_mib else None
    return BuildOptions(shapes=_profiles(run, onnx_path), workspace_bytes=workspace)


def _build(run: _Run, deploy: list[tuple[str, str]]) -> dict[str, Any]:
    """TensorRT engines for the installed TensorRT, where there is one and a GPU; else the reason, recorded.

    The plans for other TensorRT versions (Jetson's 10.3, servers' 11.x) are the bundle stage's job.
    """
    from trtopt.backends import get_backend

    available, detail = get_backend("tensorrt").availability()
    material = {"models": {n: run.file_digest(p) for n, p in deploy}, "tensorrt": detail if available else None,
                "batch_sizes": list(run.recipe.batch_sizes), "workspace_mib": run.recipe.workspace_mib}

    def go() -> tuple[list[Path], Any]:
        if not available:
            run.step(f"build: skipped, {detail}")
            return [], {"built": False, "reason": detail}
        from trtopt.trt.build import build_engine
        from trtopt.trt.plan import make_plan

        engines, files = {}, []
        for name, path in deploy:
            run.step(f"building the TensorRT {detail} engine for {name}")
            plan = make_plan(path, _build_options(run, path), detail)
            built = build_engine(plan, run.out / "engines" / f"model.{name}.engine", force=True)
            engines[name] = built.to_dict()
            files += [built.path] + ([built.layer_info_path] if built.layer_info_path else [])
        return files, {"built": True, "tensorrt": detail, "engines": engines}

    return run.stage("build", material, go)


def _bundle(run: _Run, deploy: list[tuple[str, str]], calibration: Mapping[str, Any] | None) -> dict[str, Any]:
    """A folder to build engines on the device: models, ranges, 10.x cache, plans for 10.x and 11.x, scripts."""
    from trtopt.trt.bundle import make_bundle

    r = run.recipe
    ranges = calibration["result"]["ranges"] if calibration else None
    material = {"models": {n: run.file_digest(p) for n, p in deploy}, "ranges": run.digest(calibration) if calibration else None,
                "target": r.bundle_target, "batch_sizes": list(r.batch_sizes), "workspace_mib": r.workspace_mib}

    def go() -> tuple[list[Path], Any]:
        run.step(f"writing the {r.bundle_target} bundle (plans for TensorRT 10.x and 11.x)")
        manifest = make_bundle([p for _, p in deploy], run.out / "bundle", target=r.bundle_target, ranges=ranges,
                               options=_build_options(run, deploy[-1][1]), force=True)
        files = sorted(p for p in (run.out / "bundle").rglob("*") if p.is_file())
        plans = [{k: e.get(k) for k in ("model", "trt_version", "precision", "int8_source", "plan", "reason")}
                 for e in manifest["plans"]]
        return files, {"path": str(run.out / "bundle"), "target": r.bundle_target, "files": len(files),
                       "size_bytes": sum(f.stat().st_size for f in files), "plans": plans}

    return run.stage("bundle", material, go)


def _variants(run: _Run, onnx: Mapping[str, Any] | None, quantized: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """(name, onnx path) of every ONNX variant, in report order."""
    variants = [("onnxruntime-fp32", onnx["result"]["path"])] if onnx else []
    if onnx and onnx["result"].get("compressed"):
        variants.append(("onnxruntime-fp32-compressed", onnx["result"]["compressed"]["path"]))
    for target, art in (quantized or {}).get("result", {}).items():
        name = {"onnxruntime": "onnxruntime-int8", "tensorrt": "tensorrt-int8-qdq", "fp16": "fp16-casts"}[target]
        variants.append((name, art["path"]))
    return variants + list(_qat_variants(run).items())


def _profile(run: _Run, onnx: Mapping[str, Any], quantized: Mapping[str, Any] | None,
             compressed: Mapping[str, Any] | None) -> dict[str, Any]:
    from trtopt.measure.bench import bench, onnx_candidate, torch_candidate

    r = run.recipe
    ort = replace(r.ort, intra_op_threads=r.ort.intra_op_threads or r.threads)
    # Timed: what runs fast on this backend. The TensorRT-target Q/DQ and FP16-cast models are layouts for
    # TensorRT; on the CPU they run as reference semantics, so they are judged for accuracy only.
    timed = [(n, p) for n, p in _variants(run, onnx, quantized)
             if n in ("onnxruntime-fp32", "onnxruntime-fp32-compressed", "onnxruntime-int8", "qat-int8-onnxruntime",
                       "qad-int8-onnxruntime")]
    material = {**run.model_key(), "variants": {n: run.file_digest(p) for n, p in timed}, "timing": to_dict(r.timing),
                "batch_sizes": list(r.batch_sizes), "threads": r.threads, "ort": to_dict(ort), "data": run.source_key(r.data),
                "compressed": run.digest(compressed) if compressed else None}

    def go() -> tuple[list[Path], Any]:
        with ExitStack() as opened:  # every runner opened is closed, also when a later one fails to open
            candidates = [opened.enter_context(torch_candidate(run.loaded, threads=r.threads))]
            if compressed:
                candidates.append(opened.enter_context(
                    torch_candidate(run.compressed(compressed), "pytorch-compressed", threads=r.threads)))
            candidates += [opened.enter_context(onnx_candidate(p, n, ort)) for n, p in timed]
            run.step(f"timing {', '.join(c.name for c in candidates)} interleaved at batch "
                     f"{', '.join(map(str, r.batch_sizes))}")
            also = ("onnxruntime-fp32",) if len(candidates) > 2 else ()
            result = bench(candidates, run.feed(r.data), r.batch_sizes, r.timing, on_progress=run.progress,
                           also_versus=also)
        return [write_json(run.out / "timing.json", result, force=True)], None

    return run.stage("profile", material, go)


def _compare(run: _Run, onnx: Mapping[str, Any], int8: Mapping[str, Any], compressed: Mapping[str, Any] | None) -> dict[str, Any]:
    r = run.recipe
    variants = _variants(run, onnx, int8.get("quantize"))
    material = {**run.model_key(), "variants": {n: run.file_digest(p) for n, p in variants}, "compare": to_dict(r.compare),
                "data": run.source_key(r.data), "threads": r.threads, "sensitivity": r.sensitivity, "metric": r.metric,
                "ranges": run.digest(int8["calibration"]) if "calibration" in int8 else None,
                "compressed": run.digest(compressed) if compressed else None}

    def go() -> tuple[list[Path], Any]:
        result = _measure_accuracy(run, variants, int8, run.compressed(compressed) if compressed else None)
        return [write_json(run.out / "accuracy.json", result, force=True)], None

    return run.stage("compare", material, go)


def _measure_accuracy(run: _Run, variants: list[tuple[str, str]], int8: Mapping[str, Any],
                      compressed: Any) -> dict[str, Any]:
    """Every variant's outputs vs the FP32 PyTorch original's on the evaluation data, task accuracy when
    the data is labelled, quantization error per layer, and (optionally) per-layer INT8 sensitivity."""
    from trtopt.data import labels_for
    from trtopt.measure.bench import onnx_candidate, run_all, torch_candidate
    from trtopt.measure.compare import compare_outputs
    from trtopt.metrics import topk_accuracy

    r = run.recipe
    feed = run.feed(r.data)
    run.step(f"comparing outputs on all {len(next(iter(feed.values())))} inputs")
    with torch_candidate(run.loaded, threads=r.threads) as reference_candidate:
        reference = run_all(reference_candidate, feed)
    outputs = {}
    if compressed is not None:
        with torch_candidate(compressed, "pytorch-compressed", threads=r.threads) as candidate:
            outputs["pytorch-compressed"] = run_all(candidate, feed)
    for name, path in variants:
        with onnx_candidate(path, name, threads=r.threads) as candidate:
            outputs[name] = run_all(candidate, feed)
    first = run.loaded.output_names[0]
    result: dict[str, Any] = {"reference": reference_candidate.name,
                              "variants": {n: compare_outputs(reference, o, r.compare) for n, o in outputs.items()}}
    labels = labels_for(r.data)
    if labels is not None:
        result["task"] = {"metric": "top1_accuracy", "labels": r.data,
                          "values": {n: topk_accuracy(o[first], labels) for n, o in
                                     {reference_candidate.name: reference, **outputs}.items()}}
    paths = dict(variants)
    if "onnxruntime-int8" in paths:
        from trtopt.quant.error import activation_sqnr, weight_errors

        run.step("measuring quantization error per layer")
        fp32 = paths.get("onnxruntime-fp32-compressed", paths["onnxruntime-fp32"])  # what was quantized
        result["quant_error"] = {"weights": weight_errors(fp32, paths["onnxruntime-int8"]),
                                 "activations": activation_sqnr(fp32, paths["onnxruntime-int8"], feed)}
        import onnx

        from trtopt.quant.names import node_modules

        modules = node_modules(onnx.load(fp32, load_external_data=False))  # plots name layers as PyTorch does
        for record in result["quant_error"]["activations"]:
            record["module"] = modules.get(record["node"])
        if r.sensitivity:
            result["sensitivity"] = _sensitivity(run, fp32, int8, labels, reference[first])
    if r.data == "skimage:photos" and reference[first].shape[-1] == 1000:
        result["predictions"] = _imagenet_predictions(reference, outputs, first)
    return result


def _sensitivity(run: _Run, fp32_path: str, int8: Mapping[str, Any], labels: Any, reference: Any) -> dict[str, Any]:
    """Per quantizable layer: the score with only that layer kept in FP32 (ONNX Runtime target)."""
    from trtopt.artifacts import Ranges
    from trtopt.quant.sensitivity import layer_sensitivity, make_scorer

    r = run.recipe
    feed = run.feed(r.data)
    metric = r.metric if r.metric != "auto" else ("accuracy" if labels is not None else "agreement")
    score = make_scorer(metric, feed, reference, labels, r.threads)
    run.step("measuring per-layer INT8 sensitivity (one quantization per layer)")
    ranges = Ranges.load(int8["calibration"]["result"]["ranges"])
    return layer_sensitivity(fp32_path, ranges, replace(r.quantize, target="onnxruntime"), score, run.step)


def _imagenet_predictions(reference: Mapping[str, Any], outputs: Mapping[str, Mapping[str, Any]], key: str) -> list[dict]:
    """Top-1 ImageNet class per photo for each variant (class names from torchvision's metadata, offline)."""
    from torchvision.models import ResNet18_Weights

    from trtopt.data import SKIMAGE_PHOTOS

    categories = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    rows = []
    for i, name in enumerate(SKIMAGE_PHOTOS):
        row = {"image": name, "pytorch-fp32": categories[int(reference[key][i].argmax())]}
        row.update({variant: categories[int(out[key][i].argmax())] for variant, out in outputs.items()})
        rows.append(row)
    return rows
