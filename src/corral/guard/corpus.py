"""Reading command corpora: the shipped benign corpus and labelled test corpora.

Format: one command per line; blank lines and ``#`` comments are skipped; a
multi-line command (a here-doc) sits between two lines holding only ``%%``.
A labelled corpus prefixes each command with ``category: ``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

BLOCK = "%%"


def parse_corpus(text: str) -> list[str]:
    commands: list[str] = []
    block: list[str] | None = None
    for line in text.splitlines():
        if line.strip() == BLOCK:
            if block is None:
                block = []
            else:
                commands.append("\n".join(block))
                block = None
            continue
        if block is not None:
            block.append(line)
        elif line.strip() and not line.lstrip().startswith("#"):
            commands.append(line)
    if block is not None:
        raise ValueError("unterminated %% block in corpus")
    return commands


def parse_labelled(text: str) -> list[tuple[str, str]]:
    """``category: command`` lines → (category, command) pairs."""
    out = []
    for entry in parse_corpus(text):
        label, sep, command = entry.partition(": ")
        if not sep or not label.replace("_", "").isalpha():
            raise ValueError(f"corpus entry without a 'category: ' label: {entry[:60]!r}")
        out.append((label, command))
    return out


def benign_commands() -> list[str]:
    """The shipped benign corpus (ordinary developer commands)."""
    text = (resources.files("corral.guard") / "data" / "benign_commands.txt").read_text("utf-8")
    return parse_corpus(text)


def read_corpus(path: str | Path) -> list[str]:
    return parse_corpus(Path(path).read_text(encoding="utf-8"))
