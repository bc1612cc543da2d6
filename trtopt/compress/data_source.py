"""Training and eval data for the distillation trainer: batches by index, and calling a model on them.

Data comes in one of two forms:

- ``(inputs, labels)``: ``inputs`` a tensor / numpy array (one model input), a tuple or list of them
  (positional inputs), or a dict name → array (keyword inputs); samples on axis 0; ``labels`` an int64
  array (N,) or ``None`` (unlabelled);
- a map-style ``torch.utils.data.Dataset`` whose items are ``(inputs, label)`` pairs with per-sample
  inputs in any of the forms above and ``label`` an int, a 0-d tensor, or ``None``.

Imports torch: import this module lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from trtopt.errors import TrtoptError


class DataSource:
    """Indexable training/eval data: ``batch(indices) -> (inputs, labels | None)`` on the CPU.

    Raises:
        TrtoptError (on construction): not one of the two forms, a Dataset without a length, inputs and
            labels with different sample counts, no samples.
    """

    def __init__(self, data: Any, what: str):
        self.what = what
        self.dataset = None
        if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, tuple):
            self.dataset = data
            try:
                self.length = len(data)
            except TypeError:
                raise TrtoptError(f"{what} is a Dataset without a length", "give a map-style Dataset (with __len__)") from None
            self.inputs, self.labels = None, None
        else:
            if not isinstance(data, (tuple, list)) or len(data) != 2:
                raise TrtoptError(f"{what} must be (inputs, labels) or a torch Dataset, got {type(data).__name__}",
                                  "pass (inputs, labels) with labels None for unlabelled data")
            self.inputs = map_tensors(data[0], _as_tensor)
            self.labels = None if data[1] is None else _as_tensor(data[1])
            sizes = {int(t.shape[0]) for t in _flat(self.inputs)} if _flat(self.inputs) else {0}
            if self.labels is not None:
                sizes.add(int(self.labels.shape[0]))
            if len(sizes) != 1:
                raise TrtoptError(f"{what}: inputs and labels have different sample counts {sorted(sizes)}",
                                  "give the same number of samples (axis 0) for every input and the labels")
            self.length = sizes.pop()
        if self.length == 0:
            raise TrtoptError(f"{what} is empty", "give at least one sample")

    def __len__(self) -> int:
        return self.length

    @property
    def labelled(self) -> bool:
        if self.dataset is None:
            return self.labels is not None
        return _split_item(self.dataset[0])[1] is not None

    def batch(self, indices: torch.Tensor) -> tuple[Any, torch.Tensor | None]:
        """The samples at ``indices`` (1-D int64): inputs in the data's form and int64 labels (or None)."""
        if self.dataset is None:
            return map_tensors(self.inputs, lambda t: t[indices]), None if self.labels is None else self.labels[indices]
        items = [_split_item(self.dataset[int(i)]) for i in indices]
        inputs = _collate([x for x, _ in items])
        labels = [y for _, y in items]
        if all(y is None for y in labels):
            return inputs, None
        if any(y is None for y in labels):
            raise TrtoptError(f"{self.what} mixes labelled and unlabelled items", "label every item or none")
        return inputs, torch.as_tensor(np.asarray([int(y) for y in labels]), dtype=torch.int64)

def map_tensors(inputs: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``fn`` applied to every tensor of a tensor / tuple / list / dict of inputs (lists become tuples)."""
    if isinstance(inputs, Mapping):
        return {k: map_tensors(v, fn) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return tuple(map_tensors(v, fn) for v in inputs)
    return fn(inputs)

def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model`` on a batch: a dict is passed by keyword, a tuple positionally, a tensor as the one argument."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)

def primary_output(out: Any, who: str) -> torch.Tensor:
    """The tensor to distill from a model's output: itself, ``.logits``, ``["logits"]`` or the first element.

    Raises:
        TrtoptError: the output holds no tensor (``who`` names the model).
    """
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits") and isinstance(out.logits, torch.Tensor):
        return out.logits
    if isinstance(out, Mapping):
        if "logits" in out:
            return out["logits"]
        out = list(out.values())
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TrtoptError(f"the {who}'s output ({type(out).__name__}) holds no tensor to distill",
                      "return a tensor (logits or an embedding) from forward()")

@torch.no_grad()
def predict(model: nn.Module, source: DataSource, batch_size: int, device: torch.device) -> torch.Tensor:
    """Outputs of ``model`` (put in eval mode) on every sample of ``source``, concatenated, on ``device``."""
    model.eval()
    outs = []
    for start in range(0, len(source), batch_size):
        inputs, _ = source.batch(torch.arange(start, min(start + batch_size, len(source))))
        outs.append(primary_output(call_model(model, map_tensors(inputs, lambda t: t.to(device))), "model"))
    return torch.cat(outs)

def _split_item(item: Any) -> tuple[Any, Any]:
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    raise TrtoptError(f"dataset items must be (inputs, label) pairs, got {type(item).__name__}",
                      "return (inputs, label) from __getitem__, with label None for unlabelled data")

def _collate(samples: list[Any]) -> Any:
    first = samples[0]
    if isinstance(first, Mapping):
        return {k: _collate([s[k] for s in samples]) for k in first}
    if isinstance(first, (tuple, list)):
        return tuple(_collate([s[i] for s in samples]) for i in range(len(first)))
    return torch.stack([_as_tensor(s) for s in samples])

def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.as_tensor(np.asarray(x))

def _flat(inputs: Any) -> list[torch.Tensor]:
    if isinstance(inputs, Mapping):
        return [t for v in inputs.values() for t in _flat(v)]
    if isinstance(inputs, (tuple, list)):
        return [t for v in inputs for t in _flat(v)]
    return [inputs]
