"""Events: one typed record of what happened, and the sinks it flows to."""

from corral.events.model import Event, EventKind
from corral.events.sinks import CallbackSink, EventSink, FanoutSink, JsonlSink, MemorySink, NullSink

__all__ = [
    "CallbackSink",
    "Event",
    "EventKind",
    "EventSink",
    "FanoutSink",
    "JsonlSink",
    "MemorySink",
    "NullSink",
]
