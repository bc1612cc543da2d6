"""Loading a PyTorch model from a spec string.

Specs:
    ``torchvision:NAME``          a torchvision architecture (random init unless ``pretrained``)
    ``timm:NAME``                 a timm architecture
    ``zoo:NAME``                  a real pretrained model that ships inside a Python package (see `trtopt.models.zoo`)
    ``package.module:factory``    any importable callable returning an ``nn.Module``
    ``path/to/model.pt``          a TorchScript file, a trtopt model file (`trtopt.models.module_file.save_module`:
                                  a pruned or distilled model, whose architecture differs from its spec), or,
                                  only when trusted, an ExportedProgram (``.pt2``) or a pickled ``nn.Module``
plus an optional ``checkpoint`` (state dict or a dict holding one under ``state_dict``/``model``) loaded
strictly into the architecture. Pretrained hub weights cannot be downloaded here; asking for them fails
with a message saying what to do instead (a local checkpoint, or a ``zoo:`` model).

**Code from files.** A model file must not run code it names. TorchScript files, checkpoints
(``weights_only``) and trtopt model files whose architecture is a registry spec (torchvision, timm, zoo)
load as data. Three kinds would run code the file chooses, so they load only with ``trust_code``
(``--trust-code``, recipe ``trust_code: true``), and are otherwise refused with one line naming the
file: a pickled module (``torch.load(weights_only=False)`` runs what the pickle names), an
ExportedProgram (``torch.export.load`` in torch 2.14 unpickles parts of the archive with
``weights_only=False``), and a trtopt model file whose architecture is a ``package.module:factory``
(rebuilding it calls a function the file names).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import inspect
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from trtopt.errors import TrtoptError, first_line, missing_dependency
from trtopt.models.inputs import InputDeclaration, declare_inputs
from trtopt.models.spec import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImagePreprocess,
    InputSpec,
    LoadedModel,
    image_inputs,
    is_onnx_path,
)
from trtopt.models.torch_file import read_plain, try_read_plain

REGISTRY_SOURCES = ("torchvision", "timm", "zoo")

_TRUST_CODE = contextvars.ContextVar("trtopt_trust_code", default=False)


@contextlib.contextmanager
def trusting_code(trust: bool = True) -> Iterator[None]:
    """Within the block, `load_model` calls default to ``trust_code=trust`` (the CLI's ``--trust-code``)."""
    token = _TRUST_CODE.set(trust)
    try:
        yield
    finally:
        _TRUST_CODE.reset(token)


def load_model(spec: str, checkpoint: str | os.PathLike | None = None, pretrained: bool = False,
               inputs: Sequence[InputDeclaration] = (), seed: int = 0, trust_code: bool | None = None) -> LoadedModel:
    """Load ``spec`` (see module docstring) on the CPU in eval mode.

    Args:
        spec: the model spec.
        checkpoint: a state-dict/checkpoint file loaded strictly into the architecture.
        pretrained: ask for the hub's pretrained weights (fails offline unless already cached).
        inputs: input declarations (shapes with the batch, dtypes, ranges, dynamic axes) applied over the
            model's own (`trtopt.models.inputs.declare_inputs`).
        seed: seed for randomly initialized weights.
        trust_code: allow model files that run code they name (see module docstring); None: the
            setting of the enclosing `trusting_code` block, else False.

    Raises:
        TrtoptError: unknown spec, missing file, weights that don't fit, offline hub request, a model
            file that would run code it names without ``trust_code``; declarations that don't fit the
            model, or a factory model's forward parameter that nothing declares.
    """
    trust = _TRUST_CODE.get() if trust_code is None else trust_code
    if is_onnx_path(spec):
        raise TrtoptError(f"{spec} is an ONNX file, not a PyTorch model",
                          "use it where an ONNX model is expected (trtopt bench/compare accept it directly)")
    import torch

    # Random-init architectures get the same weights every time (reproducible numbers, and a model
    # loaded twice, e.g. as reference and as candidate, is the same model); the global RNG is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        loaded = _load_architecture(spec, pretrained, trust)
    if checkpoint is not None:
        load_checkpoint_(loaded.module, checkpoint)
    parameters = loaded.extra.pop("forward_parameters", None)
    if inputs or (parameters is not None and len(parameters) > 1):
        loaded.inputs = declare_inputs(loaded.inputs, inputs, spec, forward_parameters=parameters)
    loaded.module.eval()
    return loaded

def _load_architecture(spec: str, pretrained: bool, trust: bool) -> LoadedModel:
    if ":" not in spec or Path(spec).exists():
        return _load_file(spec, trust)
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
    kwargs: dict[str, Any] = {"weights": weights}
    builder = torchvision.models.get_model_builder(name)
    if "weights_backbone" in inspect.signature(builder).parameters:
        # segmentation and detection builders download an ImageNet backbone by default: off unless pretrained
        kwargs["weights_backbone"] = None  # with pretrained weights the full model's replace the backbone's anyway
    with offline_downloads(f"torchvision:{name}"):
        module = builder(**kwargs)
    size = 299 if name == "inception_v3" else 224
    return LoadedModel(module, f"torchvision:{name}", image_inputs((3, size, size)),
                       preprocess=ImagePreprocess(size=size, resize=int(size * 256 / 224)),
                       description=f"torchvision {name}, {'pretrained' if pretrained else 'random init'}")

@contextlib.contextmanager
def offline_downloads(spec: str) -> Iterator[None]:
    """Turn a download attempted inside the block (torch.hub, urllib, Hugging Face) into the one-line offline error."""
    import urllib.error

    try:
        yield
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        raise TrtoptError(f"loading {spec} tried to download weights ({first_line(e)}), which is not possible offline",
                          "load it without --pretrained (random init), or pass --checkpoint FILE") from e


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
    declared = getattr(result, "trtopt_inputs", None)
    loaded = LoadedModel(result, f"{module_name}:{attr}", tuple(declared or image_inputs()),
                         description=f"{module_name}:{attr}")
    if not declared:  # a guess: the forward's parameters say what the model takes (see declare_inputs)
        loaded.extra["forward_parameters"] = _forward_parameters(result)
    return loaded


def _forward_parameters(module: Any) -> tuple[str, ...]:
    """Names of the required positional parameters of ``module.forward``, in call order."""
    try:
        signature = inspect.signature(module.forward)
    except (TypeError, ValueError):  # a builtin or compiled forward: no signature to read
        return ("input",)
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = tuple(p.name for p in signature.parameters.values() if p.kind in kinds and p.default is p.empty)
    return names if len(names) > 1 else ("input",)

def _require_module(obj: Any, spec: str) -> None:
    import torch

    if not isinstance(obj, torch.nn.Module):
        raise TrtoptError(f"{spec} returned {type(obj).__name__}, not a torch.nn.Module", "return the model itself")

def _load_file(spec: str, trust: bool) -> LoadedModel:
    import torch

    from trtopt.files import require_file
    from trtopt.models.module_file import as_record, restore

    path = Path(spec)
    if not path.exists():
        hint = "a path that exists" if ("/" in spec or "." in spec) else "torchvision:NAME, timm:NAME, zoo:NAME or package.module:factory"
        raise TrtoptError(f"unknown model spec or missing file {spec!r}", f"give {hint}")
    require_file(path, "model file", "check the path")  # a folder or a pipe is refused, not read (or waited on)
    if path.suffix == ".pt2":
        _require_trust(trust, path, "is an ExportedProgram, and torch.export.load unpickles parts of it with "
                                    "weights_only=False, which runs code the file names")
        try:
            program = torch.export.load(str(path))
        except Exception as e:
            raise TrtoptError(f"{path} is not a loadable ExportedProgram ({type(e).__name__})", "re-save it with torch.export.save") from e
        module = program.module()
        inputs = tuple(InputSpec(f"input_{i}" if i else "input", tuple(a.shape[1:]), str(a.dtype).replace("torch.", ""))
                       for i, a in enumerate(program.example_inputs[0]))
        return LoadedModel(module, spec, inputs, description=f"ExportedProgram {path.name}")
    if _is_torchscript(path):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise TrtoptError(f"{path} is not a loadable TorchScript model ({type(e).__name__})",
                              "re-save it with torch.jit.save") from e
        return LoadedModel(module, spec, image_inputs(), description=f"TorchScript {path.name}")
    data = try_read_plain(path)
    record = as_record(data)
    if record is not None:
        architecture = record["architecture"]
        if not isinstance(architecture, str) or ":" not in architecture:
            raise TrtoptError(f"{path} is a malformed trtopt model file (architecture {architecture!r})",
                              "re-create it with trtopt (prune/distill -o, or optimize)")
        if architecture.split(":", 1)[0] not in REGISTRY_SOURCES or Path(architecture).exists():
            _require_trust(trust, path, f"rebuilds its architecture by calling {architecture}, code the file names")
        return restore(record, _load_architecture(architecture, False, trust), path)
    imports = [] if data is not None else _pickled_globals(path)  # a state dict names torch's own rebuilders
    if imports:
        _require_trust(trust, path, f"is a pickle of Python objects ({', '.join(imports[:3])}), and unpickling it "
                                    "runs code the file names")
        try:
            module = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as e:
            raise TrtoptError(f"{path} cannot be unpickled ({type(e).__name__}: {str(e)[:160]})",
                              "load it with the packages (and versions) it was saved with") from e
        _require_module(module, str(path))
        return LoadedModel(module, spec, image_inputs(), description=f"pickled module {path.name}")
    raise TrtoptError(
        f"{path} is not a TorchScript model or a trtopt model file (a state dict or checkpoint needs its architecture)",
        f"give the architecture as the model spec and this file as --checkpoint (e.g. torchvision:resnet18 --checkpoint {path})",
    )

def _require_trust(trust: bool, path: Path, why: str) -> None:
    if not trust:
        raise TrtoptError(f"{path} {why}; refused", f"only if you trust {path.name}, pass --trust-code (recipe: "
                          "trust_code: true); trtopt's own model files from a torchvision/timm/zoo model need no trust")

def _is_torchscript(path: Path) -> bool:
    """True for a TorchScript archive (a zip with compiled ``code/``), told apart without loading it."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False

def _pickled_globals(path: Path) -> list[str]:
    """The ``module.name`` globals the pickle in ``path`` (or in a ``torch.save`` archive) would import, read
    with `pickletools` without unpickling; empty for a file that is not a pickle or names none."""
    import pickletools
    import zipfile

    names: list[str] = []
    strings: list[str] = []
    try:
        with contextlib.ExitStack() as stack:
            if zipfile.is_zipfile(path):
                archive = stack.enter_context(zipfile.ZipFile(path))
                pkl = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                if pkl is None:
                    return []
                stream = stack.enter_context(archive.open(pkl))
            else:
                stream = stack.enter_context(open(path, "rb"))
            for opcode, arg, _pos in pickletools.genops(stream):
                if opcode.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                if isinstance(arg, str):
                    strings.append(arg)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # not a pickle (any more): what was read is the answer
        pass
    return list(dict.fromkeys(names))

def load_checkpoint_(module: Any, checkpoint: str | os.PathLike) -> None:
    """Load a state dict (or a checkpoint dict holding one) into ``module`` in place, strictly.

    Reads with ``weights_only=True``: a checkpoint can't run code. Mismatched keys or shapes raise
    TrtoptError naming the first offending parameter.
    """
    from trtopt.files import require_file

    path = require_file(checkpoint, "checkpoint", "check the path")
    state = read_plain(path, "checkpoint", "save it with torch.save(model.state_dict(), path)")
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
