"""What one command in a sandbox returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class KillReason(StrEnum):
    TIMEOUT = "timeout"  # the command's own wall-time limit
    SANDBOX_TIMEOUT = "sandbox_timeout"  # the sandbox's wall-time limit
    MEMORY = "memory"  # the cgroup's OOM killer
    CLOSED = "closed"  # the sandbox was closed while the command ran
    MONITOR = "monitor"  # a detector's response killed it
    UNRESPONSIVE = "unresponsive"  # the sandbox stopped answering


@dataclass(frozen=True, slots=True)
class ExecResult:
    """The outcome of one command.

    ``exit_code`` follows the shell: the status for a normal exit, 128 + N when
    killed by signal N (``signal`` is then N). ``truncated`` means output went
    past the policy's output cap and only the first bytes are kept. ``denied``
    means the guard refused the command and it never ran; ``violations`` holds
    what the guard, monitor or gateway found, one dict each.
    """

    exit_code: int
    stdout: str
    stderr: str
    duration: float
    truncated: bool = False
    kill_reason: KillReason | None = None
    signal: int | None = None
    cpu_time: float = 0.0
    max_rss: int = 0
    step: int | None = None
    pid: int | None = None
    denied: bool = False
    violations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.kill_reason is None

    @property
    def output(self) -> str:
        """stdout followed by stderr, the way an agent usually wants to read it."""
        return self.stdout + self.stderr
