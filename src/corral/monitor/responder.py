"""Carrying out the policy's response to an alert, and timing it from the harm.

Actions escalate, never de-escalate: if a kill or a freeze cannot be carried
out, the episode is ended instead (fail closed). A kill with no process to
aim at (a file write or network signal with neither pid nor step) freezes
the sandbox rather than doing nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from corral.errors import CorralError
from corral.monitor import procfs
from corral.monitor.process_table import ProcessRecord, ProcessTable
from corral.monitor.watched import WatchedSandbox
from corral.policy import Action

ACTION_ORDER = {Action.LOG: 0, Action.KILL: 1, Action.FREEZE: 2, Action.END_EPISODE: 3}
# Processes may fork while being killed; look again for survivors this often.
_KILL_ROUNDS = 3
_KILL_WAIT = 0.25
# Long enough for the process-events reader to record forks that raced the first look.
_LATE_FORKS_WAIT = 0.02


@dataclass(slots=True)
class Outcome:
    action: Action
    ok: bool
    decided_ms: float | None
    latency_ms: float | None
    targets: list[int] = field(default_factory=list)
    error: str | None = None
    escalated_from: Action | None = None


class Responder:
    def __init__(self, table: ProcessTable, kill_scope: str) -> None:
        self._table = table
        self._kill_scope = kill_scope

    async def respond(
        self,
        sandbox: WatchedSandbox,
        action: Action,
        record: ProcessRecord | None,
        step: int | None,
        started_ns: int,
        reason: str,
    ) -> Outcome:
        decided = _ms_since(started_ns)
        targets: list[ProcessRecord] = []
        escalated_from: Action | None = None
        if action == Action.KILL:
            if record is None and (step is None or self._kill_scope != "step"):
                escalated_from, action = action, Action.FREEZE
            else:
                # Empty when everything harmful has already exited: nothing left to do.
                targets = self._kill_targets(sandbox, record, step)
        error = None
        killed: list[ProcessRecord] = []
        acted_ns: int | None = None
        try:
            killed, acted_ns = await self._act(
                sandbox, action, targets, reason,
                again=lambda: self._kill_targets(sandbox, record, step),
            )
        except (CorralError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            if action in (Action.KILL, Action.FREEZE):
                escalated_from = escalated_from or action
                action = Action.END_EPISODE
                try:
                    await self._act(sandbox, action, [], f"{reason} (after failed response)")
                except (CorralError, OSError) as exc2:
                    error += f"; end_episode: {type(exc2).__name__}: {exc2}"
                else:
                    error += "; escalated to end_episode"
        ok = error is None or error.endswith("escalated to end_episode")
        return Outcome(
            action=action,
            ok=ok,
            decided_ms=decided,
            # Until the harmful processes were gone, not until stragglers were swept.
            latency_ms=_ms_since(started_ns, acted_ns),
            targets=[t.pid for t in (killed or targets)],
            error=error,
            escalated_from=escalated_from,
        )

    async def _act(
        self,
        sandbox: WatchedSandbox,
        action: Action,
        targets: list[ProcessRecord],
        reason: str,
        *,
        again: Callable[[], list[ProcessRecord]] | None = None,
    ) -> tuple[list[ProcessRecord], int | None]:
        """Carry out ``action``. For a kill, return every process it killed and when the
        first targets were gone (monotonic ns); otherwise ``([], None)``.

        ``again`` recomputes the kill set after each round: a fork made just before the
        kill may reach the process table only after the first look.
        """
        handle = sandbox.handle
        if action == Action.LOG:
            return [], None
        if action == Action.KILL:
            killed = {t.key: t for t in targets}
            acted_ns: int | None = None
            for _ in range(_KILL_ROUNDS):
                for target in targets:
                    await handle.kill_tree(target.pid)
                # SIGKILL is delivered asynchronously; give the kernel a moment.
                deadline = time.monotonic() + _KILL_WAIT
                while targets and time.monotonic() < deadline:
                    targets = [t for t in targets if procfs.is_running(t.pid, t.start_ticks)]
                    if targets:
                        await asyncio.sleep(0.005)
                if acted_ns is None and not targets:
                    acted_ns = time.monotonic_ns()
                if again is not None:
                    await asyncio.sleep(_LATE_FORKS_WAIT)
                    late = [t for t in again() if procfs.is_running(t.pid, t.start_ticks)]
                    targets += [t for t in late if t.key not in {x.key for x in targets}]
                    killed.update((t.key, t) for t in late)
                if not targets:
                    return list(killed.values()), acted_ns
            raise OSError(f"processes survived {_KILL_ROUNDS} kill rounds: {targets}")
        if action == Action.FREEZE:
            await handle.freeze()
            sandbox.frozen = True
            return [], None
        sandbox.ended = True
        await handle.end_episode(reason)
        return [], None

    def _kill_targets(
        self, sandbox: WatchedSandbox, record: ProcessRecord | None, step: int | None
    ) -> list[ProcessRecord]:
        """Every live process to kill, by lineage: re-parented daemons are not missed."""
        members: list[ProcessRecord] = []
        if self._kill_scope == "step" and step is not None:
            members = self._table.step_members(sandbox.sandbox_id, step)
        if record is not None:
            members += [record, *self._table.descendants(record)]
        seen: set[int] = set()
        unique = []
        for m in sorted(members, key=lambda r: len(r.ancestor_keys)):
            if m.key not in seen and m.alive:
                seen.add(m.key)
                unique.append(m)
        return unique


def _ms_since(started_ns: int, until_ns: int | None = None) -> float:
    end = time.monotonic_ns() if until_ns is None else until_ns
    return round((end - started_ns) / 1e6, 3)
