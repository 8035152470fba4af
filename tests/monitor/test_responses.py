"""Each response action, carried out on a real sandbox, and recorded with its latency."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from corral.errors import SandboxClosed, SandboxError
from corral.events import EventKind
from corral.monitor.testing import LocalSandbox
from corral.policy import Action
from tests.monitor.helpers import BURNER, POOL, PYTHON, Harness, alive, respond_all, wait_for

MINER = [PYTHON, "-c", BURNER, POOL]


async def _response(harness: Harness, sb: LocalSandbox) -> dict:
    await wait_for(lambda: harness.of(EventKind.RESPONSE, sb))
    event = harness.of(EventKind.RESPONSE, sb)[0]
    assert event.data["latency_ms"] >= event.data["decided_ms"] >= 0
    assert event.data["latency_from"] == "exec"
    assert event.data["alert_ids"]
    return event.data


async def test_log_only_records(harness: Harness) -> None:
    sb = await harness.sandbox(respond_all(Action.LOG))
    pid = await harness.step(sb, 1, MINER)
    data = await _response(harness, sb)
    assert data["action"] == "log"
    assert sb.actions == []
    assert alive(pid)


async def test_kill_takes_the_whole_step_and_nothing_else(harness: Harness) -> None:
    sb = await harness.sandbox(respond_all(Action.KILL))
    other = await harness.step(sb, 1, ["/bin/sleep", "20"])
    top = await harness.step(
        sb, 2, ["/bin/sh", "-c", '/bin/sleep 20 & /bin/sleep 20 & exec "$@"', "sh", *MINER]
    )
    data = await _response(harness, sb)
    assert data["action"] == "kill"
    assert top in data["targets"]
    await wait_for(lambda: not any(p["alive"] and p["step"] == 2 for p in _procs(harness, sb)))
    assert alive(other)


async def test_freeze_stops_the_sandbox_in_place(harness: Harness) -> None:
    sb = await harness.sandbox(respond_all(Action.FREEZE))
    pid = await harness.step(sb, 1, MINER)
    data = await _response(harness, sb)
    assert data["action"] == "freeze"
    state = Path(f"/sys/fs/cgroup/freezer/corral-test-{sb.sandbox_id}/freezer.state")
    await wait_for(lambda: state.read_text().strip() == "FROZEN")
    assert alive(pid)  # stopped, not killed: there for inspection


async def test_end_episode_kills_everything_and_closes(harness: Harness) -> None:
    sb = await harness.sandbox(respond_all(Action.END_EPISODE))
    other = await harness.step(sb, 1, ["/bin/sleep", "20"])
    await harness.step(sb, 2, MINER)
    data = await _response(harness, sb)
    assert data["action"] == "end_episode"
    await wait_for(lambda: not sb.pids())
    assert not alive(other)
    with pytest.raises(SandboxClosed):
        await sb.spawn(["/bin/true"])


class _KillFails(LocalSandbox):
    async def kill_tree(self, pid: int) -> None:
        raise SandboxError("kill refused")


async def test_a_failed_kill_escalates_to_ending_the_episode(harness: Harness) -> None:
    sb = _KillFails(respond_all(Action.KILL))
    try:
        sb.start()
        await harness.monitor.watch(sb)
        await harness.step(sb, 1, MINER)
        data = await _response(harness, sb)
        assert data["action"] == "end_episode"
        assert data["escalated_from"] == "kill"
        assert "kill refused" in data["error"]
        assert data["ok"] is True
        assert sb.closed_reason is not None
    finally:
        await sb.close()


async def test_no_second_response_once_the_episode_ended(harness: Harness) -> None:
    sb = await harness.sandbox(respond_all(Action.END_EPISODE))
    await harness.step(sb, 1, MINER)
    await _response(harness, sb)
    await asyncio.sleep(0.1)
    violations, _ = harness.monitor.violations_since(sb.sandbox_id)
    assert len(harness.of(EventKind.RESPONSE, sb)) == 1
    assert {v["action"] for v in violations} <= {"end_episode", "already_ended"}


def _procs(harness: Harness, sb: LocalSandbox) -> list[dict]:
    return harness.monitor.processes(sb.sandbox_id)
