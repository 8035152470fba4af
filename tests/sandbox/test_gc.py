"""Leftovers of an owner killed with SIGKILL are found and removed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from corral.sandbox import collect
from corral.sandbox.host import host

from .conftest import processes_of_uid

OWNER = """
import os, sys
from corral.sandbox import Sandbox
sb = Sandbox.create("default")
sb.exec("setsid nohup sleep 1000 > /dev/null 2>&1 &")
print(sb.id, sb.uid, flush=True)
sys.stdin.read()  # wait to be killed
"""


def _start_owner() -> tuple[subprocess.Popen[str], str, int]:
    proc = subprocess.Popen([sys.executable, "-c", OWNER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    sid, uid = proc.stdout.readline().split()
    return proc, sid, int(uid)


def test_gc_cleans_after_sigkilled_owner() -> None:
    proc, sid, uid = _start_owner()
    h = host()
    assert h.state.has_record(sid) and sid in h.cgroups.names()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    report = collect()
    assert sid in report.sandboxes
    assert sid not in h.cgroups.names()
    assert not h.state.has_record(sid)
    assert h.state.slot_owner(uid - 2_100_000_000) is None
    deadline = time.monotonic() + 5
    while processes_of_uid(uid) and time.monotonic() < deadline:
        time.sleep(0.05)  # zombies wait for host pid 1 to reap them
    assert processes_of_uid(uid) == []


def test_gc_leaves_live_sandboxes_alone() -> None:
    proc, sid, uid = _start_owner()
    try:
        report = collect()
        assert sid not in report.sandboxes
        assert host().state.has_record(sid) and processes_of_uid(uid)
    finally:
        proc.kill()
        proc.wait()
        collect()
    assert processes_of_uid(uid) == [] or all(
        _is_zombie(p) for p in processes_of_uid(uid)
    )


def test_cli_gc_reports_what_it_removed() -> None:
    proc, sid, _ = _start_owner()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    out = subprocess.run([sys.executable, "-m", "corral.cli.app", "gc"], capture_output=True,
                         text=True, check=True)
    assert "removed 1 sandbox(es)" in out.stdout
    assert sid not in host().cgroups.names()


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def test_first_sandbox_of_a_process_sweeps_dead_owners() -> None:
    proc, sid, _ = _start_owner()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    code = "from corral.sandbox import Sandbox\nSandbox.create('strict').close()\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert not host().state.has_record(sid)
    assert sid not in host().cgroups.names()
