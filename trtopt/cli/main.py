"""The ``trtopt`` command's entry point: builds the parser from the command families and maps errors.

User errors (`TrtoptError`) print one line, ``trtopt: error: <problem>; fix: <what to do>``, and exit 2
with no traceback; ``--debug`` shows it. Logging and progress display are configured here, never in the
library.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from trtopt._version import __version__
from trtopt.errors import TrtoptError
# One module per command family, each with ``add_commands(sub, common)``; they import their heavy
# libraries inside the commands, so building the parser stays light.
from trtopt.cli import compress, distill, doctor, edge, export, measure, pipeline, prune, quant, trt
from trtopt.cli._common import EXIT_USAGE



TRUST_CODE_HELP = ("load model files that run code they name: pickled modules, .pt2 ExportedPrograms, trtopt model "
                   "files built on a package.module:factory (only for files you trust; see README, Trust and safety)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trtopt", description="Make PyTorch models small and fast for NVIDIA "
                                     "inference, and prove it with numbers.")
    parser.add_argument("--version", action="version", version=f"trtopt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    parser.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)
    # The same flags after the subcommand too (``trtopt export ... -q``); SUPPRESS keeps the global value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress display")
    common.add_argument("--trust-code", action="store_true", default=argparse.SUPPRESS, help=TRUST_CODE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for module in (export, measure, quant, pipeline, trt, prune, distill, compress, edge, doctor):
        module.add_commands(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # trtopt's own warnings show; third-party libraries' (exporters, optimizers) only with --debug.
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("trtopt").setLevel(logging.DEBUG if args.debug else logging.WARNING)
    # Third-party deprecation chatter (torch.jit, exporters) would bury trtopt's one-line messages;
    # route Python warnings into logging and show them only with --debug.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.DEBUG if args.debug else logging.ERROR)
    from trtopt.models.load import trusting_code

    try:
        with trusting_code(args.trust_code):
            return args.func(args)
    except TrtoptError as e:
        if args.debug:
            raise
        print(f"trtopt: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("trtopt: interrupted; no partial outputs were kept", file=sys.stderr)
        return 130

if __name__ == "__main__":
    sys.exit(main())
