"""Where events go. A sink is anything with ``emit(event)``; it must not block for long."""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol, TextIO, runtime_checkable

from corral.events.model import Event, EventKind


@runtime_checkable
class EventSink(Protocol):
    def emit(self, event: Event) -> None: ...


class NullSink:
    """Drops every event."""

    def emit(self, event: Event) -> None:
        return None


class MemorySink:
    """Keeps the newest ``maxlen`` events in memory and notifies subscribers.

    Bounded so a noisy sandbox cannot exhaust the owner's memory; ``dropped``
    counts what fell off the front.
    """

    def __init__(self, maxlen: int = 100_000) -> None:
        self._events: deque[Event] = deque(maxlen=maxlen)
        self._subscribers: list[Callable[[Event], None]] = []
        self._lock = threading.Lock()
        self.dropped = 0

    def emit(self, event: Event) -> None:
        with self._lock:
            if len(self._events) == self._events.maxlen:
                self.dropped += 1
            self._events.append(event)
            subscribers = list(self._subscribers)
        for callback in subscribers:
            callback(event)

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers.remove(callback)

        return unsubscribe

    @property
    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    def of_kind(self, *kinds: EventKind) -> list[Event]:
        return [e for e in self.events if e.kind in kinds]


class JsonlSink:
    """Appends one JSON object per line, flushed per event so a crash loses nothing."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        line = json.dumps(event.to_dict(), separators=(",", ":"), default=str)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()

    @staticmethod
    def read(path: str | Path) -> list[Event]:
        with Path(path).open(encoding="utf-8") as fh:
            return [Event.from_dict(json.loads(line)) for line in fh if line.strip()]


class CallbackSink:
    """Calls a function for every event."""

    def __init__(self, callback: Callable[[Event], None]) -> None:
        self._callback = callback

    def emit(self, event: Event) -> None:
        self._callback(event)


class FanoutSink:
    """Sends each event to several sinks, in order."""

    def __init__(self, sinks: Iterable[EventSink]) -> None:
        self.sinks = list(sinks)

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            sink.emit(event)
