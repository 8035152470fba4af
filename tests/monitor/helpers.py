"""Helpers for the monitor's behaviour tests: a fake guard, a harness, polling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from corral.events import Event, EventKind, MemorySink
from corral.monitor import Monitor, procfs
from corral.monitor.testing import BURNER_CODE, SIMULATED_MINER, SIMULATED_POOL, LocalSandbox
from corral.policy import Action, Policy, ResponsePolicy

# The simulated miner (a bounded CPU burner) and a pool URL nothing connects to.
BURNER = BURNER_CODE
POOL = SIMULATED_POOL
# The sandbox uid cannot reach the test runner's own interpreter (under /root).
PYTHON = SIMULATED_MINER[0]


@dataclass
class GuardResult:
    verdict: str
    findings: list[GuardFinding] = field(default_factory=list)


@dataclass
class GuardFinding:
    rule_id: str
    category: str
    severity: str
    attack: str
    explanation: str


def fake_guard(argv: list[str]) -> GuardResult:
    """A small stand-in for the guard's engine with the same result shape."""
    text = " ".join(argv)
    if "stratum+tcp://" in text or Path(argv[0]).name == "xmrig":
        return GuardResult(
            "deny",
            [GuardFinding("mining.stratum", "cryptomining", "critical", "T1496", "mining pool")],
        )
    if "nc -e" in text:
        return GuardResult(
            "deny", [GuardFinding("shell.reverse", "c2", "high", "T1059", "reverse shell")]
        )
    return GuardResult("allow")


def respond_all(action: Action) -> Policy:
    """A policy whose every severity gets ``action``."""
    return Policy(response=ResponsePolicy(low=action, medium=action, high=action, critical=action))


async def wait_for(predicate: Callable[[], object], timeout: float = 5.0) -> object:
    """Poll until ``predicate()`` is truthy; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout}s")


def alive(pid: int) -> bool:
    return procfs.is_running(pid)


class Harness:
    def __init__(self, sink: MemorySink, monitor: Monitor) -> None:
        self.sink = sink
        self.monitor = monitor
        self._sandboxes: list[LocalSandbox] = []

    async def sandbox(
        self, policy: Policy | None = None, expected: tuple[str, ...] = ()
    ) -> LocalSandbox:
        sb = LocalSandbox(policy)
        self._sandboxes.append(sb)
        sb.start()
        await self.monitor.watch(sb, expected_workload=expected)
        return sb

    async def step(self, sb: LocalSandbox, step: int, argv: list[str]) -> int:
        """Run one step the way the sandbox does: start it, then report EXEC_START."""
        pid = await sb.spawn(argv)
        self.monitor.emit(
            Event(EventKind.EXEC_START, sb.sandbox_id, sb.episode_id, step=step, pid=pid)
        )
        return pid

    def of(self, kind: EventKind, sb: LocalSandbox | None = None) -> list[Event]:
        return [e for e in self.sink.of_kind(kind) if sb is None or e.sandbox_id == sb.sandbox_id]

    def alerts(self, sb: LocalSandbox, rule_id: str | None = None) -> list[Event]:
        return [
            e
            for e in self.of(EventKind.ALERT, sb)
            if rule_id is None or e.data["rule_id"] == rule_id
        ]

    async def close(self) -> None:
        for sb in self._sandboxes:
            await sb.close()
