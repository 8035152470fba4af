"""What the gateway knows about one attached sandbox, and how it reports on it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from corral.events import Event, EventKind, EventSink
from corral.gateway.dns import NameBindings
from corral.gateway.pidmap import PidFinder
from corral.gateway.pool import Slot
from corral.gateway.rules import CompiledPolicy
from corral.gateway.signals import ScanDetector, Signal


def endpoint(addr: tuple[Any, ...]) -> str:
    """``ip:port``, or ``[ip]:port`` for IPv6."""
    host = str(addr[0])
    return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"


class Session:
    """One sandbox's state in the gateway: policy, DNS bindings, detectors, open flows."""

    #: Flows a single sandbox may have open through the gateway at once.
    MAX_FLOWS = 1024

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
        self._udp_window = 0.0
        self._udp_events = 0
        self.udp_suppressed = 0

    # --- reporting ----------------------------------------------------------------

    def emit(self, kind: EventKind, data: dict[str, Any], pid: int | None = None) -> None:
        self.sink.emit(
            Event(
                kind=kind,
                sandbox_id=self.sandbox_id,
                episode_id=self.episode_id,
                step=self.step(),
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
    ) -> int | None:
        """Emits a NET_SIGNAL; looks the pid up first (while the socket still exists)."""
        if pid is None:
            pid = await self.pid_of(transport, local)
        data: dict[str, Any] = {
            "signal": signal.signal,
            "severity": str(signal.severity),
            **signal.details,
        }
        self.emit(EventKind.NET_SIGNAL, data, pid)
        return pid

    def udp_event_allowed(self, *, per_second: int = 50) -> bool:
        """Rate-limits UDP drop events so a flood cannot flood the audit log."""
        now = time.monotonic()
        if now - self._udp_window >= 1.0:
            self._udp_window, self._udp_events = now, 0
        self._udp_events += 1
        if self._udp_events > per_second:
            self.udp_suppressed += 1
            return False
        return True

    # --- flows ---------------------------------------------------------------------

    def track(self, task: asyncio.Task[Any]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @property
    def at_capacity(self) -> bool:
        return len(self.tasks) >= self.MAX_FLOWS

    async def cancel_flows(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["Session", "endpoint"]
