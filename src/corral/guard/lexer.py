"""A small shell tokenizer: the fast path for plain commands and the fallback when bashlex fails.

bashlex is the reference parser, but it costs ~250 µs a command and rejects valid
syntax (``[[ ]]``, ``case``, ``$((..))``, arrays, ``time``). This tokenizer knows
quoting, operators, redirections, here-docs and substitutions well enough to split
any command into simple commands. :func:`tokenize` reports whether the text used
anything beyond words, pipes, lists, redirections and flat substitutions such as
``$(date)`` (``simple``); only then is its result used instead of bashlex, because
for that subset the AST is the token list.

Substitutions (``$(..)``, backticks, ``<(..)``, ``>(..)``) are returned as raw text
so the caller can parse them recursively with the full parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Words the shell treats as syntax at command position; any of them means "not simple".
RESERVED = frozenset(
    {
        "if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done",
        "case", "esac", "select", "function", "time", "coproc", "{", "}", "!", "[[", "]]",
    }
)  # fmt: skip

_PLAIN = re.compile(r"[^\s'\"\\|&;<>()`$]+")
_BLANK = re.compile(r"[ \t\r\f\v]+")
_REDIR = re.compile(r"(\d*)(&>>|&>|>>|>&|>\||<<<|<<-|<<|<&|<>|>|<)")
_CONTROL = re.compile(r";;&|;;|;&|&&|\|\||\|&|[|&;()\n]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[[^\]]*\])?\+?=")
_ANSI_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|u[0-9a-fA-F]{4}|.)", re.S)
_ANSI_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b",
                "f": "\f", "v": "\v", "\\": "\\", "'": "'", '"': '"', "?": "?"}  # fmt: skip


class LexError(ValueError):
    """The text cannot be tokenized (an unterminated quote or substitution)."""


@dataclass(slots=True)
class Word:
    """One shell word: its literal text with quotes removed, and substitutions inside it."""

    text: str
    subs: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Redir:
    op: str
    target: str
    fd: int | None = None
    body: str | None = None  # here-doc text (here-strings keep theirs in target)
    subs: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Token:
    kind: str  # "word", "redir", "op"
    word: Word | None = None
    redir: Redir | None = None
    op: str = ""


@dataclass(slots=True)
class Tokens:
    tokens: list[Token]
    simple: bool  # only words, pipes, lists and redirections: bashlex is not needed


def decode_ansi_c(body: str) -> str:
    """Decode the inside of ``$'...'`` (``\\x41``, ``\\101``, ``\\n`` ...)."""

    def sub(m: re.Match[str]) -> str:
        esc = m.group(1)
        if esc[0] in "xu" and len(esc) > 1:
            return chr(int(esc[1:], 16))
        if esc[0] in "01234567":
            return chr(int(esc, 8) & 0xFF)
        return _ANSI_SIMPLE.get(esc, "\\" + esc)

    return _ANSI_ESCAPE.sub(sub, body)


def _balanced(text: str, pos: int, open_ch: str, close_ch: str) -> int:
    """Index just past the ``close_ch`` matching an already-consumed ``open_ch``."""
    depth = 1
    n = len(text)
    while pos < n:
        c = text[pos]
        if c == "\\":
            pos += 2
            continue
        if c == "'" and open_ch == "(":
            end = text.find("'", pos + 1)
            if end < 0:
                raise LexError("unterminated single quote inside substitution")
            pos = end + 1
            continue
        if c == '"' and open_ch == "(":
            pos = _skip_double(text, pos + 1)
            continue
        if c == open_ch:
            depth += 1
        elif c == close_ch:
            depth -= 1
            if depth == 0:
                return pos + 1
        pos += 1
    raise LexError(f"unterminated {open_ch!r}")


def _skip_double(text: str, pos: int) -> int:
    """Index just past the closing double quote, starting inside the quotes."""
    n = len(text)
    while pos < n:
        c = text[pos]
        if c == "\\":
            pos += 2
            continue
        if c == '"':
            return pos + 1
        if c == "$" and text.startswith("$(", pos):
            pos = _balanced(text, pos + 2, "(", ")")
            continue
        if c == "`":
            end = _backtick_end(text, pos + 1)
            pos = end
            continue
        pos += 1
    raise LexError("unterminated double quote")


def _backtick_end(text: str, pos: int) -> int:
    n = len(text)
    while pos < n:
        c = text[pos]
        if c == "\\":
            pos += 2
            continue
        if c == "`":
            return pos + 1
        pos += 1
    raise LexError("unterminated backquote")


def _dollar(text: str, pos: int, out: list[str], subs: list[str]) -> int:
    """Scan a ``$`` construct at ``pos``; returns the position after it."""
    nxt = text[pos + 1 : pos + 2]
    if text.startswith("$((", pos):
        # Arithmetic; it can still hold a command substitution.
        end = _balanced(text, pos + 2, "(", ")")
        inner = text[pos + 3 : end - 2]
        if "$(" in inner or "`" in inner:
            subs.extend(_inner_subs(inner))
        out.append(text[pos:end])
        return end
    if nxt == "(":
        end = _balanced(text, pos + 2, "(", ")")
        subs.append(text[pos + 2 : end - 1])
        out.append(text[pos:end])
        return end
    if nxt == "{":
        end = _balanced(text, pos + 2, "{", "}")
        inner = text[pos + 2 : end - 1]
        # ${x:-$(cmd)} still runs cmd.
        if "$(" in inner or "`" in inner:
            subs.extend(_inner_subs(inner))
        out.append(text[pos:end])
        return end
    if nxt == "'":
        end = pos + 2
        n = len(text)
        while end < n and text[end] != "'":
            end += 2 if text[end] == "\\" else 1
        if end >= n:
            raise LexError("unterminated $'...' string")
        out.append(decode_ansi_c(text[pos + 2 : end]))
        return end + 1
    m = _NAME.match(text, pos + 1)
    if m:
        out.append(text[pos : m.end()])
        return m.end()
    out.append("$")
    return pos + 1


def _inner_subs(text: str) -> list[str]:
    """Substitutions inside a text fragment such as the body of ``${x:-$(cmd)}``."""
    subs: list[str] = []
    pos = 0
    while True:
        i = text.find("$(", pos)
        j = text.find("`", pos)
        if i < 0 and j < 0:
            return subs
        if i >= 0 and (j < 0 or i < j):
            end = _balanced(text, i + 2, "(", ")")
            subs.append(text[i + 2 : end - 1])
        else:
            end = _backtick_end(text, j + 1)
            subs.append(text[j + 1 : end - 1])
        pos = end


def _scan_word(text: str, pos: int) -> tuple[int, Word]:
    out: list[str] = []
    subs: list[str] = []
    n = len(text)
    while pos < n:
        c = text[pos]
        m = _PLAIN.match(text, pos)
        if m:
            out.append(m.group())
            pos = m.end()
            continue
        if c == "'":
            end = text.find("'", pos + 1)
            if end < 0:
                raise LexError("unterminated single quote")
            out.append(text[pos + 1 : end])
            pos = end + 1
        elif c == '"':
            pos = _scan_double(text, pos + 1, out, subs)
        elif c == "\\":
            if pos + 1 < n and text[pos + 1] != "\n":
                out.append(text[pos + 1])
            pos += 2
        elif c == "`":
            end = _backtick_end(text, pos + 1)
            subs.append(text[pos + 1 : end - 1])
            out.append(text[pos:end])
            pos = end
        elif c == "$":
            pos = _dollar(text, pos, out, subs)
        elif c in "<>" and text.startswith("(", pos + 1):
            end = _balanced(text, pos + 2, "(", ")")
            subs.append(text[pos + 2 : end - 1])
            out.append(text[pos:end])
            pos = end
        else:
            break
    return pos, Word("".join(out), subs)


def _scan_double(text: str, pos: int, out: list[str], subs: list[str]) -> int:
    buf: list[str] = []
    n = len(text)
    while pos < n:
        c = text[pos]
        if c == '"':
            out.append("".join(buf))
            return pos + 1
        if c == "\\":
            nxt = text[pos + 1 : pos + 2]
            if nxt in ('"', "\\", "$", "`"):
                buf.append(nxt)
            elif nxt != "\n":
                buf.append("\\" + nxt)
            pos += 2
        elif c == "$":
            if text.startswith("$'", pos):  # not special inside double quotes
                buf.append("$")
                pos += 1
            else:
                pos = _dollar(text, pos, buf, subs)
        elif c == "`":
            end = _backtick_end(text, pos + 1)
            subs.append(text[pos + 1 : end - 1])
            buf.append(text[pos:end])
            pos = end
        else:
            buf.append(c)
            pos += 1
    raise LexError("unterminated double quote")


def _read_heredocs(text: str, pos: int, pending: list[Redir]) -> int:
    """Fill here-doc bodies from the lines after ``pos`` (just past a newline)."""
    for redir in pending:
        delim = redir.target
        lines: list[str] = []
        while pos < len(text):
            nl = text.find("\n", pos)
            line = text[pos:] if nl < 0 else text[pos:nl]
            pos = len(text) if nl < 0 else nl + 1
            check = line.lstrip("\t") if redir.op == "<<-" else line
            if check == delim:
                break
            lines.append(line)
        # An unterminated here-doc runs to end of input (bash only warns), so no error.
        redir.body = "\n".join(lines)
    pending.clear()
    return pos


def _flat(subs: list[str]) -> bool:
    """Substitutions simple enough that this tokenizer's cut is certainly bash's.

    Their text is parsed again on its own either way; bashlex is only needed when a
    ``)`` inside (a case pattern, a subshell) could end the substitution early.
    """
    return all(not any(ch in sub for ch in "()`") and "case" not in sub for sub in subs)


def tokenize(text: str) -> Tokens:
    """Split ``text`` into words, redirections and control operators.

    Raises :class:`LexError` when quotes or substitutions are unterminated.
    """
    tokens: list[Token] = []
    pending: list[Redir] = []
    simple = True
    at_command = True
    pos = 0
    n = len(text)
    while pos < n:
        m = _BLANK.match(text, pos)
        if m:
            pos = m.end()
            continue
        c = text[pos]
        if c == "\\" and text.startswith("\\\n", pos):
            pos += 2
            continue
        if c == "#":
            nl = text.find("\n", pos)
            pos = n if nl < 0 else nl
            continue
        if c in "<>" and text.startswith("(", pos + 1):
            pos, word = _scan_word(text, pos)
            simple = simple and _flat(word.subs)
            tokens.append(Token("word", word=word))
            at_command = False
            continue
        m = _REDIR.match(text, pos)
        if m and (c in "<>&" or m.group(1)):
            fd = int(m.group(1)) if m.group(1) else None
            op = m.group(2)
            pos = m.end()
            m2 = _BLANK.match(text, pos)
            if m2:
                pos = m2.end()
            if pos >= n or text[pos] in "|&;<>()\n":
                raise LexError(f"redirection {op!r} without a target")
            pos, word = _scan_word(text, pos)
            redir = Redir(op, word.text, fd, subs=word.subs)
            if op in ("<<", "<<-"):
                pending.append(redir)
            if word.subs:
                simple = simple and _flat(word.subs)
            tokens.append(Token("redir", redir=redir))
            continue
        m = _CONTROL.match(text, pos)
        if m:
            op = m.group()
            pos = m.end()
            if op == "\n":
                if pending:
                    pos = _read_heredocs(text, pos, pending)
                op = ";"
            elif op in ("(", ")", ";;", ";&", ";;&"):
                simple = False
            tokens.append(Token("op", op=op))
            at_command = True
            continue
        start = pos
        pos, word = _scan_word(text, pos)
        if pos == start:  # a lone character no rule consumed; keep it as a word
            word = Word(text[pos])
            pos += 1
        if word.subs and not _flat(word.subs):
            simple = False
        if at_command and word.text in RESERVED and text[start] not in "'\"\\":
            simple = False
        if "$((" in word.text or (
            at_command and _ASSIGN.match(word.text) and text.startswith("(", pos)
        ):
            simple = False
        if at_command and _ASSIGN.match(word.text) and text.startswith("(", pos):
            # arr=(a b c): keep the array as one literal word.
            end = _balanced(text, pos + 1, "(", ")")
            word = Word(word.text + text[pos:end])
            pos = end
        tokens.append(Token("word", word=word))
        if at_command and not _ASSIGN.match(word.text):
            at_command = False
    return Tokens(tokens, simple)
