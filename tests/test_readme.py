"""The user docs stay true to the tool: every `beit-deploy ...` command line in the code blocks of README.md and
docs/*.md names a real command and real options of it, and every relative link points to an existing file (and,
with a #fragment, to a heading of it)."""

import re
from pathlib import Path

import pytest

from beit_deploy.cli import main

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def user_docs() -> list[Path]:
    """README.md, then the docs/*.md in the order of its "Where to go next" table (the reading order), then any
    other."""
    readme = (ROOT / "README.md").read_text()
    linked = [ROOT / target.partition("#")[0] for target in LINK.findall(readme[readme.find("## Where to go next"):])
              if target.startswith("docs/") and target.partition("#")[0].endswith(".md")]
    ordered = list(dict.fromkeys(path for path in linked if path.exists()))
    return [ROOT / "README.md", *ordered, *sorted(set((ROOT / "docs").glob("*.md")) - set(ordered))]


DOCS = user_docs()


def code_lines(doc: Path) -> list[str]:
    lines, inside = [], False
    for line in doc.read_text().replace("\\\n", " ").splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line.strip().removeprefix("$ "))
    return lines


def doc_commands() -> list[tuple[str, list[str]]]:
    return [(doc.relative_to(ROOT).as_posix(), line.split("#")[0].split())
            for doc in DOCS for line in code_lines(doc) if line.startswith("beit-deploy ")]


def anchors(doc: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def doc_links() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        out += [(doc.relative_to(ROOT).as_posix(), target) for target in LINK.findall(text)
                if not re.match(r"[a-z]+:", target)]
    return out


def test_the_docs_show_commands():
    assert len(doc_commands()) >= 40
    assert sum(doc == "README.md" for doc, _ in doc_commands()) >= 8


@pytest.mark.parametrize("doc,argv", doc_commands(), ids=lambda v: v if isinstance(v, str) else " ".join(v[:2]))
def test_documented_command_is_real(doc, argv):
    command = main.commands.get(argv[1])
    assert command is not None, f"{doc}: no command {argv[1]!r}"
    # an old spelling (a hidden alias) still works, but the docs show the current name
    known = {opt for param in command.params for opt in getattr(param, "opts", [])
             if opt not in getattr(param, "aliases", ())}
    for token in argv[2:]:
        option = token.strip("[]").split("=")[0]
        if option.startswith("-") and not re.fullmatch(r"-?\d+(\.\d+)?", option):
            assert option in known, f"{doc}: {argv[1]} has no option {option}"


def test_the_docs_have_links():
    assert any(doc == "README.md" for doc, _ in doc_links())


@pytest.mark.parametrize("doc,target", doc_links())
def test_relative_link_exists(doc, target):
    path, _, fragment = target.partition("#")
    file = (ROOT / doc).parent / path if path else ROOT / doc
    assert file.exists(), f"{doc}: link to missing {path}"
    if fragment and file.suffix == ".md":
        assert fragment in anchors(file), f"{doc}: no heading #{fragment} in {path or doc}"
