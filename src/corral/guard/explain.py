"""Turning decisions into what the agent sees and what the audit log records.

A denied command does not run; :func:`explain` gives the agent a structured
result in its place, so it learns which rule refused what and why, instead of
guessing from a bare error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from corral.events import Event, EventKind
from corral.guard.decision import Decision


@dataclass(frozen=True, slots=True)
class GuardResult:
    """The result an agent receives for a command the guard did not let run."""

    verdict: str
    rule_id: str | None
    category: str | None
    severity: str | None
    attack: str | None
    explanation: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "rule_id": self.rule_id,
            "category": self.category,
            "severity": self.severity,
            "attack": self.attack,
            "explanation": self.explanation,
            "text": self.text,
        }


def explain(decision: Decision) -> GuardResult:
    """Structured explanation of ``decision``, with a short text rendering."""
    primary = decision.primary
    verdict = str(decision.verdict)
    if primary is None:
        explanation = "No rule matched." if not decision.notes else "; ".join(decision.notes)
        return GuardResult(verdict, None, None, None, None, explanation, f"guard: {verdict}")
    others = [f.rule_id for f in decision.findings if f is not primary]
    also = f" Also matched: {', '.join(others)}." if others else ""
    how = f" ({decision.resolved_by})" if decision.resolved_by else ""
    text = (
        f"guard: {verdict}{how} by rule {primary.rule_id} "
        f"[{primary.category}, {primary.severity}, ATT&CK {primary.attack}]: "
        f"{primary.explanation}{also}"
    )
    if decision.verdict != "allow":
        text += " The command was not run."
    return GuardResult(
        verdict,
        primary.rule_id,
        primary.category,
        primary.severity,
        primary.attack,
        primary.explanation,
        text,
    )


def decision_event(
    decision: Decision,
    sandbox_id: str,
    *,
    episode_id: str | None = None,
    step: int | None = None,
    pid: int | None = None,
) -> Event:
    """A ``guard.verdict`` event for the audit trail."""
    return Event(
        kind=EventKind.GUARD_VERDICT,
        sandbox_id=sandbox_id,
        episode_id=episode_id,
        step=step,
        pid=pid,
        data=decision.to_dict(),
    )
