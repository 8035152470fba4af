"""The two front ends: shell text → simple commands, before any expansion.

* :func:`from_tokens` groups the tokenizer's output (the fast path for plain
  commands, and the fallback when bashlex rejects valid syntax);
* :class:`Walker` flattens a bashlex AST.

Both produce :class:`Simple` records: words with quotes removed, assignments,
redirections, substitution texts (parsed again by the caller), pipeline
membership and loop/background flags.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import bashlex
import bashlex.errors

from corral.guard.lexer import LexError, Redir, Token, tokenize

_ASSIGN = re.compile(r"^([A-Za-z_]\w*)(?:\[[^\]]*\])?\+?=(.*)\Z", re.S)

# Errors bashlex raises on input it does not support (it has no common base class).
BASHLEX_ERRORS = (
    bashlex.errors.ParsingError,
    NotImplementedError,
    AttributeError,
    IndexError,
    KeyError,
    TypeError,
    ValueError,
    AssertionError,
    RecursionError,
)


class OverBudget(Exception):
    """bashlex ran past its time budget."""


def bashlex_parse(source: str, budget: float) -> list[Any]:
    """``bashlex.parse`` with a deadline, checked from a profile hook on calls/returns.

    A profile hook (not a trace hook) costs ~2x on the 5% of commands that need
    bashlex, and any loop in bashlex makes calls, so the deadline is always seen.
    The previous profiler, if any, is restored.
    """
    deadline = time.perf_counter() + budget
    calls = 0

    def hook(frame: FrameType, event: str, arg: object) -> None:
        nonlocal calls
        calls += 1
        if calls & 63 == 0 and time.perf_counter() > deadline:
            raise OverBudget

    previous: Callable[..., Any] | None = sys.getprofile()
    sys.setprofile(hook)
    try:
        return list(bashlex.parse(source))
    finally:
        sys.setprofile(previous)


@dataclass(slots=True)
class Simple:
    """A simple command before expansion, from either front end."""

    words: list[str]
    assignments: list[str]
    redirects: list[Redir]
    subs: list[str]
    first_word_sub: bool = False  # argv[0] is a substitution: its output runs as a command
    pipes: list[tuple[int, int]] = field(default_factory=list)  # (pipeline id, position)
    background: bool = False
    in_loop: bool = False
    infinite_loop: bool = False


class Ids:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def next(self) -> int:
        self.n += 1
        return self.n


# --- front end 1: tokens ---------------------------------------------------------


def from_tokens(tokens: list[Token], ids: Ids) -> list[Simple]:
    """Group tokens into simple commands. Reserved words are skipped, loops tracked."""
    out: list[Simple] = []
    cur: Simple | None = None
    pipeline: list[Simple] = []
    pid = ids.next()
    pos = 0
    loops: list[bool] = []  # one entry per open do...done, True when infinite
    pending_loop: str | None = None  # "while"/"until"/"for" seen, waiting for do
    pending_infinite = False
    skip_until: str | None = None  # skip words of a for/case header up to this word

    def finish_command() -> None:
        nonlocal cur, pos
        if cur is not None:
            cur.pipes.append((pid, pos))
            cur.in_loop = bool(loops)
            cur.infinite_loop = any(loops)
            out.append(cur)
            pipeline.append(cur)
            cur = None

    def finish_pipeline(background: bool) -> None:
        nonlocal pid, pos
        finish_command()
        if background:
            for s in pipeline:
                s.background = True
        pipeline.clear()
        pid = ids.next()
        pos = 0

    case_depth = 0
    expect_pattern = False  # after "case .. in" or ";;", "word)" is a pattern, not a command
    for tok in tokens:
        if tok.kind == "op":
            if tok.op == ")" and expect_pattern and cur is not None and not cur.redirects:
                cur = None
                expect_pattern = False
                continue
            if tok.op in (";;", ";&", ";;&") and case_depth:
                expect_pattern = True
            if tok.op in ("|", "|&"):
                finish_command()
                pos += 1
            else:
                finish_pipeline(tok.op == "&")
            continue
        if skip_until is not None:
            if tok.kind == "word" and tok.word is not None and tok.word.text == skip_until:
                skip_until = None
                expect_pattern = case_depth > 0 and pending_loop is None
                if pending_loop is not None:
                    loops.append(pending_infinite)
                    pending_loop = None
            continue
        if tok.kind == "redir":
            if cur is None:
                cur = Simple([], [], [], [])
            if tok.redir is not None:
                cur.redirects.append(tok.redir)
                cur.subs.extend(tok.redir.subs)
            continue
        word = tok.word
        if word is None:
            continue
        if cur is None or not cur.words:
            text = word.text
            if cur is None and text in ("while", "until"):
                pending_loop, pending_infinite = text, False
                continue
            if cur is None and text in ("for", "select"):
                pending_loop, pending_infinite, skip_until = text, False, "do"
                continue
            if cur is None and text == "case":
                skip_until = "in"
                case_depth += 1
                continue
            if cur is None and text == "esac":
                case_depth = max(0, case_depth - 1)
                expect_pattern = False
                continue
            if cur is None and text == "do":
                if pending_loop is not None:
                    loops.append(pending_infinite)
                    pending_loop = None
                continue
            if cur is None and text == "done":
                if loops:
                    loops.pop()
                continue
            if cur is None and text in (
                "if", "then", "else", "elif", "fi", "esac", "{", "}", "!", "time", "coproc",
                "function", "in",
            ):  # fmt: skip
                continue
            if cur is None:
                cur = Simple([], [], [], [])
            if not cur.words and _ASSIGN.match(text):
                cur.assignments.append(text)
                cur.subs.extend(word.subs)
                continue
            if (pending_loop == "while" and text in ("true", ":")) or (
                pending_loop == "until" and text == "false"
            ):
                pending_infinite = True
            cur.first_word_sub = bool(word.subs)
        cur.words.append(word.text)
        cur.subs.extend(word.subs)
    finish_pipeline(False)
    return out


# --- front end 2: bashlex ---------------------------------------------------------


class Walker:
    """Turns a bashlex AST into simple commands; substitutions are kept as source text."""

    def __init__(self, text: str, ids: Ids) -> None:
        self.text = text
        self.ids = ids
        self.out: list[Simple] = []

    def sub_text(self, node: bashlex.ast.node) -> str:
        raw = self.text[node.pos[0] : node.pos[1]]
        if raw.startswith(("$(", "<(", ">(")):
            return raw[2:-1]
        if raw.startswith("`"):
            return raw[1:-1]
        return raw

    def literal(self, node: bashlex.ast.node) -> str:
        """The word's text; bashlex does not decode $'\\x41' strings, the tokenizer does."""
        raw = self.text[node.pos[0] : node.pos[1]]
        if "$'" not in raw:
            return str(node.word)
        try:
            tokens = tokenize(raw).tokens
        except LexError:
            return str(node.word)
        if len(tokens) == 1 and tokens[0].word is not None:
            return tokens[0].word.text
        return str(node.word)

    def word_subs(self, node: bashlex.ast.node) -> list[str]:
        found: list[str] = []
        for part in getattr(node, "parts", []) or []:
            if part.kind in ("commandsubstitution", "processsubstitution"):
                found.append(self.sub_text(part))
            else:
                found.extend(self.word_subs(part))
        return found

    def walk(self, node: bashlex.ast.node, loop: tuple[bool, bool]) -> list[Simple]:
        """Walk ``node``; returns the simple commands it produced (also appended to out)."""
        kind = node.kind
        if kind == "command":
            return [self.command(node, loop)]
        made: list[Simple] = []
        if kind == "list":
            prev: list[Simple] = []
            for part in node.parts:
                if part.kind == "operator":
                    if part.op == "&":
                        for s in prev:
                            s.background = True
                    continue
                prev = self.walk(part, loop)
                made.extend(prev)
            return made
        if kind == "pipeline":
            pid = self.ids.next()
            index = 0
            for part in node.parts:
                if part.kind == "pipe":
                    index += 1
                    continue
                for s in self.walk(part, loop):
                    s.pipes.append((pid, index))
                    made.append(s)
            return made
        if kind in ("while", "until", "for"):
            infinite = False
            parts = node.parts
            if kind in ("while", "until"):
                words = _condition_words(parts[1]) if len(parts) > 1 else []
                endless = (["true"], [":"]) if kind == "while" else (["false"],)
                infinite = words in endless
            inner = (True, loop[1] or infinite)
            in_body = False  # the condition and the item list are not the loop body
            for part in parts:
                if part.kind == "reservedword":
                    in_body = in_body or part.word == "do"
                elif part.kind == "word":  # for-loop items may hold substitutions
                    for sub in self.word_subs(part):
                        carrier = Simple([], [], [], [sub], in_loop=loop[0])
                        self.out.append(carrier)
                        made.append(carrier)
                elif part.kind != "operator":
                    made.extend(self.walk(part, inner if in_body else loop))
            return made
        if kind == "compound":
            for part in node.list:
                if part.kind not in ("reservedword", "operator"):
                    made.extend(self.walk(part, loop))
            for redirect in getattr(node, "redirects", []) or []:
                redir = self.redirect(redirect)
                for s in made:
                    s.redirects.append(redir)
            return made
        if kind == "function":
            return self.walk(node.body, loop)
        for part in getattr(node, "parts", []) or []:
            if part.kind not in ("reservedword", "operator", "pipe"):
                made.extend(self.walk(part, loop))
        return made

    def redirect(self, node: bashlex.ast.node) -> Redir:
        out = node.output
        fd = node.input if isinstance(node.input, int) else None
        if isinstance(out, int):
            return Redir(node.type, str(out), fd)
        target = out.word if out is not None else ""
        redir = Redir(node.type, target, fd, subs=self.word_subs(out) if out is not None else [])
        heredoc = getattr(node, "heredoc", None)
        if heredoc is not None:
            value = heredoc.value
            # bashlex keeps the delimiter line at the end of the body.
            redir.body = value.rpartition("\n")[0] if "\n" in value else ""
        return redir

    def command(self, node: bashlex.ast.node, loop: tuple[bool, bool]) -> Simple:
        simple = Simple([], [], [], [], in_loop=loop[0], infinite_loop=loop[1])
        for part in node.parts:
            if part.kind == "assignment" and not simple.words:
                simple.assignments.append(self.literal(part))
                simple.subs.extend(self.word_subs(part))
            elif part.kind in ("word", "assignment"):
                subs = self.word_subs(part)
                if not simple.words and subs:
                    simple.first_word_sub = True
                simple.words.append(self.literal(part))
                simple.subs.extend(subs)
            elif part.kind == "redirect":
                redir = self.redirect(part)
                simple.redirects.append(redir)
                simple.subs.extend(redir.subs)
        self.out.append(simple)
        return simple


def _condition_words(node: bashlex.ast.node) -> list[str]:
    """Words of a loop condition made of one simple command, else []."""
    if node.kind == "list":
        commands = [p for p in node.parts if p.kind != "operator"]
        if len(commands) != 1:
            return []
        node = commands[0]
    if node.kind != "command":
        return []
    return [p.word for p in node.parts if p.kind == "word"]
