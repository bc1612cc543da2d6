"""The ``trtopt`` command's entry point: builds the parser from the command families and maps errors.

User errors (`TrtoptError`) print one line, ``trtopt: error: <problem>; fix: <what to do>``, and exit 2
with no traceback; ``--debug`` shows it. So does a write that fails for lack of space or on a read-only
filesystem, wherever it happens. SIGTERM is handled like Ctrl-C (SIGINT): the work stops, every staging
folder and temporary is removed on the way out, and the exit status is 128 + the signal number. A closed
stdout (``trtopt doctor | head``) ends the command quietly. Logging and progress display are configured
here, never in the library.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence

from trtopt._version import __version__

# One module per command family, each with ``add_commands(sub, common)``; they import their heavy
# libraries inside the commands, so building the parser stays light.
from trtopt.cli import compress, distill, doctor, edge, export, measure, pipeline, prune, qat, quant, trt
from trtopt.cli._common import EXIT_USAGE, JSON_STDOUT
from trtopt.errors import TrtoptError
from trtopt.files import WRITE_ERRNOS, sweep_stale, write_error

TRUST_CODE_HELP = ("load model files that run code they name: pickled modules, .pt2 ExportedPrograms, trtopt model "
                   "files built on a package.module:factory (only for files you trust; see README, Trust and safety)")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors (unknown flag, bad choice, missing argument) are one line, like
    every other user error: ``trtopt: error: trtopt quantize: argument --target: ...; fix: ...``, exit 2.
    argparse's default prints the whole usage block first, which buries the line that matters."""

    def error(self, message: str):  # noqa: D102 (argparse's hook; never returns)
        command = self.prog.removeprefix("trtopt").strip()
        self.exit(EXIT_USAGE, f"trtopt: error: {command + ': ' if command else ''}{message}; fix: see "
                              f"'{self.prog} --help' for the {'flags and their values' if command else 'commands'}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``trtopt`` argument parser: global flags and every command family's subcommands."""
    parser = _Parser(prog="trtopt", description="Make PyTorch models small and fast for NVIDIA "
                                     "inference, and prove it with numbers.")
    parser.add_argument("--version", action="version", version=f"trtopt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    parser.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)
    # The same flags after the subcommand too (``trtopt export ... -q``); SUPPRESS keeps the global value.
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress display")
    common.add_argument("--trust-code", action="store_true", default=argparse.SUPPRESS, help=TRUST_CODE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for module in (export, measure, quant, pipeline, trt, prune, distill, qat, compress, edge, doctor):
        module.add_commands(sub, common)
    return parser


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so it unwinds like Ctrl-C: every ``finally`` and context manager
    (staging folders, temp folders, atomic writes) cleans up before the process exits."""


def _raise_terminated(signum: int, _frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
    raise Terminated(signum)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Route SIGTERM to :class:`Terminated` while a command runs (main thread only; restored afterwards)."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (main() called from a worker thread): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _json_to_stdout(args: argparse.Namespace) -> Iterator[None]:
    """With ``--json -``, standard output carries the JSON alone: the command's other lines go to stderr."""
    if getattr(args, "json", None) != "-":
        yield
        return
    token = JSON_STDOUT.set(sys.stdout)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        JSON_STDOUT.reset(token)


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    with contextlib.suppress(AttributeError, OSError, ValueError):  # stdout replaced by an object without a file
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``trtopt`` command; returns its exit status (2 for a user error, one line on stderr)."""
    args = build_parser().parse_args(argv)
    # trtopt's own warnings show; third-party libraries' (exporters, optimizers) only with --debug.
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("trtopt").setLevel(logging.DEBUG if args.debug else logging.WARNING)
    # Third-party deprecation chatter (torch.jit, exporters) would bury trtopt's one-line messages;
    # route Python warnings into logging and show them only with --debug.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.DEBUG if args.debug else logging.ERROR)
    if not args.debug:
        # torch logs through handlers of its own (``W1130 ... _pytree.py:630] ...`` when transformers or torchao
        # register types): quiet them, before torch is imported (TORCH_LOGS) and after (the logger's level)
        os.environ.setdefault("TORCH_LOGS", "-torch")
        if "torch" in sys.modules:
            logging.getLogger("torch").setLevel(logging.ERROR)
    from trtopt.models.load import trusting_code

    with contextlib.suppress(FileNotFoundError):  # no usable temp folder at all: nothing to sweep there
        sweep_stale(tempfile.gettempdir())  # temp folders of trtopt processes that were killed (SIGKILL) earlier
    try:
        with _sigterm_as_interrupt(), trusting_code(args.trust_code), _json_to_stdout(args):
            status = args.func(args)
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
            return status
    except TrtoptError as e:
        if args.debug:
            raise
        print(f"trtopt: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        signum = e.args[0] if isinstance(e, Terminated) else signal.SIGINT
        print(f"trtopt: interrupted ({signal.Signals(signum).name}); no partial outputs were kept", file=sys.stderr)
        return 128 + signum
    except BrokenPipeError:  # the reader of stdout went away (| head): nothing left to say to it
        _silence_stdout()
        return 128 + signal.SIGPIPE
    except OSError as e:
        if args.debug or e.errno not in WRITE_ERRNOS:
            raise
        print(f"trtopt: error: {write_error(e, e.filename or 'an output')}", file=sys.stderr)
        return EXIT_USAGE

if __name__ == "__main__":
    sys.exit(main())
