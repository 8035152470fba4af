"""Every exec and exit in a watched sandbox is recorded, however short-lived, with its lineage."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from corral.events import EventKind
from corral.monitor.proc_connector import ExecEvent, ForkEvent
from corral.monitor.process_table import ProcessTable
from corral.monitor.testing import LocalSandbox
from tests.monitor.helpers import Harness, wait_for


async def test_exec_and_exit_are_recorded_with_step_argv_and_exit_code(harness: Harness) -> None:
    sb = await harness.sandbox()
    pid = await harness.step(sb, 3, ["/bin/sh", "-c", "/bin/sleep 0.1; exit 7"])

    def exits() -> list:
        return [e for e in harness.of(EventKind.PROC_EXIT, sb) if e.pid == pid]

    await wait_for(exits)
    execs = harness.of(EventKind.PROC_EXEC, sb)
    top = next(e for e in execs if e.pid == pid)
    assert top.step == 3
    assert top.episode_id == sb.episode_id
    assert top.data["argv"] == ["/bin/sh", "-c", "/bin/sleep 0.1; exit 7"]
    assert top.data["uid"] == sb.uid
    sleep = next(e for e in execs if e.data["argv"] == ["/bin/sleep", "0.1"])
    assert sleep.step == 3  # inherited from the step's process through the fork
    assert sleep.data["ancestors"][0]["pid"] == pid
    exit_event = exits()[0]
    assert exit_event.data["exit_code"] == 7
    assert exit_event.data["duration_ms"] >= 0


async def test_a_5ms_process_is_seen(harness: Harness) -> None:
    sb = await harness.sandbox()
    pid = await harness.step(sb, 1, ["/bin/sh", "-c", "/bin/sleep 0.005"])
    await wait_for(lambda: [e for e in harness.of(EventKind.PROC_EXIT, sb) if e.pid == pid])

    execs = [
        e
        for e in harness.of(EventKind.PROC_EXEC, sb)
        if e.data["ancestors"] and e.data["ancestors"][0]["pid"] == pid
    ]
    assert len(execs) == 1
    assert execs[0].step == 1
    # Read in time on any reasonable host; without the cmdline it is still recorded.
    if execs[0].data["cmdline_available"]:
        assert execs[0].data["argv"] == ["/bin/sleep", "0.005"]
    await wait_for(
        lambda: [e for e in harness.of(EventKind.PROC_EXIT, sb) if e.pid == execs[0].pid]
    )
    ended = [e for e in harness.of(EventKind.PROC_EXIT, sb) if e.pid == execs[0].pid]
    assert ended[0].data["exit_code"] == 0
    assert ended[0].data["duration_ms"] >= 5


async def test_a_burst_of_500_short_processes_is_all_seen(harness: Harness) -> None:
    sb = await harness.sandbox()
    script = "i=0; while [ $i -lt 500 ]; do /bin/true & i=$((i+1)); done; wait"
    pid = await harness.step(sb, 1, ["/bin/sh", "-c", script])
    await wait_for(lambda: [e for e in harness.of(EventKind.PROC_EXIT, sb) if e.pid == pid], 30)
    await asyncio.sleep(0.3)  # the last exits are still on their way to the loop
    children = [
        e
        for e in harness.of(EventKind.PROC_EXEC, sb)
        if e.data["ancestors"] and e.data["ancestors"][0]["pid"] == pid
    ]
    # Every one is seen; a /bin/true lives ~0.3 ms, so some are gone before
    # their cmdline can be read and are recorded without it.
    assert len({e.pid for e in children}) == 500
    assert all(e.step == 1 for e in children)
    read = [e.data["argv"] for e in children if e.data["cmdline_available"]]
    assert read
    assert all(argv == ["/bin/true"] for argv in read)
    assert harness.monitor.stats["lost"] == 0


async def test_lineage_survives_daemonizing(harness: Harness) -> None:
    sb = await harness.sandbox()
    # The step's shell exits at once; its grandchild is re-parented to init.
    await harness.step(sb, 4, ["/bin/sh", "-c", "(/bin/sleep 0.4 && /bin/sleep 0.3) & exit 0"])
    await harness.step(sb, 5, ["/bin/sleep", "0.1"])

    def late_sleep() -> list:
        return [
            e
            for e in harness.of(EventKind.PROC_EXEC, sb)
            if e.data["argv"] == ["/bin/sleep", "0.3"]
        ]

    await wait_for(late_sleep)
    event = late_sleep()[0]
    assert event.step == 4
    assert len(event.data["ancestors"]) >= 2


async def test_processes_already_running_when_watched_are_adopted(harness: Harness) -> None:
    sb = LocalSandbox()
    try:
        sb.start()
        pid = await sb.spawn(["/bin/sleep", "5"])
        await asyncio.sleep(0.2)
        await harness.monitor.watch(sb)
        await wait_for(lambda: [e for e in harness.of(EventKind.PROC_EXEC, sb) if e.pid == pid])
        procs = harness.monitor.processes(sb.sandbox_id)
        assert any(p["pid"] == pid and p["lineage"] == "scan" for p in procs)
    finally:
        await sb.close()


def test_exec_of_a_process_already_gone_is_recorded_without_cmdline() -> None:
    table = ProcessTable()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    gone = subprocess.Popen(["/bin/true"])
    gone.wait()
    try:
        table.watch_uid(os.getuid(), "sb")
        table.on_fork(ForkEvent(1, sleeper.pid, sleeper.pid, gone.pid, gone.pid))
        notice = table.on_exec(ExecEvent(2, gone.pid, gone.pid))
        assert notice is not None
        assert notice.argv is None
        assert notice.record.ancestors[0][0] == sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()
