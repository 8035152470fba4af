"""The netlink process events connector: wire format, real events, overflow, resync."""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from corral.monitor.proc_connector import (
    CN_IDX_PROC,
    CN_VAL_PROC,
    ConnectorOverflow,
    ExecEvent,
    ExitEvent,
    ForkEvent,
    ProcConnector,
    UidEvent,
    What,
    parse_datagram,
)
from corral.monitor.process_table import ExecNotice, ExitNotice, LostNotice, ProcessTable
from corral.monitor.process_watcher import ProcessWatcher
from corral.monitor.procfs import read_argv, read_exe
from corral.monitor.testing import LocalSandbox
from tests.monitor.helpers import alive, wait_for


def _message(what: int, ts: int, body: bytes) -> bytes:
    event = struct.pack("=IIQ", what, 0, ts) + body.ljust(24, b"\0")
    cn = struct.pack("=IIIIHH", CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(event), 0) + event
    return struct.pack("=IHHII", 16 + len(cn), 3, 0, 0, 0) + cn


def test_parses_each_event_kind_and_skips_others() -> None:
    buf = (
        _message(What.FORK, 1, struct.pack("=iiii", 10, 10, 11, 11))
        + _message(What.EXEC, 2, struct.pack("=ii", 11, 11))
        + _message(What.UID, 3, struct.pack("=iiII", 11, 11, 2_100_000_001, 2_100_000_001))
        + _message(What.COMM, 4, struct.pack("=ii", 11, 11) + b"name")
        + _message(What.EXIT, 5, struct.pack("=iiIIii", 11, 11, 7 << 8, 17, 10, 10))
    )
    assert parse_datagram(buf) == [
        ForkEvent(1, 10, 10, 11, 11),
        ExecEvent(2, 11, 11),
        UidEvent(3, 11, 11, 2_100_000_001, 2_100_000_001),
        ExitEvent(5, 11, 11, 7 << 8, 17, 10, 10),
    ]
    assert parse_datagram(buf[:20]) == []  # truncated: nothing, not garbage


def _read_all(conn: ProcConnector, until: float) -> list:
    events: list = []
    while time.monotonic() < until:
        got = conn.read()
        if got is None:
            time.sleep(0.01)
            continue
        events.extend(got)
    return events


def test_real_events_carry_monotonic_timestamps() -> None:
    conn = ProcConnector()
    try:
        before = time.monotonic_ns()
        child = subprocess.run(["/bin/true"], check=True)
        assert child.returncode == 0
        after = time.monotonic_ns()
        events = _read_all(conn, time.monotonic() + 0.3)
        mine = [e for e in events if isinstance(e, ForkEvent) and e.parent_tgid == os.getpid()]
        assert mine
        assert before <= mine[0].ts_ns <= after
        child_pid = mine[0].child_tgid
        assert any(isinstance(e, ExecEvent) and e.tgid == child_pid for e in events)
        assert any(isinstance(e, ExitEvent) and e.tgid == child_pid for e in events)
    finally:
        conn.close()


def test_a_full_buffer_is_reported_as_an_overflow() -> None:
    conn = ProcConnector(rcvbuf=4096)  # room for a handful of events only
    try:
        procs = [subprocess.Popen(["/bin/true"]) for _ in range(100)]
        for p in procs:
            p.wait()
        with pytest.raises(ConnectorOverflow):
            for _ in range(1000):
                if conn.read() is None:
                    break
    finally:
        conn.close()


async def test_resync_finds_what_lost_events_hid() -> None:
    sb = LocalSandbox(with_home=False)
    table = ProcessTable()
    try:
        sb.start()
        table.watch_uid(sb.uid, sb.sandbox_id)
        # Started while nobody listened: as if its events had been dropped.
        pid = await sb.spawn(["/bin/sleep", "20"])
        await wait_for(lambda: (read_argv(pid) or [""])[0] == "/bin/sleep")
        notices = table.resync()
        execs = [n for n in notices if isinstance(n, ExecNotice)]
        assert [n.record.pid for n in execs] == [pid]
        assert execs[0].argv == ["/bin/sleep", "20"]
        await sb.kill_tree(pid)
        await wait_for(lambda: not alive(pid))
        notices = table.resync()
        assert [n.record.pid for n in notices if isinstance(n, ExitNotice)] == [pid]
    finally:
        await sb.close()


_SAME_ARGV_EXEC = """
import os, sys, time
target = sys.argv[1]
if os.readlink("/proc/self/exe") != target:
    time.sleep(0.4)
    with open("/proc/self/cmdline", "rb") as fh:
        argv = fh.read().split(b"\\0")[:-1]
    os.execv(target, argv)  # another binary, the very same command line
time.sleep(20)
"""


async def test_resync_sees_an_exec_that_kept_its_command_line() -> None:
    """Only the executable shows this exec happened: the command line did not change."""
    base = Path("/var/lib/corral-tests")
    base.mkdir(mode=0o755, exist_ok=True)
    shared = Path(tempfile.mkdtemp(prefix="resync-", dir=base))
    shared.chmod(0o755)  # the test sandbox's uid must be able to run the copy
    other = shared / "python-copy"
    shutil.copy(os.path.realpath("/usr/bin/python3"), other)
    other.chmod(0o755)
    sb = LocalSandbox(with_home=False)
    table = ProcessTable()
    try:
        sb.start()
        table.watch_uid(sb.uid, sb.sandbox_id)
        pid = await sb.spawn(["/usr/bin/python3", "-c", _SAME_ARGV_EXEC, str(other)])
        await wait_for(lambda: (read_argv(pid) or [""])[0] == "/usr/bin/python3")
        table.resync()  # adopts it as it is now
        before = read_argv(pid)
        await wait_for(lambda: read_exe(pid) == str(other))
        assert read_argv(pid) == before
        execs = [n for n in table.resync() if isinstance(n, ExecNotice) and n.record.pid == pid]
        assert [n.exe for n in execs] == [str(other)]
        assert [n for n in table.resync() if isinstance(n, ExecNotice)] == []  # no change since
    finally:
        await sb.close()
        shutil.rmtree(shared)


async def test_watcher_reports_lost_events_and_resyncs() -> None:
    delivered: list = []
    table = ProcessTable()
    watcher = ProcessWatcher(table, delivered.extend, rcvbuf=65536)
    watcher.start()
    try:
        # While the table is locked the reader is stuck on its first event, as if
        # descheduled, and the kernel's queue overflows during a burst.
        with table.lock:
            burst = await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", "i=0; while [ $i -lt 400 ]; do /bin/true & i=$((i+1)); done; wait"
            )
            await burst.wait()
        await wait_for(lambda: [n for n in delivered if isinstance(n, LostNotice)])
        assert watcher.overflows >= 1
    finally:
        watcher.stop()
