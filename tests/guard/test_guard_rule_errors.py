"""Bad rule files fail loudly, naming the file, the rule and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import PolicyError
from corral.guard import Guard, GuardRuleError, compile_rules, parse_rule_text
from corral.policy import GuardPolicy

GOOD = """
rules:
  - id: custom.no-cowsay
    category: other
    severity: low
    attack: T1059
    verdict: ask
    description: No cows.
    match:
      program: [cowsay]
    tests:
      match: ["cowsay hi"]
      no_match: ["echo hi"]
"""


def rule_with(**fields: str) -> str:
    lines = {
        "id": "custom.r",
        "category": "other",
        "severity": "low",
        "attack": "T1059",
        "verdict": "deny",
        "description": "x",
        "match": "{program: [cowsay]}",
    }
    lines.update(fields)
    body = "\n".join(f"    {k}: {v}" for k, v in lines.items() if v != "")
    return "rules:\n  - " + body.lstrip() + "\n"


def error_of(text: str, file: str = "rules.yaml") -> GuardRuleError:
    with pytest.raises(GuardRuleError) as info:
        parse_rule_text(text, file)
    return info.value


def test_good_file_loads() -> None:
    (loaded,) = parse_rule_text(GOOD, "good.yaml")
    assert loaded.rule.id == "custom.no-cowsay"
    assert loaded.file == "good.yaml"


def test_yaml_syntax_error_names_file_and_line() -> None:
    err = error_of("rules:\n  - id: [unclosed\n", "broken.yaml")
    assert err.file == "broken.yaml"
    assert "line" in str(err)
    assert isinstance(err, PolicyError)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"colour": "red"}, "colour"),
        ({"severity": "apocalyptic"}, "severity"),
        ({"verdict": "allow"}, "verdict"),
        ({"attack": "T99"}, "attack"),
        ({"category": "stuff"}, "category"),
        ({"match": "{program: cowsay}"}, "match.program"),
        ({"match": "{args: ['(unclosed']}"}, "match.args"),
        ({"match": "{program: [cowsay], frobnicate: [x]}"}, "match.frobnicate"),
        ({"match": "{background: true}"}, "match"),
        ({"match": "{program: ['*']}"}, "match.program"),
        ({"match": "{hosts: ['*.com']}"}, "match.hosts"),
        ({"match": "{flags: ['R']}"}, "match.flags"),
        ({"match": "{text: ['x'], program: [ls]}"}, "match"),
        ({"match": "{program: []}"}, "match.program"),
        ({"description": ""}, "description"),
    ],
)
def test_invalid_fields_name_rule_and_field(fields: dict[str, str], field: str) -> None:
    err = error_of(rule_with(**fields), "custom.yaml")
    assert err.file == "custom.yaml"
    assert err.rule_id == "custom.r"
    assert err.field == field, str(err)
    assert "custom.yaml" in str(err) and "custom.r" in str(err) and field in str(err)


def test_bad_regex_message_shows_the_pattern() -> None:
    err = error_of(rule_with(match="{args: ['(unclosed']}"))
    assert "(unclosed" in str(err)


def test_rule_without_id_is_named_by_position() -> None:
    err = error_of(rule_with(id=""))
    assert err.rule_id == "#1" and err.field == "id"


def test_duplicate_id_in_one_file() -> None:
    text = rule_with() + rule_with().replace("rules:\n", "")
    err = error_of(text)
    assert err.rule_id == "custom.r" and err.field == "id"


def test_duplicate_of_a_builtin_id_names_both_files(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(rule_with(id="crypto.miner-binary"))
    with pytest.raises(GuardRuleError) as info:
        compile_rules([path])
    assert info.value.file == str(path)
    assert "cryptomining.yaml" in str(info.value)


def test_top_level_must_be_rules_list() -> None:
    assert error_of("- id: x\n").field == "rules"
    assert error_of("rules: {}\n").field == "rules"
    assert error_of("rules: []\nextra: 1\n").field == "rules"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GuardRuleError) as info:
        compile_rules([tmp_path / "nope.yaml"])
    assert "nope.yaml" in str(info.value)


def test_unknown_disabled_rule_is_an_error() -> None:
    with pytest.raises(GuardRuleError) as info:
        Guard(GuardPolicy(disabled_rules=["crypto.no-such-rule"]))
    assert info.value.rule_id == "crypto.no-such-rule"


def test_user_rule_file_extends_and_disabled_rules_turn_off(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(GOOD)
    guard = Guard(GuardPolicy(rule_files=[str(path)], disabled_rules=["privesc.sudo"]))
    assert guard.check("cowsay moo").findings[0].rule_id == "custom.no-cowsay"
    assert guard.check("sudo ls").verdict == "allow"


def test_edited_rule_file_is_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(GOOD)
    assert Guard(GuardPolicy(rule_files=[str(path)])).check("cowsay").verdict == "ask"
    path.write_text(GOOD.replace("verdict: ask", "verdict: deny") + "\n")
    assert Guard(GuardPolicy(rule_files=[str(path)])).check("cowsay").verdict == "deny"
