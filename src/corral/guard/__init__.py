"""The guard: authorizes every command before it runs.

Parse the command into the programs it would run (:mod:`parser`), match them
against data-driven rules (:mod:`rules`, :mod:`matchers`), decide deny > ask >
allow (:mod:`engine`), ask a human or service when needed (:mod:`approval`) and
tell the agent why (:mod:`explain`).
"""

from corral.guard.approval import (
    ApprovalError,
    Approver,
    CallbackApprover,
    CliApprover,
    WebhookApprover,
)
from corral.guard.decision import UNPARSABLE_RULE, Decision, Finding
from corral.guard.engine import Guard, compile_rules
from corral.guard.explain import GuardResult, decision_event, explain
from corral.guard.invocation import Invocation, ParsedCommand, ParseMode, Redirect, Source
from corral.guard.matchers import RuleSet
from corral.guard.parser import parse_argv, parse_command
from corral.guard.rules import Category, GuardRuleError, Rule, Severity, parse_rule_text

__all__ = [
    "UNPARSABLE_RULE",
    "ApprovalError",
    "Approver",
    "CallbackApprover",
    "Category",
    "CliApprover",
    "Decision",
    "Finding",
    "Guard",
    "GuardResult",
    "GuardRuleError",
    "Invocation",
    "ParseMode",
    "ParsedCommand",
    "Redirect",
    "Rule",
    "RuleSet",
    "Severity",
    "Source",
    "WebhookApprover",
    "compile_rules",
    "decision_event",
    "explain",
    "parse_argv",
    "parse_command",
    "parse_rule_text",
]
