"""Every built-in rule proves itself on the examples in its own YAML ``tests:``."""

from __future__ import annotations

from collections import Counter

import pytest

from corral.guard import Category, Guard
from corral.guard.rules import builtin_rules

RULES = [loaded.rule for loaded in builtin_rules()]
POSITIVE = [(r.id, cmd) for r in RULES for cmd in r.tests.match]
NEGATIVE = [(r.id, cmd) for r in RULES for cmd in r.tests.no_match]


@pytest.mark.parametrize(("rule_id", "command"), POSITIVE)
def test_rule_matches_its_examples(guard: Guard, rule_id: str, command: str) -> None:
    decision = guard.check(command)
    assert rule_id in {f.rule_id for f in decision.findings}, decision.to_dict()
    assert decision.verdict != "allow"


@pytest.mark.parametrize(("rule_id", "command"), NEGATIVE)
def test_rule_ignores_its_counter_examples(guard: Guard, rule_id: str, command: str) -> None:
    decision = guard.check(command)
    assert rule_id not in {f.rule_id for f in decision.findings}, decision.to_dict()


def test_every_rule_has_positive_and_negative_examples() -> None:
    lacking = [r.id for r in RULES if not r.tests.match or not r.tests.no_match]
    assert lacking == []


def test_every_required_category_has_rules() -> None:
    counts = Counter(r.category for r in RULES)
    required = set(Category) - {Category.OTHER}
    assert {c for c in required if counts[c] == 0} == set()


def test_rule_ids_are_unique_and_namespaced() -> None:
    ids = [r.id for r in RULES]
    assert len(ids) == len(set(ids))
    assert all("." in i for i in ids)


def test_attack_ids_cover_the_techniques_the_issue_names() -> None:
    attacks = {r.attack for r in RULES}
    wanted = {
        "T1496", "T1572", "T1059.004", "T1046", "T1053.003", "T1543.002", "T1546.004",
        "T1098.004", "T1548", "T1552.001", "T1552.004", "T1552.005", "T1048", "T1041",
        "T1562.001", "T1070.003", "T1105", "T1090",
    }  # fmt: skip
    assert wanted - attacks == set()
