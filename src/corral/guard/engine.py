"""The Guard: parse a command, match every invocation against the rules, decide.

Order of a decision, fixed so it can be reasoned about:

1. parse (``check``: shell text; ``check_argv``: an exec'd argv, no shell);
2. match every invocation and every source text against the rules;
3. a command that could not be read adds the ``guard.unparsable`` finding with
   the ``unparsable`` verdict (never a silent allow);
4. the verdict is the strictest finding: deny > ask > allow;
5. ``authorize`` resolves ``ask`` with the approver; no approver means the
   policy's ``ask_fallback``; an approver that fails means deny.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from corral.errors import GuardDenied
from corral.guard.approval import ApprovalError, Approver
from corral.guard.decision import UNPARSABLE_RULE, Decision, Finding, strictest
from corral.guard.invocation import ParsedCommand, ParseMode
from corral.guard.matchers import CompiledRule, Evidence, Features, RuleSet
from corral.guard.parser import parse_argv, parse_command
from corral.guard.rules import collect_rules
from corral.policy import GuardPolicy, Policy, Verdict


@lru_cache(maxsize=16)
def _ruleset(files: tuple[tuple[str, int, int], ...], disabled: tuple[str, ...]) -> RuleSet:
    # Keyed on (path, mtime, size) so edited rule files are recompiled, nothing else is.
    return RuleSet(collect_rules([f[0] for f in files], disabled))


def compile_rules(
    rule_files: Iterable[str | Path] = (), disabled_rules: Iterable[str] = ()
) -> RuleSet:
    """Built-in plus extra rule files, compiled and cached. Raises GuardRuleError."""
    keys = []
    for path in rule_files:
        p = Path(path)
        try:
            st = p.stat()
            keys.append((str(p), st.st_mtime_ns, st.st_size))
        except OSError:
            keys.append((str(p), -1, -1))  # collect_rules reports the read error
    return _ruleset(tuple(keys), tuple(sorted(disabled_rules)))


class Guard:
    """Authorizes commands before they run.

    ``unparsable`` and ``ask_fallback`` default to the policy's values; pass them
    to override (for example ``unparsable=Verdict.ASK`` for an interactive
    session where a human can look). ``approver`` answers ``ask`` verdicts in
    :meth:`authorize`.
    """

    def __init__(
        self,
        policy: GuardPolicy | None = None,
        *,
        unparsable: Verdict | None = None,
        ask_fallback: Verdict | None = None,
        approver: Approver | None = None,
        rules: RuleSet | None = None,
    ) -> None:
        self.policy = policy or GuardPolicy()
        self.unparsable = Verdict(unparsable or self.policy.unparsable)
        self.ask_fallback = Verdict(ask_fallback or self.policy.ask_fallback)
        self.approver = approver
        self.rules = rules or compile_rules(self.policy.rule_files, self.policy.disabled_rules)

    @classmethod
    def from_policy(
        cls, policy: Policy, *, approver: Approver | None = None, unparsable: Verdict | None = None
    ) -> Guard:
        """A guard for a whole sandbox policy (uses its ``guard`` section)."""
        return cls(policy.guard, approver=approver, unparsable=unparsable)

    # --- checks (pure: no approver involved) ---------------------------------------

    def check(self, command: str) -> Decision:
        """Decide on one shell command string. ``ask`` is left for :meth:`authorize`."""
        if not self.policy.enabled:
            return Decision(Verdict.ALLOW, command, notes=("guard disabled by policy",))
        return self._decide(command, parse_command(command))

    def check_argv(self, argv: list[str]) -> Decision:
        """Decide on an exec'd process's argv (the monitor's view: no shell parsing)."""
        command = shlex.join(argv)
        if not self.policy.enabled:
            return Decision(Verdict.ALLOW, command, notes=("guard disabled by policy",))
        return self._decide(command, parse_argv(list(argv)))

    def _decide(self, command: str, parsed: ParsedCommand) -> Decision:
        findings: dict[str, Finding] = {}
        for inv in parsed.invocations:
            features = Features(inv)
            for rule in self.rules.applicable(features):
                if rule.rule.id in findings:
                    continue
                evidence = rule.match(features)
                if evidence is not None:
                    findings[rule.rule.id] = _finding(rule, evidence, inv.context)
        for source in parsed.sources:
            for rule in self.rules.text_rules:
                if rule.rule.id in findings:
                    continue
                evidence = rule.match_text(source)
                if evidence is not None:
                    findings[rule.rule.id] = _finding(rule, evidence, source.context)
        if parsed.unparsable is not None:
            findings[UNPARSABLE_RULE] = Finding(
                rule_id=UNPARSABLE_RULE,
                category="unparsable",
                severity="medium",
                attack="T1027",  # Obfuscated Files or Information
                verdict=self.unparsable,
                description="The guard could not read this command, so it cannot vouch for it.",
                explanation=f"could not parse: {parsed.unparsable}",
                matched=command[:200],
                context="command",
            )
        verdict = strictest([f.verdict for f in findings.values()])
        notes = parsed.notes
        if parsed.mode == ParseMode.FALLBACK:
            notes = ("parsed with the fallback tokenizer", *notes)
        return Decision(
            verdict=verdict,
            command=command,
            findings=tuple(findings.values()),
            parse_mode=parsed.mode,
            unparsable=parsed.unparsable,
            notes=notes,
        )

    # --- authorization (resolves ask) -------------------------------------------------

    def authorize(self, command: str) -> Decision:
        """:meth:`check`, then resolve ``ask`` with the approver or ``ask_fallback``."""
        return self.resolve(self.check(command))

    def authorize_argv(self, argv: list[str]) -> Decision:
        return self.resolve(self.check_argv(argv))

    async def authorize_async(self, command: str) -> Decision:
        """:meth:`authorize` for async callers: the approver (a prompt or a webhook,
        both blocking) runs in a worker thread so the event loop keeps serving."""
        decision = self.check(command)
        if decision.verdict != Verdict.ASK or self.approver is None:
            return self.resolve(decision)
        return await asyncio.to_thread(self.resolve, decision)

    def resolve(self, decision: Decision) -> Decision:
        if decision.verdict != Verdict.ASK:
            return decision
        if self.approver is None:
            return _with(decision, self.ask_fallback, "ask_fallback")
        try:
            approved = self.approver.approve(decision)
        except ApprovalError as exc:
            # Fail closed: an approver that cannot answer is a no.
            return _with(decision, Verdict.DENY, "approver_error", f"approver failed: {exc}")
        if approved is True:
            return _with(decision, Verdict.ALLOW, "approver")
        return _with(decision, Verdict.DENY, "approver")

    def require(self, command: str) -> Decision:
        """:meth:`authorize`, raising :class:`GuardDenied` unless the command may run."""
        decision = self.authorize(command)
        if decision.verdict != Verdict.ALLOW:
            primary = decision.primary
            rule_id = primary.rule_id if primary else "guard"
            why = primary.explanation if primary else "not allowed"
            raise GuardDenied(rule_id, why)
        return decision


def _with(decision: Decision, verdict: Verdict, by: str, note: str | None = None) -> Decision:
    notes = (*decision.notes, note) if note else decision.notes
    return Decision(
        verdict=verdict,
        command=decision.command,
        findings=decision.findings,
        parse_mode=decision.parse_mode,
        unparsable=decision.unparsable,
        resolved_by=by,
        notes=notes,
    )


def _finding(rule: CompiledRule, evidence: list[Evidence], context: str) -> Finding:
    r = rule.rule
    what = ", ".join(e.detail for e in evidence)
    where = "" if context in ("command", "exec") else f" (found in {context})"
    return Finding(
        rule_id=r.id,
        category=str(r.category),
        severity=str(r.severity),
        attack=r.attack,
        verdict=Verdict(r.verdict),
        description=r.description,
        explanation=f"{r.description} Matched {what}{where}.",
        matched=evidence[0].matched if evidence else "",
        context=context,
    )
