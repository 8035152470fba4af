"""Corral's one error tree.

    CorralError                  base of everything Corral raises on purpose
    ├── PolicyError              a policy (file, profile name or override) is invalid
    ├── SandboxError             a sandbox could not be created, used or cleaned up
    │   ├── SandboxUnavailable   the host lacks a mechanism Corral needs (bwrap, cgroups, ...)
    │   └── SandboxClosed        the sandbox was closed or killed; no further use
    ├── GatewayError             the egress gateway could not start or relay (fails closed)
    ├── GuardDenied              the guard refused an action before it ran
    └── AuditError               a record could not be written or read back

Every error carries the context needed to print one clear line; the CLI is the
only place that turns these into messages and exit codes.
"""

from __future__ import annotations


class CorralError(Exception):
    """Base class for every error Corral raises deliberately."""


class PolicyError(CorralError):
    """A policy is invalid. ``source`` names the file, profile or flag it came from."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        detail = "; ".join(problems) if len(problems) == 1 else "\n  " + "\n  ".join(problems)
        super().__init__(f"invalid policy {source}: {detail}")


class SandboxError(CorralError):
    """A sandbox could not be created, used or cleaned up."""


class SandboxUnavailable(SandboxError):
    """The host is missing something the sandbox needs; nothing was started."""


class SandboxClosed(SandboxError):
    """The sandbox was closed or killed (``reason`` says why) and can't be used."""

    def __init__(self, sandbox_id: str, reason: str) -> None:
        self.sandbox_id = sandbox_id
        self.reason = reason
        super().__init__(f"sandbox {sandbox_id} is closed ({reason})")


class GatewayError(CorralError):
    """The egress gateway failed; the sandbox it serves must not start or go on."""


class GuardDenied(CorralError):
    """The guard refused an action before it ran."""

    def __init__(self, rule_id: str, explanation: str) -> None:
        self.rule_id = rule_id
        self.explanation = explanation
        super().__init__(f"denied by {rule_id}: {explanation}")


class AuditError(CorralError):
    """A record could not be written or read back."""


__all__ = [
    "AuditError",
    "CorralError",
    "GatewayError",
    "GuardDenied",
    "PolicyError",
    "SandboxClosed",
    "SandboxError",
    "SandboxUnavailable",
]
