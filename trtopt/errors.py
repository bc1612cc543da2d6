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


def missing_dependency(module: str, extra: str | None, purpose: str) -> TrtoptError:
    """The error for a dependency that is not installed, naming what brings it back.

    Args:
        module: the package's install name ("torch-pruning").
        extra: the trtopt extra that installs it ("models"); None for a core dependency (listed in
            trtopt's own ``dependencies``), whose absence means a broken install rather than a choice.
        purpose: what needs it ("structured pruning").
    """
    fix = (f"pip install '{module}' (a core dependency of trtopt: reinstalling trtopt brings it back)"
           if extra is None else f"pip install 'trtopt[{extra}]'")
    return TrtoptError(f"{purpose} needs the Python package '{module}', which is not installed", fix)


def first_line(error: BaseException, limit: int = 200, with_type: bool = False) -> str:
    """The first non-empty line of an exception's message, for a one-line error that quotes it.

    Args:
        error: any exception; its message may be empty or start with blank lines (``RuntimeError()``,
            ``KeyError()``), where indexing ``str(error).splitlines()[0]`` would raise IndexError.
        limit: longest text kept from the line, in characters (tracebacks from compilers and runtimes
            can put a whole graph on one line).
        with_type: prefix the exception's type name ("ValueError: bad shape").

    Returns:
        The first line with text, stripped and cut to ``limit`` characters; when the message has no
        text, the exception's type name (so the reader still learns what failed), without a prefix.
    """
    line = next((text.strip() for text in str(error).splitlines() if text.strip()), "")
    name = type(error).__name__
    if not line:
        return name
    return f"{name}: {line[:limit]}" if with_type else line[:limit]
