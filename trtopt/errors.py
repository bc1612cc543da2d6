"""The one exception type for user errors.

A :class:`TrtoptError` carries a one-line message that names the problem and, after "fix:", what to do
about it. The CLI prints it as a single line and exits non-zero without a traceback (``--debug`` shows
one); library callers catch it like any other exception.
"""

from __future__ import annotations


class TrtoptError(Exception):
    """A user error: bad input, a missing file or dependency, a failed check.

    Args:
        problem: what is wrong, naming the file, tensor, option or value concerned.
        fix: what the user should do about it (omitted when there is nothing to add).
        key: for config errors, the dotted path of the offending key ("export.opset"), so a recipe
            reader can point at the line that holds it.
    """

    def __init__(self, problem: str, fix: str | None = None, key: str | None = None):
        self.problem = problem
        self.fix = fix
        self.key = key
        super().__init__(problem if fix is None else f"{problem}; fix: {fix}")


def missing_dependency(module: str, extra: str, purpose: str) -> TrtoptError:
    """The error for an optional dependency that is not installed, naming the extra that brings it."""
    return TrtoptError(
        f"{purpose} needs the Python package '{module}', which is not installed",
        f"pip install 'trtopt[{extra}]'",
    )
