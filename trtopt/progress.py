"""The two progress callbacks every long-running stage takes (DESIGN.md: "Long work shows progress").

- ``on_step: StepCallback``: called with one status line as each step starts ("quantizing for tensorrt",
  "factorizing layer3.0.conv1"). For work whose steps are few or uneven.
- ``on_progress: ProgressCallback``: called as ``(label, done, total)`` while a counted loop runs
  ("calibration", 128, 512); ``total`` is -1 when it is not known up front (timing for a duration, an export: see :func:`running`).
  The label names the loop completely, so a display can key a bar by it and show it as is; a display
  retires a bar once ``done`` reaches a known ``total``.

The library never prints: the CLI passes a printer and a progress bar; the pipeline forwards its own.
Both are optional everywhere (None: silent). Distillation's ``progress`` receives a richer
`trtopt.compress.distill.DistillProgress` (step, loss, eval metric); the pipeline adapts it to a
``ProgressCallback``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: ``on_step(message)``: a one-line description of the step that is starting.
StepCallback = Callable[[str], None]

#: ``on_progress(label, done, total)``: ``done`` of ``total`` units finished (``total`` -1 when unknown).
ProgressCallback = Callable[[str, int, int], None]


@contextmanager
def running(on_progress: ProgressCallback | None, label: str) -> Iterator[None]:
    """Report one uncounted step (an export, a build) through ``on_progress``: ``(label, 0, -1)`` as it
    starts (a display shows activity and elapsed time), ``(label, 1, 1)`` when it finishes (the display
    retires it). Nothing is reported if the step raises, or without a callback."""
    if on_progress is not None:
        on_progress(label, 0, -1)
    yield
    if on_progress is not None:
        on_progress(label, 1, 1)
