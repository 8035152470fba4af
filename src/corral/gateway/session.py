"""What the gateway knows about one attached sandbox, and how it reports on it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from corral.events import Event, EventKind, EventSink
from corral.gateway.dns import NameBindings
from corral.gateway.pidmap import PidFinder
from corral.gateway.pool import Slot
from corral.gateway.rules import CompiledPolicy
from corral.gateway.signals import SIGNAL_ATTACK, ScanDetector, Signal


def endpoint(addr: tuple[Any, ...]) -> str:
    """``ip:port``, or ``[ip]:port`` for IPv6."""
    host = str(addr[0])
    return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"


#: Reports per second kept for each kind; beyond that they are counted, not emitted.
REPORT_RATES: Mapping[str, int] = MappingProxyType(
    {"tcp": 200, "udp": 50, "other": 50, "dns": 200, "signal": 20}
)


class _Limiter:
    """At most ``per_second`` admissions per one-second window; counts the rest."""

    def __init__(self, per_second: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_second = per_second
        self._clock = clock
        self._window = 0.0
        self._count = 0
        self._dropped = 0

    def admit(self) -> int | None:
        now = self._clock()
        if now - self._window >= 1.0:
            self._window, self._count = now, 0
        self._count += 1
        if self._count > self._per_second:
            self._dropped += 1
            return None
        dropped, self._dropped = self._dropped, 0
        return dropped


class _Current:
    """Marker: no step was captured, ask ``step()`` now."""


CURRENT_STEP = _Current()


class Session:
    """One sandbox's state in the gateway: policy, DNS bindings, detectors, open flows."""

    #: Flows a single sandbox may have open through the gateway at once.
    MAX_FLOWS = 1024
    #: Flows all sandboxes of this process may have open at once: each holds a few fds and
    #: pipe buffers in the owner, so one sandbox alone must not be able to take them all.
    MAX_FLOWS_TOTAL = 4096
    _open_total = 0

    def __init__(
        self,
        *,
        sandbox_id: str,
        episode_id: str | None,
        policy: CompiledPolicy,
        sink: EventSink,
        step: Callable[[], int | None],
        slot: Slot,
    ) -> None:
        self.sandbox_id = sandbox_id
        self.episode_id = episode_id
        self.policy = policy
        self.sink = sink
        self.step = step
        self.slot = slot
        self.bindings = NameBindings()
        self._pids = PidFinder(slot.inode)
        self.scan = ScanDetector(policy.thresholds)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closed = False
        self._limiters: dict[str, _Limiter] = {}

    # --- reporting ----------------------------------------------------------------

    def emit(
        self,
        kind: EventKind,
        data: dict[str, Any],
        pid: int | None = None,
        *,
        step: int | _Current | None = CURRENT_STEP,
    ) -> None:
        """Emits one event. ``step``: the agent step that caused it, if captured earlier
        (a flow's events all carry the step it was opened in); else the current one."""
        self.sink.emit(
            Event(
                kind=kind,
                sandbox_id=self.sandbox_id,
                episode_id=self.episode_id,
                step=self.step() if isinstance(step, _Current) else step,
                pid=pid,
                data=data,
            )
        )

    async def pid_of(self, transport: str, local: tuple[Any, ...] | None) -> int | None:
        """Host pid owning the sandbox socket at ``local`` (its source address)."""
        if local is None:
            return None
        ip, port = str(local[0]).split("%", 1)[0], int(local[1])
        return await asyncio.to_thread(self._pids.find, transport, ip, port)

    async def raise_signal(
        self,
        signal: Signal,
        *,
        transport: str,
        local: tuple[Any, ...] | None,
        pid: int | None = None,
        step: int | _Current | None = CURRENT_STEP,
    ) -> int | None:
        """Emits a NET_SIGNAL; looks the pid up first (while the socket still exists)."""
        dropped = self.admit_report(f"signal:{signal.signal}")
        if dropped is None:
            return pid
        if pid is None:
            pid = await self.pid_of(transport, local)
        data: dict[str, Any] = {
            "signal": signal.signal,
            "severity": str(signal.severity),
            "attack": SIGNAL_ATTACK.get(signal.signal, ""),
            **signal.details,
            "suppressed_before": dropped,
        }
        self.emit(EventKind.NET_SIGNAL, data, pid, step=step)
        return pid

    def admit_report(self, key: str) -> int | None:
        """Rate-limits events so a flooding sandbox cannot flood the audit log.

        ``key`` is "tcp", "udp", "dns" or "signal:<name>". Returns None to drop this
        event, else how many of its kind were dropped since the last one kept.
        """
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = self._limiters[key] = _Limiter(REPORT_RATES[key.split(":")[0]])
        return limiter.admit()

    # --- flows ---------------------------------------------------------------------

    def track(self, task: asyncio.Task[Any]) -> None:
        self.tasks.add(task)
        Session._open_total += 1
        task.add_done_callback(self._untrack)

    def _untrack(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        Session._open_total -= 1

    @property
    def at_capacity(self) -> bool:
        return (
            len(self.tasks) >= self.MAX_FLOWS
            or Session._open_total >= self.MAX_FLOWS_TOTAL
        )

    async def cancel_flows(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["CURRENT_STEP", "Session", "endpoint"]
