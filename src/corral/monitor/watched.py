"""What the monitor keeps per watched sandbox."""

from __future__ import annotations

from dataclasses import dataclass, field

from corral.monitor.detectors import ExpectedWorkload
from corral.monitor.handle import SandboxHandle
from corral.monitor.violations import ViolationStore


@dataclass(slots=True)
class WatchedSandbox:
    handle: SandboxHandle
    expected: ExpectedWorkload
    violations: ViolationStore
    running_steps: dict[int, int] = field(default_factory=dict)  # step -> top pid
    frozen: bool = False
    ended: bool = False
    alerts: int = 0
    gpu_over: dict[tuple[int, int], int] = field(default_factory=dict)  # (key, device) -> n

    @property
    def sandbox_id(self) -> str:
        return self.handle.sandbox_id

    def current_step(self) -> int | None:
        """The step most likely running now: the newest of those not yet ended."""
        if self.running_steps:
            return max(self.running_steps)
        return None
