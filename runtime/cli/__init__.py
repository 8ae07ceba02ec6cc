"""`zsad-edge`: run a bundle from the command line (no torch needed), a registry of commands.

Each command module has HELP, PARENTS (shared argument groups, common.py), add_arguments(parser)
and run(args, stop) -> exit code. Exit codes: 0 done; 1 done but some images were skipped
(unreadable; listed), or for bench / bench-compare a regression; 2 an error, one `error: ...`
line; 130 / 143 stopped by SIGINT / SIGTERM (runtime/stopping.py: detect and eval write what
they have, calibrate and fit-normal leave the manifest or bank as it was). `zsad-edge build ...`
runs the torch-side commands (export/cli).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import signal
import sys
from typing import Sequence

from ..errors import ZsadEdgeError
from ..station.credentials import MaskingFilter, masked
from ..stopping import Stopped, StopRequest
from . import (
    bench,
    bench_compare,
    calibrate,
    detect,
    evaluate,
    fit_normal,
    info,
    keygen,
    serve,
    sign,
    triton_repo,
    watch,
)
from .common import EXIT_ERROR, HelpWithDefaults, apply_trusted_keys
from .detect import run_detect

COMMANDS = {
    "detect": detect,
    "watch": watch,
    "eval": evaluate,
    "calibrate": calibrate,
    "fit-normal": fit_normal,
    "info": info,
    "bench": bench,
    "bench-compare": bench_compare,
    "serve": serve,
    "triton-repo": triton_repo,
    "keygen": keygen,
    "sign": sign,
}

__all__ = ["COMMANDS", "main", "run_detect"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zsad-edge", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {product_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        command = sub.add_parser(
            name,
            help=module.HELP,
            description=module.__doc__,
            parents=module.PARENTS,
            formatter_class=HelpWithDefaults,
        )
        module.add_arguments(command)
    sub.add_parser(
        "build",
        help="build bundles, variants, engines; train heads (torch side: zsad-edge[export]); "
        "see `zsad-edge build --help`",
    )
    return parser


def product_version() -> str:
    try:
        return importlib.metadata.version("zsad-edge")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["build"]:
        return _build(argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(MaskingFilter())
    try:
        apply_trusted_keys(args)
        with StopRequest() as stop:
            return COMMANDS[args.command].run(args, stop)
    except Stopped as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except ZsadEdgeError as exc:
        print(f"error: {masked(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except PermissionError as exc:  # anything a check before it did not name: still one line
        print(
            f"error: permission denied: {exc.filename}; give the user running zsad-edge access to it",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except KeyboardInterrupt:  # a second signal: stop at once, still one line
        print("stopped at once by a second signal; the image in hand was dropped", file=sys.stderr)
        return 128 + signal.SIGINT


def _build(argv: list[str]) -> int:
    """`zsad-edge build ...`: the torch-side commands (export/cli), imported only here."""
    try:
        from zsad_edge.export.cli import main as build_main
    except ImportError as exc:
        print(
            f"error: `zsad-edge build` needs the torch side ({exc.name} missing): pip install 'zsad-edge[export]'",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return build_main(argv, prog="zsad-edge build")
