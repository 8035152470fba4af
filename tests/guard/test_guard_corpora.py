"""False positives matter as much as catches: the benign corpus must pass untouched,
and every labelled malicious command must be caught with the right category."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.guard import Guard
from corral.guard.corpus import benign_commands, parse_labelled
from corral.policy import Verdict

MALICIOUS = parse_labelled(
    (Path(__file__).parent / "data" / "malicious_commands.txt").read_text(encoding="utf-8")
)
BENIGN = benign_commands()


def test_corpora_are_big_enough() -> None:
    assert len(BENIGN) >= 300
    assert len(MALICIOUS) >= 150


def test_benign_corpus_raises_no_finding_at_all(guard: Guard) -> None:
    flagged = {}
    for command in BENIGN:
        decision = guard.check(command)
        if decision.findings or decision.verdict != Verdict.ALLOW:
            flagged[command] = [f.rule_id for f in decision.findings]
    assert flagged == {}


@pytest.mark.parametrize(("category", "command"), MALICIOUS)
def test_malicious_command_is_caught_with_its_category(
    guard: Guard, category: str, command: str
) -> None:
    decision = guard.check(command)
    assert decision.verdict != Verdict.ALLOW, command
    assert category in {f.category for f in decision.findings}, decision.to_dict()
