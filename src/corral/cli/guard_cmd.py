"""``corral guard``: ask the guard about commands without running them.

``corral guard check [--policy P] [--rules FILE]... [--json] (COMMAND | -)`` prints
the verdict, rule id, category, ATT&CK technique and explanation for one
command, or for each line of stdin when COMMAND is ``-`` (JSON lines with
``--json``). Nothing is run and no approver is asked: ``ask`` is reported as is.

Exit codes:

* 0 — every command allowed;
* 1 — at least one command denied;
* 3 — no command denied, at least one would ask for approval;
* 2 — the policy or a rule file is invalid (one message on stderr, no traceback);
  2 is also what typer uses for usage errors, so "2" always means "fix the input".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from corral.errors import CorralError
from corral.guard import Decision, Guard, compile_rules
from corral.policy import Verdict, load_policy

guard_app = typer.Typer(help="Check commands against the guard's rules.", no_args_is_help=True)


@guard_app.callback()
def _group() -> None:
    """Check commands against the guard's rules."""
    # A callback keeps `guard` a command group, so `check` stays a subcommand.


EXIT_ALLOW = 0
EXIT_DENY = 1
EXIT_ERROR = 2
EXIT_ASK = 3


def _visible(text: str) -> str:
    # Commands come from agents: show terminal escapes instead of letting them act.
    return "".join(c if c.isprintable() or c == "\n" else f"\\x{ord(c):02x}" for c in text)


def _render(decision: Decision) -> str:
    lines = [f"{str(decision.verdict).upper():5} {_visible(decision.command)}"]
    for f in decision.findings:
        lines.append(
            f"      {f.rule_id} [{f.category}, {f.severity}, ATT&CK {f.attack}, {f.verdict}]"
        )
        lines.append(f"        {_visible(f.explanation)}")
    for note in decision.notes:
        lines.append(f"      note: {note}")
    return "\n".join(lines)


@guard_app.command("check")
def check(
    command: Annotated[str, typer.Argument(help="The command to check, or '-' for stdin lines.")],
    policy: Annotated[
        str | None, typer.Option("--policy", "-p", help="Profile name or policy file.")
    ] = None,
    rules: Annotated[
        list[Path] | None,
        typer.Option("--rules", help="Extra rule file (repeatable), on top of the policy's."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per command.")] = False,
) -> None:
    """Print the guard's verdict for COMMAND (or each stdin line) without running it."""
    try:
        loaded = load_policy(policy)
        guard_policy = loaded.guard
        extra = [*guard_policy.rule_files, *(str(p) for p in rules or [])]
        guard = Guard(guard_policy, rules=compile_rules(extra, guard_policy.disabled_rules))
    except CorralError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_ERROR) from None
    if command == "-":
        commands = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    else:
        commands = [command]
    verdicts: list[Verdict] = []
    for text in commands:
        decision = guard.check(text)
        verdicts.append(decision.verdict)
        if as_json:
            typer.echo(json.dumps(decision.to_dict(), separators=(",", ":")))
        else:
            typer.echo(_render(decision))
    if Verdict.DENY in verdicts:
        raise typer.Exit(EXIT_DENY)
    if Verdict.ASK in verdicts:
        raise typer.Exit(EXIT_ASK)
    raise typer.Exit(EXIT_ALLOW)
