"""An edge model file (``.pte`` / ``.tflite``) and its JSON sidecar, read back and checked.

Both formats are built for one input shape; the sidecar next to the model (``model.pte.json``) records
what the file itself does not: input names, shapes and dtypes, output names, precision, and how it was
made. This module reads and checks it; the runtime adapters in `trtopt.backends` use it (their inputs,
batch axis fixed, come from it), the converters in `trtopt.edge.export` write it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trtopt.errors import TrtoptError

# file suffix → (backend name, the extra that installs it)
FORMATS = {"pte": ("executorch", "executorch"), "tflite": ("litert", "litert")}

SIDECAR_VERSION = 1


@dataclass(frozen=True)
class EdgeArtifact:
    """A ``.pte`` or ``.tflite`` file and what its sidecar says about it.

    Attributes:
        path: the model file; ``sidecar`` is ``<path>.json``.
        format: "pte" or "tflite"; ``backend``: "executorch" or "litert".
        precision: "fp32" or "int8".
        sha256 / size_bytes: of the model file (its deployable size).
        inputs: name, full shape (batch included) and dtype of each input, in call order.
        output_names: names of the outputs, in order.
        source: the PyTorch spec it was made from; ``notes``: how.
    """

    path: Path
    format: str
    backend: str
    precision: str
    sha256: str
    size_bytes: int
    inputs: tuple[dict[str, Any], ...]
    output_names: tuple[str, ...]
    source: str = ""
    notes: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def sidecar(self) -> Path:
        return sidecar_path(self.path)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(path=str(self.path), inputs=list(self.inputs), output_names=list(self.output_names), notes=list(self.notes))
        return d

def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar beside an edge model: ``model.pte`` → ``model.pte.json``."""
    p = Path(path)
    return p.with_name(p.name + ".json")

def edge_format(path: str | os.PathLike) -> str | None:
    """"pte" / "tflite" for a path with that suffix, else None."""
    suffix = Path(path).suffix.lower().lstrip(".")
    return suffix if suffix in FORMATS else None

def inspect_edge(path: str | os.PathLike) -> EdgeArtifact:
    """Read an edge model's sidecar and check the file is the one it describes.

    Raises TrtoptError for an unknown suffix, a missing file or sidecar, or a file changed since.
    """
    from trtopt.files import read_json, require_file, sha256_file

    p = Path(path)
    fmt = edge_format(p)
    if fmt is None:
        raise TrtoptError(f"{p.name} is not an edge model", "give a .pte (ExecuTorch) or .tflite (LiteRT) file")
    require_file(p, "edge model", "create it with trtopt edge-export")
    side = sidecar_path(p)
    if not side.is_file():
        raise TrtoptError(f"{p.name} has no sidecar {side.name} (input names and shapes)",
                          "create the model with trtopt edge-export, which writes both")
    data = read_json(side, "edge sidecar", "re-create the model with trtopt edge-export")
    try:
        if data.get("version") != SIDECAR_VERSION:
            raise ValueError(f"version {data.get('version')!r}")
        art = EdgeArtifact(path=p, format=fmt, backend=FORMATS[fmt][0], precision=data["precision"],
                           sha256=data["sha256"], size_bytes=p.stat().st_size,
                           inputs=tuple(data["inputs"]), output_names=tuple(data["output_names"]),
                           source=data.get("source", ""), notes=tuple(data.get("notes", ())),
                           config=dict(data.get("config", {})))
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # not an object, or fields missing / mistyped
        raise TrtoptError(f"sidecar {side} is not a trtopt edge sidecar ({e})", "re-create the model with trtopt edge-export") from e
    if sha256_file(p) != art.sha256:
        raise TrtoptError(f"{p.name} changed since {side.name} was written", "re-create the model with trtopt edge-export")
    return art

def require(module: str, backend: str) -> None:
    """Raise the missing-extra error for ``backend`` when ``module`` is not importable."""
    import importlib.util

    from trtopt.errors import missing_dependency

    if importlib.util.find_spec(module) is None:
        extra = next(extra for name, extra in FORMATS.values() if name == backend)
        raise missing_dependency(module, extra, f"the {backend} backend")
