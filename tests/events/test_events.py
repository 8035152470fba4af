from __future__ import annotations

from pathlib import Path

from corral.events import CallbackSink, Event, EventKind, FanoutSink, JsonlSink, MemorySink


def test_jsonl_round_trip_and_append(tmp_path: Path) -> None:
    path = tmp_path / "ev.jsonl"
    e1 = Event(EventKind.EXEC_START, "sb-1", episode_id="ep", step=3, pid=42, data={"a": 1})
    sink = JsonlSink(path)
    sink.emit(e1)
    sink.close()
    # A second writer appends; nothing already recorded is lost.
    again = JsonlSink(path)
    again.emit(Event(EventKind.EXEC_END, "sb-1", step=3, data={"exit_code": 0}))
    again.close()
    events = JsonlSink.read(path)
    assert events[0] == e1
    assert [e.kind for e in events] == [EventKind.EXEC_START, EventKind.EXEC_END]


def test_memory_sink_is_bounded_and_counts_drops() -> None:
    sink = MemorySink(maxlen=3)
    for i in range(5):
        sink.emit(Event(EventKind.ALERT, "sb", step=i))
    assert [e.step for e in sink.events] == [2, 3, 4]
    assert sink.dropped == 2


def test_memory_sink_subscribe_and_filter() -> None:
    sink = MemorySink()
    seen: list[Event] = []
    unsubscribe = sink.subscribe(seen.append)
    sink.emit(Event(EventKind.KILL, "sb"))
    unsubscribe()
    sink.emit(Event(EventKind.ALERT, "sb"))
    assert len(seen) == 1
    assert [e.kind for e in sink.of_kind(EventKind.ALERT)] == [EventKind.ALERT]


def test_fanout_delivers_to_every_sink_in_order() -> None:
    calls: list[str] = []
    fan = FanoutSink([CallbackSink(lambda e: calls.append("a")),
                      CallbackSink(lambda e: calls.append("b"))])
    fan.emit(Event(EventKind.LIMIT_HIT, "sb"))
    assert calls == ["a", "b"]
