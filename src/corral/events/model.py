"""The one platform-neutral event type shared by sandbox, gateway, guard, monitor and audit."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class EventKind(StrEnum):
    """What happened. Grouped by the part of Corral that emits it."""

    # sandbox
    SANDBOX_CREATED = "sandbox.created"
    SANDBOX_CLOSED = "sandbox.closed"
    EXEC_START = "exec.start"
    EXEC_END = "exec.end"
    LIMIT_HIT = "limit.hit"
    KILL = "kill"
    # gateway
    NET_CONNECT = "net.connect"
    NET_DNS = "net.dns"
    NET_SIGNAL = "net.signal"
    # guard
    GUARD_VERDICT = "guard.verdict"
    # monitor
    PROC_EXEC = "proc.exec"
    PROC_EXIT = "proc.exit"
    ALERT = "alert"
    RESPONSE = "response"


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened in or around a sandbox.

    ``step`` is the index of the agent action in the episode that caused it,
    and ``pid`` the host pid of the process involved, when known.
    """

    kind: EventKind
    sandbox_id: str
    episode_id: str | None = None
    step: int | None = None
    pid: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["kind"] = str(self.kind)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Event:
        return cls(
            kind=EventKind(raw["kind"]),
            sandbox_id=raw["sandbox_id"],
            episode_id=raw.get("episode_id"),
            step=raw.get("step"),
            pid=raw.get("pid"),
            data=dict(raw.get("data") or {}),
            time=float(raw["time"]),
        )
