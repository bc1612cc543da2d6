"""Deployment bundles: everything a Jetson (or any GPU machine) needs to build the engines itself.

Engines are bound to the GPU and TensorRT version that built them, so trtopt ships what builds them:

    bundle/
      models/<name>.onnx (+ .onnx.data)    the models (FP32, FP16-cast and/or Q/DQ INT8)
      ranges/<name>.ranges.json            calibrated activation ranges (if given)
      calib/<name>.trt10.cache             TensorRT 10.x calibration cache (header for the target's 10.x)
      plans/<name>.trt10.json              build plan for TensorRT 10.x (10.3 on Jetson, 10.16 on servers)
      plans/<name>.trt11.json              build plan for TensorRT 11.1 (absent when 11.x cannot build it)
      build_trt10.sh / build_trt11.sh      the equivalent trtexec commands (timing flags pinned)
      build_trtopt.sh                      trtopt build --plan ... for each plan (same engine as the plan)
      README.md, manifest.json             what is where; sha256 and size of every file

Paths inside plans and scripts are relative to the bundle root (the scripts cd there first).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from trtopt.errors import TrtoptError

BUNDLE_FORMAT = 1
TARGET_TRT10 = {"jetson-orin": "10.3", "jetson-xavier": "10.3", "server": "10.16"}
TRT11 = "11.1"
_CAL_NOTE = "11.x has no implicit INT8: put the Q/DQ ONNX (trtopt quantize --target tensorrt) in the bundle"


def make_bundle(onnx_paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, target: str = "jetson-orin",
                ranges: str | os.PathLike | None = None, calib_cache: str | os.PathLike | None = None,
                options: Any = None, force: bool = False) -> dict[str, Any]:
    """Write a bundle folder (see the module docstring) atomically; returns its manifest.

    Args:
        onnx_paths: models to ship; each gets plans for the target's TensorRT 10.x and for 11.1.
        target: "jetson-orin", "jetson-xavier" (TensorRT 10.3, JetPack 6) or "server" (10.16).
        ranges: trtopt ranges JSON; shipped, and turned into the 10.x calibration cache when no cache is given.
        calib_cache: an existing TensorRT calibration cache (converted to the target's 10.x header).
        options: :class:`~trtopt.trt.plan.BuildOptions` for the plans (shapes, workspace, DLA, ...); its
            ``target`` is set to ``target``.
        force: replace an existing bundle folder. Only a folder holding a bundle manifest (:func:`is_bundle`)
            is ever replaced: never the current folder, a folder holding an input, or any other folder.

    Raises:
        TrtoptError: unknown target; no models; two models with one file name; an unreadable input; ranges
        calibrated on another model than an FP32 one they would make the cache for; an
        output folder that exists with contents (without ``force``, or that is no bundle), holds an input
        or lies on a filesystem without room for the models.
    """
    from trtopt.artifacts import Ranges, inspect_onnx
    from trtopt.files import ensure_replaceable_dir, replace_dir, sha256_file, staging_dir, write_json, write_text
    from trtopt.trt.calibration_cache import convert_cache, ranges_to_cache, read_cache, write_cache
    from trtopt.trt.plan import CALIBRATOR_ALGORITHM, BuildOptions, make_plan, resolve_version
    from trtopt.trt.trtexec import TrtexecTiming, trtexec_args, trtexec_command, unverified_flags

    if target not in TARGET_TRT10:
        raise TrtoptError(f"bundle target {target!r} is unknown", f"use one of {', '.join(TARGET_TRT10)}")
    if not onnx_paths:
        raise TrtoptError("no ONNX models to bundle", "name at least one .onnx file")
    options = replace(options or BuildOptions(), target=target)
    trt10 = resolve_version(TARGET_TRT10[target])
    arts = [inspect_onnx(p) for p in onnx_paths]
    names = [a.path.name.removesuffix(".onnx") for a in arts]
    if len(set(names)) != len(names):
        raise TrtoptError("two bundled models have the same file name", "rename one of them")
    ranges_obj = Ranges.load(ranges) if ranges else None
    if ranges_obj is not None and not calib_cache:
        # the 10.x cache is made from the ranges for every FP32 model: its tensor names must be that model's
        for art in arts:
            if art.precision == "fp32":
                ranges_obj.check_model(art, f"calibrate {art.path.name} itself (trtopt calibrate) and bundle it with "
                                            "those ranges (one bundle per FP32 model and its ranges)")
    # The bundle copies every model (and its side files) and the ranges; plans, scripts and caches are small.
    size = sum(a.size_bytes for a in arts) + (os.path.getsize(ranges) if ranges and os.path.isfile(ranges) else 0)
    out = ensure_replaceable_dir(out_dir, force, is_bundle, "bundle folder", inputs=[*onnx_paths, ranges, calib_cache],
                                 size_bytes=size)

    with staging_dir(out) as stage:
        for sub in ("models", "plans", "calib", "ranges"):
            (stage / sub).mkdir()
        if ranges:
            shutil.copyfile(ranges, stage / "ranges" / Path(ranges).name)
        scripts: dict[str, list[str]] = {"10": [], "11": [], "trtopt": []}
        plans_made: list[dict[str, Any]] = []
        for art, name in zip(arts, names):
            local = stage / "models" / art.path.name
            shutil.copyfile(art.path, local)
            for data in art.data_files:
                shutil.copyfile(data, stage / "models" / data.name)
            cache_rel = None
            if art.precision == "fp32" and (calib_cache or ranges_obj):
                # EntropyCalibration2: the header trtexec --calib and trtopt's calibrator read
                cache = convert_cache(read_cache(calib_cache), trt_version=trt10, algorithm=CALIBRATOR_ALGORITHM) \
                    if calib_cache else ranges_to_cache(ranges_obj, trt_version=trt10, algorithm=CALIBRATOR_ALGORITHM)
                cache_rel = f"calib/{name}.trt10.cache"
                write_cache(cache, stage / cache_rel)
            for major, version in (("10", trt10), ("11", resolve_version(TRT11))):
                opts = options
                if major == "10" and cache_rel:
                    opts = replace(options, calib_cache=str(stage / cache_rel), precision="int8")
                elif major == "11" or not cache_rel:
                    opts = replace(options, calib_cache=None, calibrate=False)
                try:
                    plan = make_plan(local, opts, version)
                except TrtoptError as e:
                    plans_made.append({"model": name, "trt_version": version, "plan": None, "reason": str(e)})
                    continue
                plan = plan.relocated(f"models/{art.path.name}", calib_cache=cache_rel,
                                      timing_cache=f"timing/{name}.trt{major}.timing" if plan.timing_cache else None)
                plan_rel = f"plans/{name}.trt{major}.json"
                data = plan.to_dict()
                engine = f"engines/{name}.trt{major}.engine"
                args = trtexec_args(plan, engine=engine, timing=TrtexecTiming(),
                                    layer_info=f"engines/{name}.trt{major}.layers.json")
                data["trtexec"] = trtexec_command(args)
                data["trtexec_unverified_flags"] = unverified_flags(args, plan.trt_major)
                write_json(stage / plan_rel, data)
                scripts[major].append(data["trtexec"])
                scripts["trtopt"].append(f"trtopt build {plan.onnx_path} --plan {plan_rel} -o {engine}")
                entry = {"model": name, "trt_version": version, "plan": plan_rel, "precision": plan.precision,
                         "int8_source": plan.int8_source, "builder_flags": list(plan.builder_flags),
                         "network_flags": list(plan.network_flags), "trtexec": data["trtexec"]}
                if major == "11" and art.precision == "fp32" and cache_rel:
                    entry["note"] = _CAL_NOTE
                plans_made.append(entry)
        for major in ("10", "11"):
            _script(stage / f"build_trt{major}.sh", scripts[major], f"TensorRT {major}.x trtexec builds")
        _script(stage / "build_trtopt.sh", scripts["trtopt"], "trtopt builds from the plans")
        write_text(stage / "README.md", _readme(target, trt10, names, plans_made))
        for sub in ("calib", "ranges"):
            if not any((stage / sub).iterdir()):
                (stage / sub).rmdir()
        files = {str(p.relative_to(stage)): {"sha256": sha256_file(p), "size_bytes": p.stat().st_size}
                 for p in sorted(stage.rglob("*")) if p.is_file()}
        manifest = {"format": BUNDLE_FORMAT, "target": target, "trt10_version": trt10,
                    "trt11_version": resolve_version(TRT11),
                    "models": names, "plans": plans_made, "files": files}
        write_json(stage / "manifest.json", manifest)
        replace_dir(stage, out)
    return manifest


def is_bundle(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder holding the manifest :func:`make_bundle` writes (what ``--force`` may replace)."""
    import json

    manifest = Path(path) / "manifest.json"
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):  # absent, unreadable or not JSON: not a bundle
        return False
    return (isinstance(data, dict) and data.get("format") == BUNDLE_FORMAT and isinstance(data.get("files"), dict)
            and isinstance(data.get("plans"), list))


def _script(path: Path, lines: list[str], title: str) -> None:
    body = "\n".join(lines) if lines else "echo 'no model in this bundle builds on this TensorRT version' >&2; exit 1"
    path.write_text(f"#!/usr/bin/env bash\n# {title}; run from anywhere: paths are relative to the bundle.\n"
                    f"set -euo pipefail\ncd \"$(dirname \"$0\")\"\nmkdir -p engines timing\n{body}\n", encoding="utf-8")
    path.chmod(0o755)


def _readme(target: str, trt10: str, names: list[str], plans: list[dict[str, Any]]) -> str:
    rows = "\n".join(f"| {p['model']} | {p['trt_version']} | {p.get('precision', '-')} | "
                     f"{p.get('int8_source') or '-'} | {p.get('plan') or 'not buildable: ' + p.get('reason', '')} |"
                     for p in plans)
    return f"""# trtopt bundle ({target})

Engines only run on the GPU and TensorRT version that built them, so build them on the device:

    ./build_trt10.sh      # trtexec, TensorRT {trt10} (JetPack 6 ships 10.3)
    ./build_trt11.sh      # trtexec, TensorRT 11.x (servers; no --fp16/--int8: precision is in the ONNX)
    ./build_trtopt.sh     # trtopt build --plan ...: the engine each plan describes, with a JSON sidecar

Timing flags in the trtexec lines are pinned (no data transfers, CUDA graph, spin-wait) so 10.x and 11.x
numbers compare. Check files against manifest.json (sha256) after copying.

| model | TensorRT | precision | INT8 from | plan |
|---|---|---|---|---|
{rows}

Models: {', '.join(names)}.
"""
