"""The parser's output: a flat list of typed records the matchers read.

A shell command becomes one :class:`Invocation` per program that would run,
wherever it hides (pipeline, subshell, substitution, ``bash -c`` string, decoded
payload, wrapper such as ``sudo``), plus the :class:`Source` texts it was read
from (for rules that look at raw text, like fork bombs or stratum URLs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class ParseMode(StrEnum):
    """How the command was read, from most to least exact."""

    FAST = "fast"  # plain words, pipes, lists and redirections; tokenizer == AST
    BASHLEX = "bashlex"
    FALLBACK = "fallback"  # bashlex failed; the conservative tokenizer read it
    UNPARSABLE = "unparsable"


@dataclass(frozen=True, slots=True)
class Redirect:
    """One redirection. ``target`` is a path, an fd number for ``>&1``, or here-string text."""

    op: str
    target: str
    fd: int | None = None
    body: str | None = None  # here-doc body

    @property
    def is_fd_dup(self) -> bool:
        return self.op in (">&", "<&") and (self.target.isdigit() or self.target == "-")

    @property
    def writes(self) -> bool:
        return self.op in (">", ">>", ">|", "&>", "&>>", "<>") or (
            self.op == ">&" and not self.is_fd_dup
        )

    @property
    def reads(self) -> bool:
        return self.op in ("<", "<>") or (self.op == "<&" and not self.is_fd_dup)


@dataclass(frozen=True, slots=True)
class Invocation:
    """One program that would run, as literal as static analysis allows.

    ``context`` says where it was found ("command", "bash -c payload",
    "decoded base64 piped into sh", "via sudo", ...). ``upstream`` and
    ``downstream`` are the program names before and after it in its pipeline.
    ``script`` is inline interpreter code (``python -c``, ``perl -e``, awk
    program, here-doc fed to an interpreter).
    """

    argv: tuple[str, ...]
    redirects: tuple[Redirect, ...] = ()
    assignments: tuple[str, ...] = ()
    context: str = "command"
    upstream: frozenset[str] = frozenset()
    downstream: frozenset[str] = frozenset()
    background: bool = False
    in_loop: bool = False
    infinite_loop: bool = False
    script: str | None = None

    @property
    def program(self) -> str:
        """Basename of argv[0], so ``/tmp/.x/xmrig`` is still ``xmrig``; '' for bare assignments."""
        return self.argv[0].rpartition("/")[2] if self.argv else ""


@dataclass(frozen=True, slots=True)
class Source:
    """A text the guard read: the command itself or a payload found inside it."""

    text: str
    context: str


@dataclass(frozen=True, slots=True)
class ParsedCommand:
    invocations: tuple[Invocation, ...]
    sources: tuple[Source, ...]
    mode: ParseMode
    # Why the command (or a nested payload) could not be read; None when it could.
    unparsable: str | None = None
    notes: tuple[str, ...] = field(default=())
