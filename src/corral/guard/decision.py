"""What the guard decided about one command, and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from corral.guard.invocation import ParseMode
from corral.policy import Verdict

_RANK = {Verdict.ALLOW: 0, Verdict.ASK: 1, Verdict.DENY: 2}

UNPARSABLE_RULE = "guard.unparsable"


def strictest(verdicts: list[Verdict]) -> Verdict:
    """Deny beats ask beats allow; nothing found means allow."""
    return max(verdicts, key=_RANK.__getitem__, default=Verdict.ALLOW)


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule that matched. ``explanation`` says what matched, where, and why it matters."""

    rule_id: str
    category: str
    severity: str
    attack: str
    verdict: Verdict
    description: str
    explanation: str
    matched: str
    context: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "category": self.category,
            "severity": self.severity,
            "attack": self.attack,
            "verdict": str(self.verdict),
            "description": self.description,
            "explanation": self.explanation,
            "matched": self.matched,
            "context": self.context,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """The guard's answer for one command.

    ``verdict`` is final once ``resolved_by`` is set: an ``ask`` resolved by an
    approver (``"approver"``), by the policy fallback (``"ask_fallback"``), or
    denied because the approver failed (``"approver_error"``).
    """

    verdict: Verdict
    command: str
    findings: tuple[Finding, ...] = ()
    parse_mode: ParseMode = ParseMode.FAST
    unparsable: str | None = None
    resolved_by: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def allowed(self) -> bool:
        return self.verdict == Verdict.ALLOW

    @property
    def primary(self) -> Finding | None:
        """The finding that decided the verdict: strictest, then most severe."""
        if not self.findings:
            return None
        severity_rank = {"low": 0, "medium": 1, "high": 2, "critical": 3}
        return max(
            self.findings,
            key=lambda f: (_RANK[f.verdict], severity_rank.get(f.severity, 0)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": str(self.verdict),
            "command": self.command,
            "findings": [f.to_dict() for f in self.findings],
            "parse_mode": str(self.parse_mode),
            "unparsable": self.unparsable,
            "resolved_by": self.resolved_by,
            "notes": list(self.notes),
        }
