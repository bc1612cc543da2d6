"""What the training commands (``trtopt distill``, ``trtopt qat``) share: their training/eval data, the label
checks, and the progress bar.

Data (``--data``/``--eval-data``): a dataset name (`DATASETS`: its train split trains, its test split
evaluates) or an ``.npz`` with one array per model input (+ ``labels``), checked against the model's inputs
(`trtopt.feeds.check_feed`).
"""

from __future__ import annotations

from typing import Any

from trtopt.cli._common import console
from trtopt.errors import TrtoptError

DATASETS = ("digits",)


def training_data(data: str, eval_data: str | None, inputs) -> tuple[tuple[Any, Any], tuple[Any, Any] | None]:
    """``(train, eval or None)``, each ``(model inputs, labels or None)``, for a model with input specs ``inputs``.

    Model inputs are one array, or a tuple in ``forward`` order for several inputs; labels as stored (checked
    by `check_labels`). Raises TrtoptError: an unknown dataset name / not an ``.npz``, a missing file, arrays
    that do not fit the inputs.
    """
    if data in DATASETS:
        from trtopt.datasets import load_dataset

        train_split, test_split = load_dataset(data, "train"), load_dataset(data, "test")
        train = (_model_inputs(train_split.inputs, inputs, data), train_split.labels)
        evaluation = (_model_inputs(test_split.inputs, inputs, data), test_split.labels)
        return train, (_npz(eval_data, inputs) if eval_data else evaluation)
    if not data.endswith(".npz"):
        raise TrtoptError(f"--data {data!r} is neither a dataset name nor an .npz file",
                          f"use {', '.join(DATASETS)} or an .npz with one array per input name")
    return _npz(data, inputs), (_npz(eval_data, inputs) if eval_data else None)


def check_split_labels(module: Any, train: tuple[Any, Any], evaluation: tuple[Any, Any] | None, data: str,
                       eval_data: str | None) -> None:
    """`check_labels` on the train and eval splits that carry labels, against ``module``'s number of outputs."""
    classes = class_count(module, train[0])
    for split, where in ((train, data), (evaluation, eval_data or data)):
        if split is not None and split[1] is not None:
            check_labels(split[1], split[0], classes, where)


def class_count(module: Any, inputs: Any) -> int:
    """Width of the model's output (its number of classes), from one forward pass on the first sample."""
    import torch

    arrays = inputs if isinstance(inputs, tuple) else (inputs,)
    with torch.no_grad():
        out = module(*(torch.from_numpy(a[:1].copy()) for a in arrays))
    out = out[0] if isinstance(out, (tuple, list)) else out
    return int(out.shape[-1])


def check_labels(labels: Any, inputs: Any, classes: int, where: str) -> None:
    """Labels must be one integer class index in [0, classes) per sample; else one line naming the problem."""
    import numpy as np

    labels = np.asarray(labels)
    samples = len(inputs[0] if isinstance(inputs, tuple) else inputs)
    fix = f"save 'labels' as an int64 array of shape ({samples},) holding class indices 0..{classes - 1}"
    if labels.dtype.kind not in "iu":
        raise TrtoptError(f"labels in {where} are {labels.dtype}, not integer class indices", fix)
    if labels.shape != (samples,):
        raise TrtoptError(f"labels in {where} have shape {labels.shape}, not one per sample ({samples},)", fix)
    bad = labels[(labels < 0) | (labels >= classes)]
    if bad.size:
        raise TrtoptError(f"labels in {where} hold {bad.size} value(s) outside 0..{classes - 1} (the model has "
                          f"{classes} outputs), e.g. {int(bad[0])}", fix)


def training_progress(args: Any, main: bool, label: str):
    """A rich progress bar labelled ``label`` (the command) showing step, loss and the latest eval metric.

    Returns ``(context manager, callback)``; the callback takes a `trtopt.compress.trainer.DistillProgress`.
    Hidden with ``--quiet`` and on DDP ranks other than 0 (``main`` False).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                        TimeElapsedColumn(), console=console(args), transient=True, disable=args.quiet or not main)
    task = progress.add_task(label, total=None, status="")

    def update(p) -> None:
        status = f"loss {p.loss:.4f}" + ("" if p.metric is None else f" · eval {p.metric:.4f}")
        progress.update(task, completed=p.step, total=p.total_steps, status=status)

    return progress, update


def _npz(path: str, inputs) -> tuple[Any, Any]:
    from trtopt.data import load_npz
    from trtopt.files import require_file

    require_file(path, "data file", "check the path")
    data = load_npz(path)
    labels = data.pop("labels", None)
    return _model_inputs(data, inputs, path), labels


def _model_inputs(feed: dict[str, Any], inputs, where: str) -> Any:
    """A checked feed as the model's positional inputs: one array, or a tuple in ``forward`` order."""
    from trtopt.feeds import check_feed

    if len(inputs) == 1 and len(feed) == 1:
        feed = {inputs[0].name: next(iter(feed.values()))}
    checked = check_feed(feed, inputs, source=where)
    arrays = tuple(checked[s.name] for s in inputs)
    return arrays[0] if len(arrays) == 1 else arrays
