"""The agent is told about its violations, each once, from a bounded store."""

from __future__ import annotations

from corral.monitor.violations import Violation, ViolationStore
from corral.policy import Action
from tests.monitor.helpers import BURNER, POOL, PYTHON, Harness, respond_all, wait_for


def _v(n: int) -> Violation:
    return Violation(f"a{n}", 0.0, "d", "r", "c", "high", "T0", "x", None, None, None)


def test_store_is_bounded_and_read_by_cursor() -> None:
    store = ViolationStore(maxlen=2)
    for n in range(3):
        store.add(_v(n))
    items, cursor = store.since(0)
    assert [i["alert_id"] for i in items] == ["a1", "a2"]
    assert store.dropped == 1
    assert store.since(cursor) == ([], cursor)
    store.add(_v(3))
    items, cursor2 = store.since(cursor)
    assert [i["alert_id"] for i in items] == ["a3"]
    assert cursor2 == cursor + 1


async def test_violations_carry_what_the_agent_needs(harness: Harness) -> None:
    sb = await harness.sandbox(respond_all(Action.KILL))
    pid = await harness.step(sb, 4, [PYTHON, "-c", BURNER, POOL])

    def with_action() -> list:
        items, _ = harness.monitor.violations_since(sb.sandbox_id, 0)
        return [i for i in items if i["action"]]

    await wait_for(with_action)
    items, cursor = harness.monitor.violations_since(sb.sandbox_id, 0)
    item = next(i for i in items if i["rule_id"] == "miner.pool_url")
    assert item["pid"] == pid
    assert item["step"] == 4
    assert item["severity"] == "critical"
    assert item["attack"] == "T1496"
    assert item["action"] == "kill"
    assert POOL in item["argv"]
    assert harness.monitor.violations_since(sb.sandbox_id, cursor) == ([], cursor)
    assert harness.monitor.violations_since("no-such-sandbox") == ([], 0)
