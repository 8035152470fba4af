"""A bounded store of each sandbox's violations, read by cursor so each is reported once."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(slots=True)
class Violation:
    """One alert as the agent is told about it. ``action`` is filled in once the response ran."""

    alert_id: str
    time: float
    detector: str
    rule_id: str
    category: str
    severity: str
    attack: str
    explanation: str
    pid: int | None
    step: int | None
    argv: list[str] | None
    action: str | None = None
    seq: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ViolationStore:
    """Keeps the newest ``maxlen`` violations; ``dropped`` counts those pushed out."""

    def __init__(self, maxlen: int) -> None:
        self._items: deque[Violation] = deque(maxlen=maxlen)
        self._next_seq = 1
        self._lock = threading.Lock()
        self.dropped = 0

    def add(self, violation: Violation) -> None:
        with self._lock:
            if len(self._items) == self._items.maxlen:
                self.dropped += 1
            violation.seq = self._next_seq
            self._next_seq += 1
            self._items.append(violation)

    def since(self, cursor: int) -> tuple[list[dict[str, Any]], int]:
        """Violations with ``seq > cursor``, oldest first, and the cursor to pass next time."""
        with self._lock:
            out = [v.to_dict() for v in self._items if v.seq > cursor]
            return out, self._next_seq - 1
