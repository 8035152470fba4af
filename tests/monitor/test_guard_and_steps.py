"""The guard's rules at run time, and attribution of events to the step that caused them."""

from __future__ import annotations

import asyncio

from corral.events import Event, EventKind
from corral.policy import Action, GuardPolicy, Verdict
from tests.monitor.helpers import GuardResult, Harness, alive, respond_all, wait_for


def _broken_guard(argv: list[str]) -> GuardResult:
    raise ValueError("cannot parse")


def _asking_guard(argv: list[str]) -> GuardResult:
    return GuardResult("ask")


async def test_a_guard_that_cannot_judge_fails_closed(make_harness: object) -> None:
    harness: Harness = await make_harness(check_argv=_broken_guard)  # type: ignore[operator]
    sb = await harness.sandbox(respond_all(Action.KILL))
    pid = await harness.step(sb, 1, ["/bin/sleep", "20"])
    await wait_for(lambda: harness.alerts(sb, "guard.unparsable"))
    await wait_for(lambda: not alive(pid))


async def test_unparsable_allowed_by_policy_is_not_an_alert(make_harness: object) -> None:
    harness: Harness = await make_harness(check_argv=_broken_guard)  # type: ignore[operator]
    policy = respond_all(Action.KILL).model_copy(
        update={"guard": GuardPolicy(unparsable=Verdict.ALLOW)}
    )
    sb = await harness.sandbox(policy)
    pid = await harness.step(sb, 1, ["/bin/sleep", "20"])
    await asyncio.sleep(0.4)
    assert not harness.alerts(sb)
    assert alive(pid)


async def test_ask_at_run_time_is_recorded_not_alerted(make_harness: object) -> None:
    harness: Harness = await make_harness(check_argv=_asking_guard)  # type: ignore[operator]
    sb = await harness.sandbox(respond_all(Action.KILL))
    pid = await harness.step(sb, 1, ["/bin/sleep", "20"])
    await wait_for(lambda: harness.of(EventKind.PROC_EXEC, sb))
    assert harness.of(EventKind.PROC_EXEC, sb)[0].data["guard_verdict"] == "ask"
    assert not harness.alerts(sb)
    assert alive(pid)


async def test_events_wait_briefly_for_a_late_exec_start(harness: Harness) -> None:
    sb = await harness.sandbox()
    pid = await sb.spawn(["/bin/sleep", "20"])
    await asyncio.sleep(0.1)  # the sandbox reports the step late
    assert not [e for e in harness.of(EventKind.PROC_EXEC, sb) if e.pid == pid]
    harness.monitor.emit(Event(EventKind.EXEC_START, sb.sandbox_id, step=9, pid=pid))
    await wait_for(lambda: [e for e in harness.of(EventKind.PROC_EXEC, sb) if e.pid == pid])
    assert next(e for e in harness.of(EventKind.PROC_EXEC, sb) if e.pid == pid).step == 9


async def test_without_exec_start_events_still_come_after_the_grace(harness: Harness) -> None:
    sb = await harness.sandbox()
    pid = await sb.spawn(["/bin/sleep", "20"])
    await wait_for(lambda: [e for e in harness.of(EventKind.PROC_EXEC, sb) if e.pid == pid])
    assert next(e for e in harness.of(EventKind.PROC_EXEC, sb) if e.pid == pid).step is None
