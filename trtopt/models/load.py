"""Loading a PyTorch model from a spec string.

Specs:
    ``torchvision:NAME``          a torchvision architecture (random init unless ``pretrained``)
    ``timm:NAME``                 a timm architecture
    ``zoo:NAME``                  a real pretrained model that ships inside a Python package (see `trtopt.models.zoo`)
    ``package.module:factory``    any importable callable returning an ``nn.Module``
    ``path/to/model.pt``          a TorchScript file, an ExportedProgram (``.pt2``), or a whole module saved by
                                  :func:`save_module` (e.g. a pruned model, whose architecture differs)
plus an optional ``checkpoint`` (state dict or a dict holding one under ``state_dict``/``model``) loaded
strictly into the architecture. Pretrained hub weights cannot be downloaded here; asking for them fails
with a message saying what to do instead (a local checkpoint, or a ``zoo:`` model).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path
from typing import Any

from trtopt.errors import TrtoptError, first_line, missing_dependency
from trtopt.models.spec import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocess, InputSpec, LoadedModel, image_inputs, is_onnx_path


def load_model(spec: str, checkpoint: str | os.PathLike | None = None, pretrained: bool = False,
               input_shape: tuple[int, ...] | None = None, seed: int = 0) -> LoadedModel:
    """Load ``spec`` (see module docstring) on the CPU in eval mode.

    Args:
        spec: the model spec.
        checkpoint: a state-dict/checkpoint file loaded strictly into the architecture.
        pretrained: ask for the hub's pretrained weights (fails offline unless already cached).
        input_shape: override the input shape (without batch) of a single-input model.
        seed: seed for randomly initialized weights.

    Raises:
        TrtoptError: unknown spec, missing file, weights that don't fit, offline hub request.
    """
    if is_onnx_path(spec):
        raise TrtoptError(f"{spec} is an ONNX file, not a PyTorch model",
                          "use it where an ONNX model is expected (trtopt bench/compare accept it directly)")
    import torch

    # Random-init architectures get the same weights every time (reproducible numbers, and a model
    # loaded twice, e.g. as reference and as candidate, is the same model); the global RNG is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        loaded = _load_architecture(spec, pretrained)
    if checkpoint is not None:
        load_checkpoint_(loaded.module, checkpoint)
    if input_shape is not None:
        if len(loaded.inputs) != 1:
            raise TrtoptError(f"--input-shape applies to single-input models, {spec} has {len(loaded.inputs)} inputs",
                              "pass shapes per input name (name:dims)")
        first = loaded.inputs[0]
        loaded.inputs = (InputSpec(first.name, tuple(input_shape), first.dtype, first.low, first.high),)
    loaded.module.eval()
    return loaded

def _load_architecture(spec: str, pretrained: bool) -> LoadedModel:
    if ":" not in spec or Path(spec).exists():
        return _load_file(spec, pretrained)
    source, name = spec.split(":", 1)
    if source == "torchvision":
        return _load_torchvision(name, pretrained)
    if source == "timm":
        return _load_timm(name, pretrained)
    if source == "zoo":
        from trtopt.models import zoo

        return zoo.load(name)
    return _load_factory(source, name, pretrained)

def _load_torchvision(name: str, pretrained: bool) -> LoadedModel:
    import torchvision

    if name not in torchvision.models.list_models():
        raise TrtoptError(f"torchvision has no model {name!r}", "see torchvision.models.list_models() for the names")
    weights = None
    if pretrained:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        _require_cached_download(f"torchvision:{name}", weights.url)
    module = torchvision.models.get_model(name, weights=weights)
    size = 299 if name == "inception_v3" else 224
    return LoadedModel(module, f"torchvision:{name}", image_inputs((3, size, size)),
                       preprocess=ImagePreprocess(size=size, resize=int(size * 256 / 224)),
                       description=f"torchvision {name}, {'pretrained' if pretrained else 'random init'}")

def _require_cached_download(spec: str, url: str) -> None:
    """Fail fast, before any network access, when hub weights are not in the local torch hub cache."""
    import torch

    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not cached.is_file():
        raise TrtoptError(
            f"pretrained weights for {spec} need a download from {url}, which is not possible offline",
            f"put the file at {cached}, pass --checkpoint FILE, or use a model that ships its weights (zoo:efficientnet_lite0)",
        )

def _load_timm(name: str, pretrained: bool) -> LoadedModel:
    try:
        import timm
    except ImportError as e:
        raise missing_dependency("timm", "models", "timm:" + name) from e
    if name not in timm.list_models():
        raise TrtoptError(f"timm has no model {name!r}", "see timm.list_models() for the names")
    if pretrained:
        raise TrtoptError(f"pretrained weights for timm:{name} come from the Hugging Face hub, which is not reachable offline",
                          "download them elsewhere and pass --checkpoint FILE, or use zoo:efficientnet_lite0")
    module = timm.create_model(name, pretrained=False)
    cfg = getattr(module, "pretrained_cfg", {}) or {}
    c, h, w = tuple(cfg.get("input_size", (3, 224, 224)))
    pre = ImagePreprocess(size=h, resize=int(h / cfg.get("crop_pct", 0.875)),
                          mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)))
    return LoadedModel(module, f"timm:{name}", image_inputs((c, h, w)), preprocess=pre,
                       description=f"timm {name}, random init")

def _load_factory(module_name: str, attr: str, pretrained: bool) -> LoadedModel:
    try:
        mod = importlib.import_module(module_name)
    except ImportError as e:
        raise TrtoptError(f"unknown model spec '{module_name}:{attr}': cannot import module {module_name!r} ({e})",
                          "use torchvision:NAME, timm:NAME, zoo:NAME, package.module:factory or a model file") from e
    factory = getattr(mod, attr, None)
    if not callable(factory):
        raise TrtoptError(f"{module_name} has no callable {attr!r}", "name a function or class that returns an nn.Module")
    try:
        result = factory(pretrained=True) if pretrained else factory()
    except Exception as e:  # user code: whatever it raises, the spec is what failed
        raise TrtoptError(f"model factory {module_name}:{attr} raised {first_line(e, with_type=True)}",
                          "fix the factory, or run it in Python to see the traceback (trtopt --debug shows it)") from e
    if isinstance(result, LoadedModel):
        return result
    _require_module(result, f"{module_name}:{attr}")
    inputs = getattr(result, "trtopt_inputs", None) or image_inputs()
    return LoadedModel(result, f"{module_name}:{attr}", tuple(inputs), description=f"{module_name}:{attr}")

def _require_module(obj: Any, spec: str) -> None:
    import torch

    if not isinstance(obj, torch.nn.Module):
        raise TrtoptError(f"{spec} returned {type(obj).__name__}, not a torch.nn.Module", "return the model itself")

def _load_file(spec: str, pretrained: bool) -> LoadedModel:
    import torch

    path = Path(spec)
    if not path.exists():
        hint = "a path that exists" if ("/" in spec or "." in spec) else "torchvision:NAME, timm:NAME, zoo:NAME or package.module:factory"
        raise TrtoptError(f"unknown model spec or missing file {spec!r}", f"give {hint}")
    if path.suffix == ".pt2":
        try:
            program = torch.export.load(str(path))
        except Exception as e:
            raise TrtoptError(f"{path} is not a loadable ExportedProgram ({type(e).__name__})", "re-save it with torch.export.save") from e
        module = program.module()
        inputs = tuple(InputSpec(f"input_{i}" if i else "input", tuple(a.shape[1:]), str(a.dtype).replace("torch.", ""))
                       for i, a in enumerate(program.example_inputs[0]))
        return LoadedModel(module, spec, inputs, description=f"ExportedProgram {path.name}")
    if is_module_file(path):
        return _load_module_file(path)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise TrtoptError(
            f"{path} is not a TorchScript model (a state dict or checkpoint needs its architecture)",
            f"give the architecture as the model spec and this file as --checkpoint (e.g. torchvision:resnet18 --checkpoint {path})",
        ) from e
    return LoadedModel(module, spec, image_inputs(), description=f"TorchScript {path.name}")

MODULE_FILE_MARKER = "trtopt_module_file"

def save_module(loaded: LoadedModel, path: str | os.PathLike, force: bool = False,
                metadata: dict[str, Any] | None = None) -> Path:
    """Save a whole module (architecture and weights) with its input specs, atomically, for `load_model`.

    For models whose architecture no longer matches any spec (a pruned model has fewer channels), a state
    dict is not enough. The file is a ``torch.save`` pickle of ``{"trtopt_module_file": 1, "module": ...,
    "inputs": ..., "output_names": ..., "description": ..., "metadata": ...}``; `load_model(path)` reads
    it back. Loading it unpickles the module's classes, i.e. runs code importable from the file's
    modules, like any saved nn.Module: load only files you trust (trtopt only unpickles files that
    start with its own marker).

    Raises:
        TrtoptError: the output exists without ``force``; the module cannot be pickled (a class defined
            inside a function).
    """
    import pickle

    import torch

    from trtopt.files import atomic_output

    record = {MODULE_FILE_MARKER: 1, "module": loaded.module,
              "inputs": [dataclasses.asdict(s) for s in loaded.inputs], "output_names": list(loaded.output_names),
              "preprocess": dataclasses.asdict(loaded.preprocess) if loaded.preprocess else None,
              "spec": loaded.spec, "description": loaded.description, "metadata": metadata or {}}
    with atomic_output(path, force) as tmp:
        try:
            torch.save(record, str(tmp))
        except (pickle.PicklingError, AttributeError, TypeError) as e:
            raise TrtoptError(f"the model {loaded.spec} cannot be saved whole ({type(e).__name__}: {str(e)[:160]})",
                              "define its classes at module level so they can be pickled") from e
    return Path(path)

def is_module_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file written by :func:`save_module` (checked without unpickling anything)."""
    import pickletools
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            pkl = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            if pkl is None:
                return False
            with archive.open(pkl) as f:
                for i, (opcode, arg, _pos) in enumerate(pickletools.genops(f)):
                    if isinstance(arg, str) and arg == MODULE_FILE_MARKER:
                        return True
                    if i > 8:
                        return False
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # not a zip or not a pickle: another format
        return False
    return False

def _load_module_file(path: Path) -> LoadedModel:
    import torch

    try:
        record = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as e:
        raise TrtoptError(f"{path} is a trtopt module file but cannot be loaded ({type(e).__name__}: {str(e)[:160]})",
                          "load it with the packages (and versions) it was saved with") from e
    _require_module(record.get("module"), str(path))
    inputs = tuple(InputSpec(d["name"], tuple(d["shape"]), d["dtype"], d["low"], d["high"]) for d in record["inputs"])
    pre = record.get("preprocess")
    preprocess = ImagePreprocess(pre["size"], pre["resize"], tuple(pre["mean"]), tuple(pre["std"])) if pre else None
    return LoadedModel(record["module"], str(path), inputs, tuple(record.get("output_names") or ("output",)), preprocess,
                       record.get("description") or f"saved module {path.name}", extra={"metadata": record.get("metadata", {})})

def load_checkpoint_(module: Any, checkpoint: str | os.PathLike) -> None:
    """Load a state dict (or a checkpoint dict holding one) into ``module`` in place, strictly.

    Reads with ``weights_only=True``: a checkpoint can't run code. Mismatched keys or shapes raise
    TrtoptError naming the first offending parameter.
    """
    import torch

    path = Path(checkpoint)
    if not path.is_file():
        raise TrtoptError(f"checkpoint {path} does not exist", "check the path")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise TrtoptError(f"checkpoint {path} cannot be read as a PyTorch state dict ({type(e).__name__})",
                          "save it with torch.save(model.state_dict(), path)") from e
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise TrtoptError(f"checkpoint {path} holds {type(state).__name__}, not a state dict", "save model.state_dict()")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        which = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise TrtoptError(f"checkpoint {path} does not fit the architecture ({which}; {len(missing)} missing, "
                          f"{len(unexpected)} unexpected keys)", "pass the architecture the checkpoint was trained with")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise TrtoptError(f"checkpoint {path}: {k} has shape {tuple(v.shape)}, the model expects {tuple(expected[k].shape)}",
                              "pass the architecture the checkpoint was trained with")
    module.load_state_dict(state, strict=True)
