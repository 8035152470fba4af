"""Guard rules as users write them (YAML), and the loader that validates them.

A rule file is ``{rules: [rule, ...]}``. Every field is checked with pydantic
(unknown keys are errors), every regex is compiled at load time, and any
problem raises :class:`GuardRuleError` naming the file, the rule id and the
field. What the rules mean when matched lives in :mod:`corral.guard.matchers`.

Match vocabulary (all given conditions must hold; a list means "any of"):

=================  =====================================================================
``program``        basename of the program (``/tmp/.x/xmrig`` is ``xmrig``); globs allowed
``unless_program`` the rule does not apply to these programs
``subcommand``     first operand (``systemctl enable``, ``cloudflared tunnel``)
``flags``          options present, read the way getopt does (``-fNR`` holds ``-R``,
                   ``--coin=xmr`` holds ``--coin``); ``value_flags`` lists the
                   program's short options that take a value so ``-oProxyJump`` is
                   read as ``-o``; ``options_end_after`` stops at the Nth operand
``args``           regex found in any argument; ``args_all``: every regex in some argument
``unless_args``    the rule does not apply if any argument matches one of these regexes
``hosts``          domain names in arguments or inline code: ``pool.example.com`` or
                   ``*.example.com`` (which also matches ``example.com`` itself)
``paths``          regex found in any argument or redirection target, with home
                   directories written as ``~`` (``$HOME``, ``/root``, ``/home/u``)
``writes``         regex on files the command writes (``>``, ``tee``, ``cp``/``mv``
                   destination, ``sed -i``, ``dd of=``, ``curl -o``, editors)
``redirects``      regex on any redirection target (``/dev/tcp/...``)
``assigns``        regex on ``NAME=value`` environment assignments
``piped_into``     a later program in the same pipeline (globs)
``piped_from``     an earlier program in the same pipeline (globs)
``background``/``in_loop``/``infinite_loop``  booleans on how the command runs
``script``         regex found in inline interpreter code; ``script_all``: all of them
``text``           regex found in the raw command or any decoded/nested payload text;
                   cannot be combined with the per-program conditions above
=================  =====================================================================
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from corral.errors import PolicyError


class GuardRuleError(PolicyError):
    """A rule file is invalid. ``file``, ``rule_id`` and ``field`` locate the first problem."""

    def __init__(self, file: str, problems: list[tuple[str | None, str | None, str]]) -> None:
        self.file = file
        first = problems[0]
        self.rule_id = first[0]
        self.field = first[1]
        lines = []
        for rule_id, field, message in problems:
            where = []
            if rule_id is not None:
                where.append(f"rule {rule_id!r}")
            if field is not None:
                where.append(f"field {field!r}")
            lines.append(f"{', '.join(where)}: {message}" if where else message)
        super().__init__(f"guard rule file {file}", lines)


class Category(StrEnum):
    CRYPTOMINING = "cryptomining"
    TUNNELING = "tunneling"
    REVERSE_SHELL = "reverse_shell"
    DISCOVERY = "discovery"
    PERSISTENCE = "persistence"
    PRIVILEGE_ESCALATION = "privilege_escalation"
    CREDENTIAL_ACCESS = "credential_access"
    EXFILTRATION = "exfiltration"
    TAMPERING = "tampering"
    RESOURCE_ABUSE = "resource_abuse"
    DEFENSE_EVASION = "defense_evasion"
    EXECUTION = "execution"
    OTHER = "other"


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_REGEX_FIELDS = (
    "args", "args_all", "unless_args", "paths", "writes", "redirects", "assigns",
    "script", "script_all", "text",
)  # fmt: skip
_GLOB_FIELDS = ("program", "unless_program", "piped_into", "piped_from")
# Conditions that single out something; booleans alone would match half of all commands.
_ANCHORS = (
    "program", "subcommand", "flags", "args", "args_all", "hosts", "paths", "writes",
    "redirects", "assigns", "script", "script_all", "text",
)  # fmt: skip
_HOST = re.compile(r"^(\*\.)?([a-z0-9-]+\.)+[a-z0-9-]+$")


class MatchSpec(_Model):
    """What a rule looks for. Unset: no condition. Empty lists are refused (ambiguous)."""

    program: list[str] | None = Field(None, description="Program basenames or globs.")
    unless_program: list[str] | None = Field(None, description="Programs exempted.")
    subcommand: list[str] | None = Field(None, description="Allowed first operands.")
    flags: list[str] | None = Field(None, description="Options such as -R or --donate-level.")
    value_flags: str = Field("", description="Short options of the program taking a value.")
    options_end_after: int | None = Field(
        None, ge=1, description="Stop reading options after this many operands."
    )
    args: list[str] | None = Field(None, description="Regexes, any argument.")
    args_all: list[str] | None = Field(None, description="Regexes, each in some argument.")
    unless_args: list[str] | None = Field(None, description="Regexes that exempt the command.")
    hosts: list[str] | None = Field(None, description="Domains or *.domain.")
    paths: list[str] | None = Field(None, description="Regexes on paths (home as ~).")
    writes: list[str] | None = Field(None, description="Regexes on written files.")
    redirects: list[str] | None = Field(None, description="Regexes on redirection targets.")
    assigns: list[str] | None = Field(None, description="Regexes on NAME=value.")
    piped_into: list[str] | None = Field(None, description="Later programs in the pipeline.")
    piped_from: list[str] | None = Field(None, description="Earlier programs in the pipeline.")
    background: bool | None = Field(None, description="Runs with a trailing &.")
    in_loop: bool | None = Field(None, description="Runs inside a for/while/until body.")
    infinite_loop: bool | None = Field(None, description="Runs inside while true / until false.")
    script: list[str] | None = Field(None, description="Regexes, any, in inline code.")
    script_all: list[str] | None = Field(None, description="Regexes, all, in inline code.")
    text: list[str] | None = Field(None, description="Regexes on raw command/payload text.")

    @field_validator(*_REGEX_FIELDS, *_GLOB_FIELDS, "subcommand", "flags", "hosts")
    @classmethod
    def _non_empty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or any(not item for item in v)):
            raise ValueError("must be a non-empty list of non-empty strings (or left out)")
        return v

    @field_validator(*_REGEX_FIELDS)
    @classmethod
    def _regexes(cls, v: list[str] | None) -> list[str] | None:
        for i, pattern in enumerate(v or []):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"item {i}: bad regex {pattern!r}: {exc}") from None
        return v

    @field_validator(*_GLOB_FIELDS)
    @classmethod
    def _globs(cls, v: list[str] | None) -> list[str] | None:
        for pattern in v or []:
            if pattern.strip("*?") == "":
                raise ValueError(f"glob {pattern!r} would match every program")
        return v

    @field_validator("flags")
    @classmethod
    def _flags(cls, v: list[str] | None) -> list[str] | None:
        for flag in v or []:
            if not re.fullmatch(r"-[A-Za-z0-9]|--[A-Za-z0-9][\w-]*", flag):
                raise ValueError(f"{flag!r} is not an option like -R or --long-name")
        return v

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str] | None) -> list[str] | None:
        out = []
        for host in v or []:
            name = host.strip().lower().rstrip(".")
            if not _HOST.match(name):
                raise ValueError(f"{host!r} is not a domain or *.domain")
            if name.startswith("*.") and name.count(".") < 2:
                raise ValueError(f"{host!r} is too broad; name at least two labels after *")
            out.append(name)
        return out or None

    @model_validator(mode="after")
    def _coherent(self) -> MatchSpec:
        # The one boolean-only shape allowed: spawning in the background from an endless loop.
        spawner = self.background is True and self.infinite_loop is True
        if not spawner and not any(getattr(self, name) is not None for name in _ANCHORS):
            raise ValueError(
                "a match needs at least one of: " + ", ".join(_ANCHORS) + " (booleans alone "
                "would match ordinary commands)"
            )
        if self.text is not None:
            others = [
                name
                for name in type(self).model_fields
                if name != "text" and getattr(self, name) not in (None, "")
            ]
            if others:
                raise ValueError(f"'text' matches raw text and cannot be combined with {others}")
        if self.value_flags and self.flags is None:
            raise ValueError("'value_flags' only makes sense with 'flags'")
        return self


class RuleTests(_Model):
    """Examples that must (and must not) trigger the rule; run by the test suite."""

    match: list[str] = Field(default_factory=list)
    no_match: list[str] = Field(default_factory=list)


class Rule(_Model):
    """One detection: what to look for, how bad it is and what to do about it."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", description="Unique, stable id.")
    category: Category
    severity: Severity
    attack: str = Field(pattern=r"^T\d{4}(\.\d{3})?$", description="MITRE ATT&CK technique.")
    verdict: Literal["deny", "ask"]
    description: str = Field(min_length=1, description="Why this matters, for humans.")
    match: MatchSpec
    tests: RuleTests = Field(default_factory=RuleTests)


class _RuleFile(_Model):
    rules: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class LoadedRule:
    rule: Rule
    file: str


def _describe_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_rule_text(text: str, file: str) -> list[LoadedRule]:
    """Validate one rule file's text. Raises :class:`GuardRuleError` listing every problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise GuardRuleError(file, [(None, None, f"YAML syntax error{where}: {problem}")]) from None
    if not isinstance(data, dict) or set(data) != {"rules"} or not isinstance(data["rules"], list):
        problem = "a rule file is a mapping with one key, 'rules', holding a list"
        raise GuardRuleError(file, [(None, "rules", problem)])
    problems: list[tuple[str | None, str | None, str]] = []
    loaded: list[LoadedRule] = []
    seen: set[str] = set()
    for index, raw in enumerate(data["rules"]):
        rule_id = raw.get("id") if isinstance(raw, dict) else None
        label = str(rule_id) if isinstance(rule_id, str) else f"#{index + 1}"
        if not isinstance(raw, dict):
            problems.append((label, None, "a rule must be a mapping"))
            continue
        try:
            rule = Rule.model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors():
                field = _describe_loc(tuple(err["loc"])) or None
                msg = err["msg"].removeprefix("Value error, ")
                problems.append((label, field, msg))
            continue
        if rule.id in seen:
            problems.append((label, "id", "duplicate rule id in this file"))
            continue
        seen.add(rule.id)
        loaded.append(LoadedRule(rule, file))
    if problems:
        raise GuardRuleError(file, problems)
    return loaded


@lru_cache(maxsize=64)
def _load_file_cached(path: str, mtime_ns: int, size: int) -> tuple[LoadedRule, ...]:
    # Keyed on mtime and size so an edited rule file is re-read, an unchanged one is not.
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GuardRuleError(path, [(None, None, f"cannot read: {exc}")]) from None
    return tuple(parse_rule_text(text, path))


def load_rule_file(path: str | Path) -> tuple[LoadedRule, ...]:
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise GuardRuleError(str(path), [(None, None, f"cannot read: {exc}")]) from None
    if not p.is_file():
        raise GuardRuleError(str(path), [(None, None, "is not a file")])
    return _load_file_cached(str(p), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=1)
def builtin_rules() -> tuple[LoadedRule, ...]:
    """The rules shipped in ``corral/guard/rules/*.yaml`` (read once per process)."""
    out: list[LoadedRule] = []
    folder = resources.files("corral.guard") / "rules"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            label = f"<builtin>/guard/rules/{entry.name}"
            out.extend(parse_rule_text(entry.read_text(encoding="utf-8"), label))
    return tuple(out)


def collect_rules(
    extra_files: Iterable[str | Path] = (), disabled: Iterable[str] = ()
) -> tuple[LoadedRule, ...]:
    """Built-in rules plus ``extra_files``, minus ``disabled`` ids; ids must be unique."""
    rules = list(builtin_rules())
    for path in extra_files:
        rules.extend(load_rule_file(path))
    by_id: dict[str, LoadedRule] = {}
    for loaded in rules:
        other = by_id.get(loaded.rule.id)
        if other is not None:
            raise GuardRuleError(
                loaded.file,
                [(loaded.rule.id, "id", f"duplicate rule id, already defined in {other.file}")],
            )
        by_id[loaded.rule.id] = loaded
    disabled_ids = list(disabled)
    unknown = [rule_id for rule_id in disabled_ids if rule_id not in by_id]
    if unknown:
        # A typo here would silently leave a rule on that the user meant to turn off.
        raise GuardRuleError(
            "guard.disabled_rules",
            [(rule_id, "disabled_rules", "no rule has this id") for rule_id in unknown],
        )
    return tuple(r for r in rules if r.rule.id not in set(disabled_ids))
