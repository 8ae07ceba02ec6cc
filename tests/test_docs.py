"""Every command the README and docs/ show parses with the real command line: subcommands, flags,
choices and argument counts, so the docs cannot drift from `--help`. Paths and weights in them are
examples; nothing is run."""

import contextlib
import io
import re
import shlex

import pytest
from helpers import REPO_ROOT
from needs import require_torch_side

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
BUILD_SCRIPT = "export/build_engines.py"


def _shell_commands(text: str) -> list[str]:
    """The commands in the page's bash blocks, continuation lines joined, split at && ; |."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            command: list[str] = []
            for word in [*words, ";"]:
                if word in ("&&", ";", "|", "||"):
                    if command:
                        commands.append(command)
                    command = []
                else:
                    command.append(word)
    return commands


def _product_argv(words: list[str]) -> tuple[str, list[str]] | None:
    """("zsad-edge" | "build", argv) for a command of the product, else None."""
    if words[0] == "zsad-edge":
        return ("build", words[2:]) if words[1:2] == ["build"] else ("zsad-edge", words[1:])
    if words[0] == "python" and len(words) > 1 and words[1].endswith(BUILD_SCRIPT):
        return "build", words[2:]
    return None


def _documented():
    for page in PAGES:
        for words in _shell_commands(page.read_text(encoding="utf-8")):
            argv = _product_argv(words)
            if argv:
                yield pytest.param(*argv, id=f"{page.name}: {' '.join(words)[:80]}")


@pytest.mark.parametrize("program, argv", list(_documented()))
def test_documented_commands_parse(program, argv):
    if program == "build":
        require_torch_side()  # the build command line lives on the torch side
        from zsad_edge.export.cli import COMMANDS, DEFAULT_COMMAND, _parser

        parser = _parser("build_engines.py")
        argv = argv if argv[:1] and (argv[0] in COMMANDS or argv[0].startswith("--help")) else [DEFAULT_COMMAND, *argv]
    else:
        from zsad_edge.runtime.cli import _parser

        parser = _parser()
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(argv)
        except SystemExit as stop:
            assert stop.code == 0, errors.getvalue().strip().splitlines()[-1]


@pytest.mark.torch_side
def test_the_docs_show_every_command_of_both_command_lines():
    from zsad_edge.export.cli import COMMANDS as BUILD_COMMANDS
    from zsad_edge.runtime.cli import COMMANDS

    shown = {(program, argv[0] if argv else "") for program, argv in (p.values for p in _documented())}
    missing = {name for name in COMMANDS if ("zsad-edge", name) not in shown}
    missing |= {name for name in BUILD_COMMANDS if name != "build" and ("build", name) not in shown}
    assert not missing, f"no page shows: {sorted(missing)}"
