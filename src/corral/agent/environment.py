"""Environment: one episode's guarded execution.

Every action passes the guard before it runs, runs in the episode's sandbox (behind
the gateway in network mode ``gateway``), and is watched by the monitor while it and
anything it started keep running. What the guard refused or the monitor caught comes
back in the action's result as one structured ``violations`` block, so the agent (and
the reward) sees it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from corral.events import EventSink, FanoutSink, NullSink
from corral.guard import Approver, Decision, Guard, decision_event, explain
from corral.policy import Policy, Verdict, load_policy
from corral.sandbox import AsyncSandbox, ExecResult, GatewayLike, KillReason, OutputCallback

# Exit status of a command the guard did not let run (the shell's "cannot execute").
DENIED_EXIT_CODE = 126
# How long a result waits for the monitor to finish judging what the command started.
_MONITOR_SETTLE_S = 0.05


class MonitorLike(Protocol):
    def emit(self, event: Any) -> None: ...
    async def watch(self, handle: Any, *, expected_workload: Iterable[str] = ()) -> None: ...
    async def unwatch(self, sandbox_id: str) -> None: ...
    def violations_since(
        self, sandbox_id: str, cursor: int = 0
    ) -> tuple[list[dict[str, Any]], int]: ...


def guard_violations(decision: Decision, step: int | None) -> list[dict[str, Any]]:
    return [
        {
            "source": "guard",
            "rule_id": f.rule_id,
            "category": f.category,
            "severity": f.severity,
            "attack": f.attack,
            "verdict": str(f.verdict),
            "explanation": f.explanation,
            "step": step,
            "pid": None,
            "action": "blocked" if decision.verdict != Verdict.ALLOW else "allowed",
        }
        for f in decision.findings
    ]


class Environment:
    """Guard + sandbox (+ gateway) + monitor for one episode. Create with :meth:`create`."""

    def __init__(
        self,
        sandbox: AsyncSandbox,
        *,
        guard: Guard | None,
        monitor: MonitorLike | None,
        sink: EventSink,
    ) -> None:
        self.sandbox = sandbox
        self.guard = guard
        self.monitor = monitor
        self.sink = sink
        self._cursor = 0
        self._next_step = 0

    @classmethod
    async def create(
        cls,
        policy: Policy | str | None = None,
        *,
        sink: EventSink | None = None,
        episode_id: str | None = None,
        gateway: GatewayLike | None = None,
        monitor: MonitorLike | None = None,
        guard: Guard | None = None,
        approver: Approver | None = None,
        expected_workload: Iterable[str] = (),
    ) -> Environment:
        """Start the episode's sandbox and put it under the guard and the monitor.

        ``guard`` defaults to one built from the policy (None when the policy disables
        it). ``monitor`` and ``gateway`` are shared per owner process; pass them in.
        """
        if not isinstance(policy, Policy):
            policy = load_policy(policy)
        if guard is None and policy.guard.enabled:
            guard = Guard(policy.guard, approver=approver)
        user_sink = sink or NullSink()
        fan = FanoutSink([user_sink, monitor]) if monitor is not None else user_sink
        sandbox = await AsyncSandbox.create(policy, sink=fan, episode_id=episode_id,
                                            gateway=gateway)
        env = cls(sandbox, guard=guard, monitor=monitor, sink=fan)
        if monitor is not None:
            try:
                await monitor.watch(sandbox, expected_workload=expected_workload)
            except BaseException:
                await sandbox.close()
                raise
        return env

    @property
    def policy(self) -> Policy:
        return self.sandbox.policy

    async def execute(
        self,
        command: str | Sequence[str],
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | str | None = None,
        step: int | None = None,
        on_output: OutputCallback | None = None,
    ) -> ExecResult:
        """Authorize, run and watch one action. A refused action is not run at all."""
        if step is None:
            step = self._next_step
        self._next_step = max(self._next_step, step + 1)
        started = time.monotonic()
        guard_block: list[dict[str, Any]] = []
        if self.guard is not None:
            decision = await self._authorize(command)
            self.sink.emit(decision_event(decision, self.sandbox.id,
                                          episode_id=self.sandbox.episode_id, step=step))
            guard_block = guard_violations(decision, step)
            if decision.verdict != Verdict.ALLOW:
                return ExecResult(
                    exit_code=DENIED_EXIT_CODE, stdout="", stderr=explain(decision).text + "\n",
                    duration=time.monotonic() - started, step=step, denied=True,
                    violations=guard_block,
                )
        result = await self.sandbox.exec(command, timeout=timeout, env=env, cwd=cwd, stdin=stdin,
                                         step=step, on_output=on_output)
        caught = await self._monitor_violations()
        kill = result.kill_reason
        if kill is None and any(v.get("step") == step and v.get("action") in
                                ("kill", "end_episode") for v in caught):
            kill = KillReason.MONITOR
        return dataclasses.replace(result, violations=guard_block + caught, kill_reason=kill)

    async def _authorize(self, command: str | Sequence[str]) -> Decision:
        if self.guard is None:
            raise RuntimeError("no guard")
        if isinstance(command, str):
            decision = self.guard.check(command)
        else:
            decision = self.guard.check_argv(list(command))
        if decision.verdict == Verdict.ASK:
            # Approvers may block on a human or a webhook: keep the event loop free.
            decision = await asyncio.to_thread(self.guard.resolve, decision)
        return decision

    async def _monitor_violations(self) -> list[dict[str, Any]]:
        if self.monitor is None:
            return []
        await asyncio.sleep(_MONITOR_SETTLE_S)
        found, self._cursor = self.monitor.violations_since(self.sandbox.id, self._cursor)
        return [{"source": "monitor", **v} for v in found]

    async def close(self) -> None:
        await self.sandbox.close()
        if self.monitor is not None:
            await self.monitor.unwatch(self.sandbox.id)

    async def __aenter__(self) -> Environment:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
