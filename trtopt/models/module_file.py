"""trtopt's model file: a compressed model saved as data (weights + structure), loaded without running code from it.

A pruned, factorized, clustered or distilled model no longer matches its architecture spec (Torch-Pruning
changes layer widths and head counts; factorization swaps layers for ``nn.Sequential`` pairs), so a state
dict alone cannot be loaded back. Pickling the whole module can, but unpickling runs whatever code the
file names (``torch.load(weights_only=False)``); ``torch.export``'s ``.pt2`` is no way out either: in
torch 2.14 ``torch.export.load`` unpickles parts of the archive with ``weights_only=False``.

So the file is a ``torch.save`` of plain data only, read with ``torch.load(weights_only=True)``:

- ``architecture``: the spec the model derives from (``torchvision:resnet18``, ``zoo:digits_cnn``,
  ``package.module:factory``), which the loader rebuilds;
- ``modules``: the module tree in depth-first order: per layer its path, class name, ``training`` flag,
  children, the names of its parameters and buffers, and its data attributes (numbers, strings, tuples,
  dtypes, tensors: ``in_channels``, ``num_heads``, ``kernel_size`` ...);
- ``tensors``: every parameter and buffer once (tied weights stay tied);
- ``header``: JSON with the input specs, output names, preprocessing, description and metadata.

`restore` overlays that onto the rebuilt architecture: a layer of the same class at the same path is
kept and gets the file's data attributes, parameters and buffers (its other attributes, e.g. a
Hugging Face ``config`` object, come from the rebuilt architecture); a layer the architecture lacks (a
factorized pair) is created without running its ``__init__`` from a class that is either in the
rebuilt architecture or a ``torch.nn`` layer, and nothing else. Which code a file can reach is thus
fixed by its architecture spec, which `trtopt.models.load.load_model` only rebuilds unasked for
registry specs (torchvision, timm, zoo).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trtopt.errors import TrtoptError
from trtopt.models.spec import ImagePreprocess, InputSpec, LoadedModel
from trtopt.models.torch_file import try_read_plain

MODULE_FILE_MARKER = "trtopt_module_file"
#: Names a module file may end in: `load_model` reads ``.onnx`` as ONNX and ``.pt2`` as an ExportedProgram.
MODULE_FILE_SUFFIXES = (".pt", ".pth")
MODULE_FILE_FORMAT = 2


def architecture_spec(loaded: LoadedModel) -> str:
    """The spec ``loaded``'s architecture is rebuilt from: the original's, also for a model read from a module file."""
    return loaded.extra.get("architecture") or loaded.spec


def save_module(loaded: LoadedModel, path: str | os.PathLike, force: bool = False,
                metadata: dict[str, Any] | None = None) -> Path:
    """Save a (compressed) model with its input specs as a trtopt model file, atomically, for `load_model`.

    ``metadata`` must be JSON-serializable (e.g. a stage result's ``to_dict()``). See the module
    docstring for the format; the file holds no Python objects, only data.

    Raises:
        TrtoptError: the output exists without ``force``; the model came from a file rather than an
            architecture spec (TorchScript, ExportedProgram, a pickle); a layer has hooks or
            parametrizations, which are code and cannot be saved as data.
    """
    import torch

    from trtopt.files import atomic_output

    spec = architecture_spec(loaded)
    if ":" not in spec or Path(spec).exists():
        raise TrtoptError(f"the model {loaded.spec} was loaded from a file, so there is no architecture spec to rebuild "
                          "it from", "load it by its architecture (torchvision:NAME, package.module:factory, ...) with "
                          "--checkpoint, then compress and save it")
    tensors: dict[str, Any] = {}
    record = {MODULE_FILE_MARKER: MODULE_FILE_FORMAT, "architecture": spec,
              "modules": _describe(loaded.module, tensors), "tensors": tensors,
              "header": json.dumps({"inputs": [vars(s) | {"shape": list(s.shape)} for s in loaded.inputs],
                                    "output_names": list(loaded.output_names),
                                    "preprocess": vars(loaded.preprocess) if loaded.preprocess else None,
                                    "description": loaded.description, "metadata": metadata or {}})}
    with atomic_output(path, force) as tmp:
        torch.save(record, str(tmp))
    return Path(path)


def as_record(data: Any) -> dict[str, Any] | None:
    """``data`` (what `try_read_plain` read) if it is a trtopt model file's record, else None."""
    if not isinstance(data, dict) or data.get(MODULE_FILE_MARKER) != MODULE_FILE_FORMAT:
        return None
    return data


def load_module_file(path: str | os.PathLike, base: LoadedModel) -> LoadedModel:
    """Read the model file ``path`` over ``base``, the already-loaded model it was derived from.

    For callers that hold the original (the pipeline's run): no spec from the file is rebuilt.

    Raises:
        TrtoptError: ``path`` is not a trtopt model file, was derived from another architecture, or is malformed.
    """
    record = as_record(try_read_plain(path))
    if record is None:
        raise TrtoptError(f"{path} is not a trtopt model file", "re-create it (e.g. trtopt optimize --force)")
    if record["architecture"] != architecture_spec(base):
        raise TrtoptError(f"{path} was derived from {record['architecture']}, not from {architecture_spec(base)}",
                          "re-create it from this model (e.g. trtopt optimize --force)")
    return restore(record, base, path)


def restore(record: Mapping[str, Any], base: LoadedModel, path: str | os.PathLike) -> LoadedModel:
    """The model an `as_record` record describes, built over a copy of ``base`` (its architecture).

    Raises:
        TrtoptError: a layer of a class outside the architecture and ``torch.nn``, or a malformed record.
    """
    import copy

    try:
        module = _assemble(record, copy.deepcopy(base.module), path)
        header = json.loads(record["header"])
        inputs = tuple(InputSpec(d["name"], tuple(d["shape"]), d["dtype"], d["low"], d["high"]) for d in header["inputs"])
        pre = header["preprocess"]
        preprocess = ImagePreprocess(pre["size"], pre["resize"], tuple(pre["mean"]), tuple(pre["std"])) if pre else None
        return LoadedModel(module, str(path), inputs, tuple(header["output_names"]) or ("output",), preprocess,
                           header["description"] or f"saved module {Path(path).name}",
                           extra={"metadata": header["metadata"], "architecture": record["architecture"]})
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise TrtoptError(f"{path} is a malformed trtopt model file ({type(e).__name__}: {str(e)[:120]})",
                          "re-create it with trtopt (prune/distill -o, or optimize)") from e


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_data(value: Any) -> bool:
    """True for the attribute values a model file keeps: what ``weights_only`` loading reads back exactly."""
    import torch

    if type(value) in (bool, int, float, str, type(None), torch.dtype, torch.device, torch.Size, torch.Tensor):
        return True
    if type(value) in (tuple, list):
        return all(_is_data(v) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _is_data(v) for k, v in value.items())
    return False


def _describe(root: Any, tensors: dict[str, Any]) -> list[dict[str, Any]]:
    """The module tree, depth-first (parents before children), filling ``tensors`` (path → tensor, each once)."""
    import torch

    internals = set(vars(torch.nn.Module()))
    seen: dict[int, str] = {}  # id(module or tensor) → first path: shared layers and tied weights stay shared
    entries: list[dict[str, Any]] = []

    def tensor_key(t: Any, key: str) -> str:
        if id(t) not in seen:
            seen[id(t)] = key
            tensors[key] = t.detach()
        return seen[id(t)]

    def walk(module: Any, path: str) -> None:
        if module is None:
            entries.append({"path": path, "class": None})
            return
        if id(module) in seen:
            entries.append({"path": path, "alias": seen[id(module)]})
            return
        seen[id(module)] = path
        if torch.nn.utils.parametrize.is_parametrized(module) or any(
                getattr(module, h) for h in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")):
            raise TrtoptError(f"layer {path or '(root)'} has hooks or parametrizations, which are code, not data",
                              "remove them (torch.nn.utils.parametrize.remove_parametrizations, handle.remove()) before saving")
        prefix = f"{path}." if path else ""
        state = {k: v for k, v in vars(module).items() if k not in internals}
        entries.append({
            "path": path, "class": _class_name(type(module)), "training": module.training,
            "attributes": {k: v for k, v in state.items() if _is_data(v)},
            "other_attributes": sorted(k for k, v in state.items() if not _is_data(v)),
            "parameters": {n: None if p is None else tensor_key(p, prefix + n) for n, p in module._parameters.items()},
            "frozen": sorted(n for n, p in module._parameters.items() if p is not None and not p.requires_grad),
            "buffers": {n: None if b is None else tensor_key(b, prefix + n) for n, b in module._buffers.items()},
            "non_persistent": sorted(module._non_persistent_buffers_set),
            "children": list(module._modules)})
        for name, child in module._modules.items():
            walk(child, prefix + name)

    walk(root, "")
    return entries


def _assemble(record: Mapping[str, Any], base: Any, path: str | os.PathLike) -> Any:
    """Overlay the record's layers onto ``base`` (a copy of the architecture, changed in place); returns the root."""
    import torch

    internals = set(vars(torch.nn.Module()))  # set below from the entry's own fields, never from its attributes
    existing = dict(base.named_modules(remove_duplicate=False))
    allowed = {_class_name(type(m)): type(m) for m in existing.values()}
    tensors = record["tensors"]
    parameters: dict[str, Any] = {}  # tensor key → Parameter: a tied weight is one Parameter again
    built: dict[str, Any] = {}
    for entry in record["modules"]:
        where = entry["path"]
        if "alias" in entry:
            built[where] = built[entry["alias"]]
            continue
        if entry["class"] is None:
            built[where] = None
            continue
        module = existing.get(where)
        if module is None or _class_name(type(module)) != entry["class"]:
            module = _new_layer(entry, allowed, path)
        state = vars(module)
        state.update({k: v for k, v in entry["attributes"].items() if k not in internals})
        state["training"] = bool(entry["training"])
        state["_parameters"] = {}
        for name, key in entry["parameters"].items():
            if key is not None and key not in parameters:
                parameters[key] = torch.nn.Parameter(tensors[key], requires_grad=name not in entry["frozen"])
            state["_parameters"][name] = None if key is None else parameters[key]
        state["_buffers"] = {name: None if key is None else tensors[key] for name, key in entry["buffers"].items()}
        state["_non_persistent_buffers_set"] = set(entry["non_persistent"])
        built[where] = module
    for entry in record["modules"]:
        if "alias" not in entry and entry["class"] is not None:
            prefix = f"{entry['path']}." if entry["path"] else ""
            vars(built[entry["path"]])["_modules"] = {name: built[prefix + name] for name in entry["children"]}
    return built[""]


def _new_layer(entry: Mapping[str, Any], allowed: Mapping[str, type], path: str | os.PathLike) -> Any:
    """An empty layer of the entry's class, which must be in the architecture or be a ``torch.nn`` layer.

    ``__init__`` is not called: every attribute it would set comes from the file, so a layer whose class
    keeps non-data attributes (functions, config objects) cannot be created this way and is refused.
    """
    import torch

    name = entry["class"]
    cls = allowed.get(name)
    if cls is None:
        candidate = getattr(torch.nn, name.rpartition(".")[2], None)
        cls = candidate if isinstance(candidate, type) and _class_name(candidate) == name else None
    where = entry["path"] or "(root)"
    if cls is None or not issubclass(cls, torch.nn.Module):
        raise TrtoptError(f"{path}: layer {where} is a {name}, which is neither in the model's architecture nor a "
                          "torch.nn layer, so it cannot be created from data", "re-create the file from a model "
                          "whose new layers are torch.nn layers")
    if entry["other_attributes"]:
        raise TrtoptError(f"{path}: layer {where} ({name}) is not in the architecture and holds non-data attributes "
                          f"({', '.join(entry['other_attributes'][:3])})", "re-create the file from a model whose new "
                          "layers hold only numbers, strings and tensors")
    module = object.__new__(cls)
    torch.nn.Module.__init__(module)
    return module
