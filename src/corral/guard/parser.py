"""Shell command → flat list of :class:`Invocation` records.

Three front ends feed one builder:

* the fast tokenizer, for plain commands (words, pipes, lists, redirections),
  where the bashlex AST would be the token list anyway;
* bashlex, for everything else (subshells, loops, functions, substitutions,
  here-docs);
* the conservative tokenizer again, when bashlex rejects valid syntax
  (``[[ ]]``, ``case``, arrays, ``time``); the result is marked ``fallback``.

The builder then follows what would run: ``VAR=value`` indirection, wrappers
(``sudo``, ``env``, ``timeout``, ``xargs``, ...), ``bash -c``/``eval``/``ssh host
cmd`` strings, interpreter payloads (``python -c``, ``perl -e``, ...), here-docs
and literals piped into shells, and base64/hex decoding done in the pipeline.
Anything it cannot read is reported in ``ParsedCommand.unparsable``; the engine
turns that into the policy's verdict, never into a silent allow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from corral.guard import wrappers
from corral.guard.decoders import decode_base64, decode_hex, translate
from corral.guard.frontends import (
    BASHLEX_ERRORS,
    Ids,
    OverBudget,
    Simple,
    Walker,
    bashlex_parse,
    from_tokens,
)
from corral.guard.invocation import Invocation, ParsedCommand, ParseMode, Redirect, Source
from corral.guard.lexer import LexError, decode_ansi_c, tokenize

MAX_DEPTH = 8  # nested payloads (bash -c inside eval inside ...) beyond this are unparsable
MAX_LENGTH = 64 * 1024  # longer commands are refused as unparsable rather than scanned slowly
# bashlex loops forever on some inputs; past this budget the tokenizer's reading is used.
BASHLEX_BUDGET = 0.5

_VAR = re.compile(r"\$(?:\{([A-Za-z_]\w*)\}|([A-Za-z_]\w*))")
_ASSIGN = re.compile(r"^([A-Za-z_]\w*)(?:\[[^\]]*\])?\+?=(.*)\Z", re.S)
# ${IFS}/$IFS separate words (cat${IFS}/etc/shadow); $1..$9/$@/$* are empty in -c strings.
_IFS = re.compile(r"\$\{IFS[^}]*\}|\$IFS\b")
_EMPTY_PARAM = re.compile(r"\$(?:[1-9@*]|\{[1-9@*]\})")
_SCRIPT_EXT = (".sh", ".bash", ".zsh", ".ksh")
_QUOTED_DELIM = re.compile(r"<<(-?)[ \t]*(['\"])([\w.-]+)\2")
_NAME_ONLY = re.compile(r"[A-Za-z_]\w*")
_DECLARERS = frozenset({"export", "declare", "typeset", "local", "readonly"})


@dataclass(frozen=True, slots=True)
class _RunContext:
    """How an invocation runs, shared by a command and what it wraps (sudo X, bash -c X)."""

    redirects: tuple[Redirect, ...] = ()
    assignments: tuple[str, ...] = ()
    upstream: frozenset[str] = frozenset()
    downstream: frozenset[str] = frozenset()
    background: bool = False
    in_loop: bool = False
    infinite_loop: bool = False

    @property
    def outer(self) -> tuple[bool, bool, bool]:
        return (self.background, self.in_loop, self.infinite_loop)


@dataclass(slots=True)
class _Expanded:
    simple: Simple
    argv: list[str]
    assignments: list[str]
    redirects: list[Redirect]
    programs: frozenset[str]
    stdin: tuple[str, str] | None = None  # (label, literal text) flowing in from the pipeline
    stdout: tuple[str, str] | None = None
    up: frozenset[str] = frozenset()  # programs before it in its pipelines
    down: frozenset[str] = frozenset()  # programs after it (or a shell reading its output)


# --- the builder ------------------------------------------------------------------


def _subst(text: str, env: dict[str, str]) -> str:
    if "$" not in text or not env:
        return text
    return _VAR.sub(lambda m: env.get(m.group(1) or m.group(2), m.group(0)), text)


class Parser:
    """Parses one command. Use :func:`parse_command`; instances are single-use."""

    def __init__(self, max_depth: int = MAX_DEPTH, *, fast_path: bool = True) -> None:
        self.max_depth = max_depth
        self.fast_path = fast_path  # False forces bashlex (tests compare the two)
        self.invocations: list[Invocation] = []
        self.sources: list[Source] = []
        self.modes: set[ParseMode] = set()
        self.unparsable: list[str] = []
        self.notes: list[str] = []
        self.ids = Ids()
        # Files this command writes with known content, and copies of programs under new
        # names: `echo x > /tmp/a; sh /tmp/a` and `cp /usr/bin/ssh s; ./s -R ..` are read.
        self.files: dict[str, tuple[str, str]] = {}
        self.copies: dict[str, str] = {}

    # entry ------------------------------------------------------------------

    def parse(self, text: str) -> ParsedCommand:
        if len(text) > MAX_LENGTH:
            self.unparsable.append(f"command longer than {MAX_LENGTH} characters")
        else:
            self.script(text, "command", 0, frozenset(), {}, feeds_shell=False)
        if self.unparsable:
            mode = ParseMode.UNPARSABLE
        elif ParseMode.FALLBACK in self.modes:
            mode = ParseMode.FALLBACK
        elif ParseMode.BASHLEX in self.modes:
            mode = ParseMode.BASHLEX
        else:
            mode = ParseMode.FAST
        return ParsedCommand(
            tuple(self.invocations),
            tuple(self.sources),
            mode,
            "; ".join(self.unparsable) if self.unparsable else None,
            tuple(self.notes),
        )

    def script(
        self,
        text: str,
        context: str,
        depth: int,
        extra_down: frozenset[str],
        env: dict[str, str],
        *,
        feeds_shell: bool,
        outer: tuple[bool, bool, bool] = (False, False, False),
    ) -> None:
        """Parse shell source ``text`` found in ``context`` and record what it runs.

        ``outer`` is (background, in_loop, infinite_loop) of the command that runs
        this text, so ``for ..; do bash -c "..."; done`` still counts as a loop.
        """
        if depth > self.max_depth:
            self.unparsable.append(f"payloads nested deeper than {self.max_depth} levels")
            return
        self.sources.append(Source(text, context))
        if not text.strip():
            return
        simples = self.front_end(text, context)
        if simples is None:
            return
        if any(outer):
            for simple in simples:
                simple.background = simple.background or outer[0]
                simple.in_loop = simple.in_loop or outer[1]
                simple.infinite_loop = simple.infinite_loop or outer[2]
        self.build(simples, context, depth, extra_down, env, feeds_shell=feeds_shell)

    def front_end(self, text: str, context: str) -> list[Simple] | None:
        try:
            lexed = tokenize(text)
        except LexError as exc:
            # Unterminated quotes or substitutions: bash would refuse it too, and bashlex
            # can loop forever on such input, so it is not consulted.
            self.unparsable.append(f"{context}: {exc}")
            return None
        tokens = lexed.tokens
        if lexed.simple and self.fast_path:
            self.modes.add(ParseMode.FAST)
            return from_tokens(tokens, self.ids)
        source = text
        if "<<" in text:
            # bashlex rejects quoted delimiters (<<'EOF') and wants a final newline.
            source = _QUOTED_DELIM.sub(r"<<\1\3", text)
            if not source.endswith("\n"):
                source += "\n"
        try:
            trees = bashlex_parse(source, BASHLEX_BUDGET)
        except BASHLEX_ERRORS:
            self.modes.add(ParseMode.FALLBACK)
            return from_tokens(tokens, self.ids)
        except OverBudget:
            self.modes.add(ParseMode.FALLBACK)
            self.notes.append(f"{context}: bashlex exceeded {BASHLEX_BUDGET}s; tokenizer used")
            return from_tokens(tokens, self.ids)
        self.modes.add(ParseMode.BASHLEX)
        walker = Walker(source, self.ids)
        for tree in trees:
            walker.walk(tree, (False, False))
        return walker.out

    # building ---------------------------------------------------------------

    def build(
        self,
        simples: list[Simple],
        context: str,
        depth: int,
        extra_down: frozenset[str],
        env: dict[str, str],
        *,
        feeds_shell: bool,
    ) -> None:
        expanded: list[_Expanded] = []
        for simple in simples:
            argv = [_subst(w, env) for w in simple.words]
            if any("IFS" in w for w in argv):
                argv = [
                    part for w in argv for part in _EMPTY_PARAM.sub("", _IFS.sub(" ", w)).split()
                ]
            assigns = [_subst(a, env) for a in simple.assignments]
            redirects = [
                Redirect(r.op, _subst(r.target, env), r.fd, r.body) for r in simple.redirects
            ]
            if not argv:
                for a in assigns:  # bare NAME=value persists for later commands
                    m = _ASSIGN.match(a)
                    if m:
                        env[m.group(1)] = m.group(2)
            elif argv[0] == "read":
                literal = _stdin_literal(redirects)
                names = [a for a in argv[1:] if _NAME_ONLY.fullmatch(a)]
                if literal is not None and len(names) == 1:
                    env[names[0]] = literal.split("\n", 1)[0]
            elif argv[0] in _DECLARERS:
                for a in argv[1:]:
                    m = _ASSIGN.match(a)
                    if m:
                        env[m.group(1)] = m.group(2)
            expanded.append(
                _Expanded(simple, argv, assigns, redirects, wrappers.program_chain(argv))
            )
        self.link_pipelines(expanded, extra_down)
        for item in expanded:
            if item.stdout is not None:
                self.written_text(item, depth)
        for item in expanded:
            simple = item.simple
            run = _RunContext(
                redirects=tuple(item.redirects),
                assignments=tuple(item.assignments),
                upstream=item.up,
                downstream=item.down,
                background=simple.background,
                in_loop=simple.in_loop,
                infinite_loop=simple.infinite_loop,
            )
            if item.argv or item.assignments or item.redirects:
                self.emit(item.argv, run, context, depth, item.stdin, env)
            sub_feeds = simple.first_word_sub or bool(item.programs & wrappers.SHELL_RUNNERS)
            for sub in simple.subs:
                kind = "process substitution" if sub in simple.words else "command substitution"
                self.script(
                    sub,
                    f"{kind} in {context}" if context != "command" else kind,
                    depth + 1,
                    frozenset({"sh"}) if sub_feeds else frozenset(),
                    dict(env),
                    feeds_shell=sub_feeds,
                    outer=(False, simple.in_loop, simple.infinite_loop),
                )
        if feeds_shell:
            # The output of the last command here is executed by a shell
            # (bash -c "$(...)", eval $(...), source <(...)).
            for item in expanded:
                if item.stdout is not None and not (item.down - extra_down):
                    label, text = item.stdout
                    self.script(
                        text, f"{label} run by a shell", depth + 1, frozenset(), {},
                        feeds_shell=False,
                    )  # fmt: skip

    def link_pipelines(self, expanded: list[_Expanded], extra_down: frozenset[str]) -> None:
        """Fill upstream/downstream program names and literal text flowing through pipes."""
        by_pipe: dict[int, list[tuple[int, _Expanded]]] = {}
        for item in expanded:
            for pid, position in item.simple.pipes:
                by_pipe.setdefault(pid, []).append((position, item))
            item.down = extra_down
            if not item.simple.pipes:
                item.stdout = self.stdout_of(item, None)
        for members in by_pipe.values():
            if len(members) == 1:
                pos_item = members[0][1]
                pos_item.stdout = self.stdout_of(pos_item, None)
                continue
            members.sort(key=lambda m: m[0])
            for position, item in members:
                up: set[str] = set()
                down: set[str] = set()
                for other_pos, other in members:
                    if other_pos < position:
                        up |= other.programs
                    elif other_pos > position:
                        down |= other.programs
                item.up = item.up | up
                item.down = item.down | down
            # Literal text flows only between adjacent single commands.
            flowing: tuple[str, str] | None = None
            last_pos = -1
            for position, item in members:
                incoming = flowing if position == last_pos + 1 else None
                if incoming is not None and item.stdin is None:
                    item.stdin = incoming
                item.stdout = self.stdout_of(item, item.stdin)
                flowing = item.stdout
                last_pos = position

    def known_file(self, args: list[str]) -> tuple[str, str] | None:
        """Content of the first operand when this command wrote it earlier."""
        for a in args:
            if a.startswith("-"):
                continue
            return self.files.get(_norm_path(a))
        return None

    def written_text(self, item: _Expanded, depth: int) -> None:
        """Text written to a file is read too: shell scripts are parsed, Python is scanned."""
        if item.stdout is None:
            return
        label, text = item.stdout
        targets = [r.target for r in item.redirects if r.writes]
        if item.argv and item.argv[0].rpartition("/")[2] == "tee":
            targets.extend(a for a in item.argv[1:] if not a.startswith("-"))
        for path in targets:
            context = f"{label} written to {path}"
            self.files[_norm_path(path)] = (context, text)
            if path.endswith(_SCRIPT_EXT):
                self.script(text, context, depth + 1, frozenset(), {}, feeds_shell=False)
            else:
                self.sources.append(Source(text, context))
                if path.endswith(".py"):
                    for kind, payload in wrappers.embedded_commands("python", text):
                        if kind == "shell":
                            self.script(payload, f"command in {context}", depth + 1,
                                        frozenset(), {}, feeds_shell=False)  # fmt: skip

    def stdout_of(
        self, item: _Expanded, incoming: tuple[str, str] | None
    ) -> tuple[str, str] | None:
        """Statically known output of a command: echo/printf/cat literals and decoders."""
        own = _stdin_literal(item.redirects)
        if own is not None:
            incoming = ("here-doc", own)
            item.stdin = incoming
        argv = item.argv
        if not argv:
            return None
        prog = argv[0].rpartition("/")[2]
        args = argv[1:]
        if prog == "echo":
            flags = [a for a in args if re.fullmatch(r"-[neE]+", a)]
            text = " ".join(a for a in args if a not in flags)
            if any("e" in f for f in flags):
                text = decode_ansi_c(text)
            return ("echoed text", text)
        if prog == "printf" and args:
            return ("printed text", decode_ansi_c(args[0].replace("%s", " ".join(args[1:]))))
        if prog == "cat" and incoming is not None and all(a == "-" for a in args):
            return incoming
        if prog == "tee" and incoming is not None:
            return incoming
        if incoming is None:
            return None
        if prog == "rev" and not _operands(args):
            label = f"reversed {incoming[0]}"
            text = "\n".join(line[::-1] for line in incoming[1].split("\n"))
            self.sources.append(Source(text, label))
            return (label, text)
        if prog == "tr":
            translated = translate(args, incoming[1])
            if translated is not None:
                label = f"translated {incoming[0]}"
                self.sources.append(Source(translated, label))
                return (label, translated)
            return None
        kind = wrappers.decoder_kind(prog, args)
        if kind is None:
            return None
        label = f"decoded {kind}"
        decoded = decode_base64(incoming[1]) if kind == "base64" else decode_hex(incoming[1])
        if decoded is None:
            self.sources.append(Source(incoming[1], f"undecodable {kind} payload"))
            return None
        self.sources.append(Source(decoded, label))
        return (label, decoded)

    # emitting ---------------------------------------------------------------

    def emit(
        self,
        argv: list[str],
        run: _RunContext,
        context: str,
        depth: int,
        stdin: tuple[str, str] | None,
        env: dict[str, str],
    ) -> None:
        if depth > self.max_depth:
            self.unparsable.append(f"payloads nested deeper than {self.max_depth} levels")
            return
        prog = argv[0].rpartition("/")[2] if argv else ""
        if argv and _norm_path(argv[0]) in self.copies:
            original = self.copies[_norm_path(argv[0])]
            self.emit([original, *argv[1:]], run, f"{context} (copy of {original} as {argv[0]})",
                      depth + 1, stdin, env)  # fmt: skip
        if argv and _norm_path(argv[0]) in self.files:
            where, text = self.files[_norm_path(argv[0])]
            self.script(text, f"{where}, then run", depth + 1, frozenset(), {},
                        feeds_shell=False, outer=run.outer)  # fmt: skip
        for assignment in run.assignments:
            name, _, value = assignment.partition("=")
            if name in _COMMAND_VARS and value:
                self.script(value, f"{name} command", depth + 1, frozenset(), {},
                            feeds_shell=False, outer=run.outer)  # fmt: skip
        if prog in _COPIERS and len(argv) >= 3:
            operands = [a for a in argv[1:] if not a.startswith("-")]
            if len(operands) == 2:
                source = operands[0].rpartition("/")[2]
                if source:
                    self.copies[_norm_path(operands[1])] = source
        script: str | None = None
        script_from = ""
        lang = wrappers.interpreter_language(prog)
        if lang is not None:
            script = wrappers.inline_script(lang, argv[1:])
            script_from = "inline"
            if script is None and stdin is not None and wrappers.reads_stdin_script(lang, argv):
                script_from = stdin[0]
                script = stdin[1]
            known = self.known_file(argv[1:])
            if script is None and known is not None:
                script_from, script = known
        self.invocations.append(
            Invocation(
                tuple(argv),
                redirects=run.redirects,
                assignments=run.assignments,
                context=context,
                upstream=run.upstream,
                downstream=run.downstream,
                background=run.background,
                in_loop=run.in_loop,
                infinite_loop=run.infinite_loop,
                script=script,
            )
        )
        if not argv:
            return
        if script is not None and lang is not None:
            label = f"{prog} {'payload' if script_from == 'inline' else script_from}"
            self.sources.append(Source(script, label))
            for kind, payload in wrappers.embedded_commands(lang, script):
                sub_context = f"command in {label}"
                if kind == "shell":
                    self.script(payload, sub_context, depth + 1, frozenset(), {},
                                feeds_shell=False)  # fmt: skip
                else:
                    self.emit(payload.split("\0"), run, sub_context, depth + 1, None, {})
            return
        unwrapped = wrappers.unwrap(prog, argv[1:])
        if prog in wrappers.SHELLS and wrappers.unwrap(prog, argv[1:]) is None:
            known = self.known_file(argv[1:])
            if known is not None:
                self.script(known[1], f"{known[0]}, run by {prog}", depth + 1, frozenset(), {},
                            feeds_shell=False, outer=run.outer)  # fmt: skip
        if unwrapped is None:
            if prog in wrappers.SHELLS and stdin is not None and not wrappers.has_script(argv):
                self.script(stdin[1], f"{stdin[0]} piped into {prog}", depth + 1,
                            frozenset(), {}, feeds_shell=False, outer=run.outer)  # fmt: skip
            return
        if unwrapped.argv:
            inner = run
            if unwrapped.assignments:
                inner = replace(run, assignments=run.assignments + unwrapped.assignments)
            self.emit(unwrapped.argv, inner, f"{context} via {prog}", depth + 1, stdin, env)
        if unwrapped.shell is not None:
            self.script(unwrapped.shell, f"{prog} {unwrapped.label}", depth + 1, frozenset(),
                        dict(env), feeds_shell=False, outer=run.outer)  # fmt: skip


def _operands(args: list[str]) -> list[str]:
    return [a for a in args if not a.startswith("-")]


def _norm_path(path: str) -> str:
    return path[2:] if path.startswith("./") else path


_COPIERS = frozenset({"cp", "mv", "ln", "install"})
# Environment variables whose value is run as a shell command by the program.
_COMMAND_VARS = frozenset({"GIT_SSH_COMMAND", "RSYNC_RSH", "GIT_EXTERNAL_DIFF", "PAGER", "EDITOR"})


def _stdin_literal(redirects: list[Redirect]) -> str | None:
    for r in redirects:
        if r.op in ("<<", "<<-") and r.body is not None:
            return r.body
        if r.op == "<<<":
            return r.target
    return None


def parse_command(
    text: str, *, max_depth: int = MAX_DEPTH, fast_path: bool = True
) -> ParsedCommand:
    """Parse one shell command (any length of script) into invocations and sources."""
    return Parser(max_depth, fast_path=fast_path).parse(text)


def parse_argv(argv: list[str], *, max_depth: int = MAX_DEPTH) -> ParsedCommand:
    """An exec'd process's argv (no shell involved): unwrap wrappers and payloads only."""
    parser = Parser(max_depth)
    parser.sources.append(Source(" ".join(argv), "exec"))
    if argv:
        parser.emit(list(argv), _RunContext(), "exec", 0, None, {})
    mode = ParseMode.UNPARSABLE if parser.unparsable else ParseMode.FAST
    return ParsedCommand(
        tuple(parser.invocations),
        tuple(parser.sources),
        mode,
        "; ".join(parser.unparsable) if parser.unparsable else None,
    )


__all__ = ["MAX_DEPTH", "Parser", "parse_argv", "parse_command"]
