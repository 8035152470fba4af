"""``corral guard check``: verdicts, JSON lines, exit codes and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from corral.cli.guard_cmd import EXIT_ALLOW, EXIT_ASK, EXIT_DENY, EXIT_ERROR, guard_app

runner = CliRunner()


def test_allowed_command() -> None:
    result = runner.invoke(guard_app, ["check", "git status"])
    assert result.exit_code == EXIT_ALLOW
    assert result.output.startswith("ALLOW")


def test_denied_command_shows_rule_category_attack_and_explanation() -> None:
    result = runner.invoke(guard_app, ["check", "ssh -fNR 9000:localhost:22 x@y"])
    assert result.exit_code == EXIT_DENY
    for text in ("DENY", "tunnel.ssh-remote-forward", "tunneling", "T1572", "reverse SSH tunnel"):
        assert text in result.output


def test_ask_only_exit_code() -> None:
    assert runner.invoke(guard_app, ["check", "sudo ls"]).exit_code == EXIT_ASK


def test_stdin_lines_as_json() -> None:
    result = runner.invoke(guard_app, ["check", "--json", "-"], input="ls\nsudo ls\n\nnmap x\n")
    assert result.exit_code == EXIT_DENY
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [r["verdict"] for r in rows] == ["allow", "ask", "deny"]
    assert rows[2]["findings"][0]["attack"] == "T1046"


def test_policy_profile_option() -> None:
    result = runner.invoke(guard_app, ["check", "--policy", "strict", "echo 'oops"])
    assert result.exit_code == EXIT_DENY
    assert "guard.unparsable" in result.output


def test_bad_policy_is_one_clear_error() -> None:
    result = runner.invoke(guard_app, ["check", "--policy", "/no/such/policy.yaml", "ls"])
    assert result.exit_code == EXIT_ERROR
    assert "no such policy" in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bad_rule_file_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - id: x.y\n    category: nope\n")
    result = runner.invoke(guard_app, ["check", "--rules", str(bad), "ls"])
    assert result.exit_code == EXIT_ERROR
    assert "bad.yaml" in result.output and "x.y" in result.output
    assert "category" in result.output
    assert "Traceback" not in result.output


def test_policy_file_with_rule_files(tmp_path: Path) -> None:
    rules = tmp_path / "extra.yaml"
    rules.write_text(
        "rules:\n  - id: custom.cowsay\n    category: other\n    severity: low\n"
        "    attack: T1059\n    verdict: deny\n    description: No cows.\n"
        "    match: {program: [cowsay]}\n"
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"guard:\n  rule_files: ['{rules}']\n  disabled_rules: [privesc.sudo]\n")
    assert runner.invoke(guard_app, ["check", "-p", str(policy), "cowsay"]).exit_code == 1
    assert runner.invoke(guard_app, ["check", "-p", str(policy), "sudo ls"]).exit_code == 0


def test_terminal_escapes_in_commands_are_shown_not_obeyed() -> None:
    result = runner.invoke(guard_app, ["check", "ls \x1b[2J"])
    assert "\x1b" not in result.output and "\\x1b[2J" in result.output
