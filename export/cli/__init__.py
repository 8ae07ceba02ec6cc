"""The torch-side command line, a registry of commands sharing argument groups (arguments.py).

`python export/build_engines.py [COMMAND] ...` and `zsad-edge build [COMMAND] ...` run the same
commands; without a command name the default, `build`, runs. Each command module has HELP,
add_arguments(parser) and run(args) -> exit code; errors meant for the user print one line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from zsad_edge.runtime.cli.common import HelpWithDefaults
from zsad_edge.runtime.errors import ZsadEdgeError

from . import build, demo, engines, train_heads, variants
from .arguments import configure_logging, verbosity

COMMANDS = {"build": build, "add-precision": variants, "engines": engines, "demo": demo, "train-heads": train_heads}
DEFAULT_COMMAND = "build"


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        command = sub.add_parser(
            name,
            help=module.HELP,
            description=module.__doc__,
            parents=[verbosity()],
            formatter_class=HelpWithDefaults,
        )
        module.add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "build_engines.py") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, DEFAULT_COMMAND)
    args = _parser(prog).parse_args(argv)
    configure_logging(args.verbose)
    try:
        return COMMANDS[args.command].run(args)
    except ZsadEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
