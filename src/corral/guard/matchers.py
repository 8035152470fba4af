"""Compiled rules and the one matcher shared by shell commands and exec'd argvs.

Rules are compiled once (regexes, glob sets, host suffix tables) into
:class:`CompiledRule`; a :class:`RuleSet` indexes them by program name so an
invocation is only tested against rules that could apply to it. Each match
returns evidence strings ("flag '-R' in '-fNR'") that become the explanation.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

from corral.guard.invocation import Invocation, Source
from corral.guard.rules import LoadedRule, MatchSpec, Rule

_HOME = re.compile(r"(?:\$\{HOME\}|\$HOME|/root|/home/[^/\s'\"]+|~[a-z_][\w-]*)(?=/|$|['\"\s])")
_HOSTNAME = re.compile(
    r"(?<![\w.-])(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,24}(?![\w-])", re.I
)
_SSH_FAMILY = frozenset({"ssh", "scp", "sftp", "autossh", "ssh-copy-id", "sshfs", "rsync"})
_EDITORS = frozenset({"vi", "vim", "nvim", "nano", "emacs", "ed", "pico", "joe", "visudo", "vipw"})
_DEST_LAST = frozenset({"cp", "mv", "install", "ln", "rsync", "scp"})


def normalize_home(text: str) -> str:
    """Write home directories as ``~`` so one rule covers $HOME, /root and /home/NAME."""
    if "/" not in text and "~" not in text and "$" not in text:
        return text
    text = _HOME.sub("~", text)
    if "//" in text or "/./" in text:
        text = re.sub(r"/\.?(?=/)", "", text)
    return text


class Features:
    """What the matchers read from one invocation, computed once and only when asked."""

    __slots__ = ("_hosts", "_norm_paths", "_writes", "args", "inv", "program")

    def __init__(self, inv: Invocation) -> None:
        self.inv = inv
        self.program = inv.program.lower()
        self.args = inv.argv[1:]
        self._hosts: tuple[str, ...] | None = None
        self._writes: tuple[str, ...] | None = None
        self._norm_paths: tuple[str, ...] | None = None

    def hosts(self) -> tuple[str, ...]:
        if self._hosts is None:
            found: list[str] = []
            for a in self.args:
                if "." in a:
                    found.extend(h.lower() for h in _HOSTNAME.findall(a))
            if self.inv.script and "." in self.inv.script:
                found.extend(h.lower() for h in _HOSTNAME.findall(self.inv.script))
            self._hosts = tuple(found)
        return self._hosts

    def paths(self) -> tuple[str, ...]:
        """Arguments and redirection targets with home normalized; ssh -i KEY skipped."""
        if self._norm_paths is None:
            out: list[str] = []
            skip_next = False
            for a in self.args:
                if skip_next:
                    skip_next = False
                    continue
                if self.program in _SSH_FAMILY and a in ("-i", "-F"):
                    # Using a key to log in is not reading it out.
                    skip_next = True
                    continue
                out.append(normalize_home(a))
                if "=" in a:  # if=/proc/1/mem, -F f=@~/.ssh/id_rsa, --data=@file
                    out.append(normalize_home(a.rpartition("=")[2].lstrip("@<")))
                elif a.startswith("@") and len(a) > 1:
                    out.append(normalize_home(a[1:]))
            out.extend(normalize_home(r.target) for r in self.inv.redirects if not r.is_fd_dup)
            self._norm_paths = tuple(out)
        return self._norm_paths

    def writes(self) -> tuple[str, ...]:
        if self._writes is None:
            self._writes = tuple(normalize_home(p) for p in _written_paths(self.program,
                                                                            self.inv))  # fmt: skip
        return self._writes


def _operands(args: Iterable[str]) -> list[str]:
    return [a for a in args if not a.startswith("-") or a == "-"]


def _written_paths(prog: str, inv: Invocation) -> list[str]:
    out = [r.target for r in inv.redirects if r.writes]
    args = list(inv.argv[1:])
    if not args:
        return out
    if prog == "tee" or prog in _EDITORS or prog in ("truncate", "touch", "shred"):
        out.extend(_operands(args))
    elif prog in _DEST_LAST:
        for i, a in enumerate(args):
            if a in ("-t", "--target-directory") and i + 1 < len(args):
                out.append(args[i + 1])
            elif a.startswith("--target-directory="):
                out.append(a.split("=", 1)[1])
        ops = _operands(args)
        if len(ops) >= 2:
            out.append(ops[-1])
    elif prog == "dd":
        out.extend(a[3:] for a in args if a.startswith("of="))
    elif prog in ("sed", "perl") and any(
        a.startswith(("-i", "--in-place")) or re.fullmatch(r"-[a-zA-Z]*i[a-zA-Z]*", a) for a in args
    ):
        ops = _operands(args)
        has_script_opt = any(a in ("-e", "-f", "--expression") for a in args)
        out.extend(ops if has_script_opt or prog == "perl" else ops[1:])
    elif prog in ("curl", "wget"):
        for i, a in enumerate(args):
            if a in ("-o", "--output", "-O", "--output-document") and i + 1 < len(args):
                if not (prog == "curl" and a == "-O"):
                    out.append(args[i + 1])
            elif a.startswith(("--output=", "--output-document=")):
                out.append(a.split("=", 1)[1])
    return out


def _glob_matcher(patterns: list[str]) -> tuple[frozenset[str], re.Pattern[str] | None]:
    exact = frozenset(p.lower() for p in patterns if not any(c in p for c in "*?["))
    globs = [fnmatch.translate(p.lower()) for p in patterns if any(c in p for c in "*?[")]
    return exact, (re.compile("|".join(globs)) if globs else None)


def _first_glob_hit(
    names: Iterable[str], exact: frozenset[str], pattern: re.Pattern[str] | None
) -> str | None:
    for name in names:
        low = name.lower()
        if low in exact or (pattern is not None and pattern.match(low)):
            return name
    return None


_LEADING_FLAGS = re.compile(r"^\(\?([aiLmsux]+)\)")


def _compile(patterns: list[str] | None) -> tuple[re.Pattern[str], ...]:
    """One alternation for "any of these patterns" (one search instead of many).

    A leading ``(?i)`` becomes a scoped ``(?i:...)`` group; anything the union
    cannot express keeps its own compiled pattern, with the same meaning.
    """
    if not patterns:
        return ()
    if len(patterns) == 1:
        return (re.compile(patterns[0]),)
    parts = []
    for p in patterns:
        m = _LEADING_FLAGS.match(p)
        parts.append(f"(?{m.group(1)}:{p[m.end() :]})" if m else f"(?:{p})")
    try:
        return (re.compile("|".join(parts)),)
    except re.error:
        return tuple(re.compile(p) for p in patterns)


def _search_any(
    patterns: tuple[re.Pattern[str], ...], values: Iterable[str]
) -> tuple[str, str] | None:
    for value in values:
        for pattern in patterns:
            m = pattern.search(value)
            if m:
                return value, m.group(0)
    return None


@dataclass(frozen=True, slots=True)
class Evidence:
    matched: str  # the text that matched, shortest useful form
    detail: str  # human phrase: "flag '-R' in '-fNR'"


class CompiledRule:
    """One rule ready to run. ``match`` returns evidence, or None when the rule does not apply."""

    def __init__(self, loaded: LoadedRule) -> None:
        self.rule: Rule = loaded.rule
        self.file = loaded.file
        spec: MatchSpec = loaded.rule.match
        self.spec = spec
        self.is_text = spec.text is not None
        self.program = _glob_matcher(spec.program) if spec.program else None
        self.unless_program = _glob_matcher(spec.unless_program) if spec.unless_program else None
        self.piped_into = _glob_matcher(spec.piped_into) if spec.piped_into else None
        self.piped_from = _glob_matcher(spec.piped_from) if spec.piped_from else None
        self.subcommand = frozenset(spec.subcommand or ())
        flags = spec.flags or []
        self.short_flags = frozenset(f[1] for f in flags if len(f) == 2)
        self.long_flags = frozenset(f for f in flags if f.startswith("--"))
        self.args = _compile(spec.args)
        self.args_all = tuple(re.compile(p) for p in spec.args_all or ())
        self.unless_args = _compile(spec.unless_args)
        self.paths = _compile(spec.paths)
        self.writes = _compile(spec.writes)
        self.redirects = _compile(spec.redirects)
        self.assigns = _compile(spec.assigns)
        self.script = _compile(spec.script)
        self.script_all = tuple(re.compile(p) for p in spec.script_all or ())
        self.text = _compile(spec.text)
        hosts = spec.hosts or []
        self.host_exact = frozenset(h for h in hosts if not h.startswith("*."))
        self.host_suffix = tuple(h[2:] for h in hosts if h.startswith("*."))
        self.host_suffix_set = frozenset(self.host_suffix)
        self.needs = _needed_feature(spec)

    # --- raw text rules ---------------------------------------------------------

    def match_text(self, source: Source) -> list[Evidence] | None:
        hit = _search_any(self.text, (source.text,))
        if hit is None:
            return None
        return [Evidence(hit[1], f"text {_short(hit[1])}")]

    # --- invocation rules ---------------------------------------------------------

    def match(self, f: Features) -> list[Evidence] | None:
        """Evidence when every condition holds, else None.

        Conditions run cheapest and most selective first; exemptions last, since
        most rules have already failed by then.
        """
        spec = self.spec
        inv = f.inv
        ev: list[Evidence] = []
        if self.program is not None:
            if not f.program or _first_glob_hit((f.program,), *self.program) is None:
                return None
            ev.append(Evidence(inv.argv[0], f"program {f.program!r}"))
        if spec.background is not None and inv.background != spec.background:
            return None
        if spec.in_loop is not None and inv.in_loop != spec.in_loop:
            return None
        if spec.infinite_loop is not None and inv.infinite_loop != spec.infinite_loop:
            return None
        if self.piped_into is not None:
            name = _first_glob_hit(sorted(inv.downstream), *self.piped_into)
            if name is None:
                return None
            ev.append(Evidence(name, f"output piped into {name!r}"))
        if self.piped_from is not None:
            name = _first_glob_hit(sorted(inv.upstream), *self.piped_from)
            if name is None:
                return None
            ev.append(Evidence(name, f"input piped from {name!r}"))
        if self.assigns:
            found = _search_any(self.assigns, inv.assignments)
            if found is None:
                return None
            ev.append(Evidence(found[0], f"assignment {_short(found[0])}"))
        if self.redirects:
            targets = [r.target for r in inv.redirects if not r.is_fd_dup and r.op != "<<<"]
            found = _search_any(self.redirects, targets)
            if found is None:
                return None
            ev.append(Evidence(found[0], f"redirection to {_short(found[0])}"))
        if self.script or self.script_all:
            code = inv.script
            if code is None:
                return None
            if self.script:
                found = _search_any(self.script, (code,))
                if found is None:
                    return None
                ev.append(Evidence(found[1], f"inline code {_short(found[1])}"))
            for pattern in self.script_all:
                m = pattern.search(code)
                if m is None:
                    return None
                ev.append(Evidence(m.group(0), f"inline code {_short(m.group(0))}"))
        if self.writes:
            found = _search_any(self.writes, f.writes())
            if found is None:
                return None
            ev.append(Evidence(found[0], f"writes {_short(found[0])}"))
        if self.host_exact or self.host_suffix_set:
            host = self._host_hit(f.hosts())
            if host is None:
                return None
            ev.append(Evidence(host, f"host {host!r}"))
        if self.subcommand:
            ops = _operands(f.args)
            if not ops or ops[0] not in self.subcommand:
                return None
            ev.append(Evidence(ops[0], f"subcommand {ops[0]!r}"))
        if spec.flags is not None:
            hit = self._flag_hit(f.args)
            if hit is None:
                return None
            ev.append(hit)
        if self.args:
            found = _search_any(self.args, f.args)
            if found is None:
                return None
            ev.append(Evidence(found[0], f"argument {_short(found[0])}"))
        for pattern in self.args_all:
            found = _search_any((pattern,), f.args)
            if found is None:
                return None
            ev.append(Evidence(found[0], f"argument {_short(found[0])}"))
        if self.paths:
            found = _search_any(self.paths, f.paths())
            if found is None:
                return None
            ev.append(Evidence(found[0], f"path {_short(found[0])}"))
        if (
            self.unless_program is not None
            and f.program
            and _first_glob_hit((f.program,), *self.unless_program)
        ):
            return None
        if self.unless_args and _search_any(self.unless_args, f.args) is not None:
            return None
        return ev

    def _flag_hit(self, args: tuple[str, ...]) -> Evidence | None:
        value_flags = self.spec.value_flags
        limit = self.spec.options_end_after
        operands = 0
        skip = False
        for a in args:
            if skip:
                skip = False
                continue
            if a == "--":
                return None
            if a.startswith("--"):
                if a.split("=", 1)[0] in self.long_flags:
                    return Evidence(a, f"option {a.split('=', 1)[0]!r}")
                continue
            if a.startswith("-") and len(a) > 1:
                for j, letter in enumerate(a[1:]):
                    if letter in self.short_flags:
                        detail = f"flag '-{letter}'" + (f" in {a!r}" if len(a) > 2 else "")
                        return Evidence(a, detail)
                    if letter in value_flags:
                        skip = j == len(a) - 2  # value is the next word
                        break
                continue
            operands += 1
            if limit is not None and operands >= limit:
                return None
        return None

    def _host_hit(self, hosts: tuple[str, ...]) -> str | None:
        suffixes = self.host_suffix_set
        for host in hosts:
            if host in self.host_exact:
                return host
            # a.b.example.com → check a.b.example.com, b.example.com, example.com, com
            rest = host
            while True:
                if rest in suffixes:
                    return host
                dot = rest.find(".")
                if dot < 0:
                    break
                rest = rest[dot + 1 :]
        return None


def _needed_feature(spec: MatchSpec) -> str:
    """The invocation feature without which this rule cannot match ("" if none)."""
    for name in ("writes", "redirects", "assigns", "script", "hosts", "piped_into", "piped_from"):
        if getattr(spec, name) is not None:
            return name
    if spec.script_all is not None:
        return "script"
    return ""


def _has(f: Features, need: str) -> bool:
    inv = f.inv
    if need == "writes":
        return bool(f.writes())
    if need == "redirects":
        return bool(inv.redirects)
    if need == "assigns":
        return bool(inv.assignments)
    if need == "script":
        return inv.script is not None
    if need == "hosts":
        return bool(f.hosts())
    if need == "piped_into":
        return bool(inv.downstream)
    if need == "piped_from":
        return bool(inv.upstream)
    return True


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


class RuleSet:
    """Compiled rules, with the candidates for each program name worked out once.

    A rule naming programs only by exact name is a candidate for those names; a rule
    with glob names is tested against the name once and the answer cached; a rule
    naming no program is a candidate for every invocation.
    """

    _CACHE_MAX = 4096  # distinct program names remembered; bounded against hostile input

    def __init__(self, rules: Iterable[LoadedRule]) -> None:
        self.rules: tuple[CompiledRule, ...] = tuple(CompiledRule(r) for r in rules)
        self.text_rules = tuple(r for r in self.rules if r.is_text)
        self._order = {id(rule): i for i, rule in enumerate(self.rules)}
        self.by_program: dict[str, list[CompiledRule]] = {}
        self.globbed: list[CompiledRule] = []
        self.generic: list[CompiledRule] = []
        for rule in self.rules:
            if rule.is_text:
                continue
            if rule.program is None:
                self.generic.append(rule)
            elif rule.program[1] is None:
                for name in rule.program[0]:
                    self.by_program.setdefault(name, []).append(rule)
            else:
                self.globbed.append(rule)
        self._cache: dict[str, tuple[CompiledRule, ...]] = {}

    def __len__(self) -> int:
        return len(self.rules)

    def candidates(self, program: str) -> tuple[CompiledRule, ...]:
        cached = self._cache.get(program)
        if cached is not None:
            return cached
        found = list(self.generic)
        found.extend(self.by_program.get(program, ()))
        found.extend(
            r for r in self.globbed if r.program and _first_glob_hit((program,), *r.program)
        )
        found.sort(key=lambda r: self._order[id(r)])
        result = tuple(found)
        # Plain dict writes are atomic under the GIL; racing threads only redo this work.
        if len(self._cache) < self._CACHE_MAX:
            self._cache[program] = result
        return result

    def applicable(self, f: Features) -> list[CompiledRule]:
        """Candidates for this invocation, minus rules needing a feature it lacks."""
        memo: dict[str, bool] = {}
        out = []
        for rule in self.candidates(f.program):
            need = rule.needs
            if need:
                present = memo.get(need)
                if present is None:
                    present = memo[need] = _has(f, need)
                if not present:
                    continue
            out.append(rule)
        return out

    @property
    def ids(self) -> list[str]:
        return [r.rule.id for r in self.rules]
