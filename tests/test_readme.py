"""Every `beit-deploy ...` command line in the README names a real command and real options of it."""

import re
from pathlib import Path

import pytest

from beit_deploy.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_commands() -> list[list[str]]:
    lines, inside = [], False
    for line in README.read_text().replace("\\\n", " ").splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line.strip().removeprefix("$ "))
    return [line.split("#")[0].split() for line in lines if line.startswith("beit-deploy ")]


def test_the_readme_shows_commands():
    assert len(readme_commands()) >= 10


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda argv: " ".join(argv[:2]))
def test_readme_command_is_real(argv):
    command = main.commands.get(argv[1])
    assert command is not None, f"no command {argv[1]!r}"
    # an old spelling (cli.common.Option's hidden alias) still works, but the README shows the current name
    known = {opt for param in command.params for opt in getattr(param, "opts", [])
             if opt not in getattr(param, "aliases", ())}
    for token in argv[2:]:
        option = token.strip("[]").split("=")[0]
        if option.startswith("-") and not re.fullmatch(r"-?\d+(\.\d+)?", option):
            assert option in known, f"{argv[1]} has no option {option}"
