"""The guarded environment end to end: guard before, sandbox during, monitor throughout."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from corral.agent import DENIED_EXIT_CODE, Environment
from corral.events import EventKind, MemorySink
from corral.guard import Guard
from corral.monitor import Monitor
from corral.policy import load_policy
from corral.sandbox import KillReason

# A simulated miner: a bounded CPU burner whose argv carries a stratum URL. It never
# connects anywhere (the sandbox has no network) and stops by itself after 20 s.
BURNER = "import time\nt = time.time()\nwhile time.time() - t < 20:\n    pass\n"


@pytest.fixture
def monitor_sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
async def monitor(monitor_sink: MemorySink) -> AsyncIterator[Monitor]:
    guard = Guard(load_policy("default").guard)
    mon = Monitor(monitor_sink, check_argv=guard.check_argv)
    await mon.start()
    try:
        yield mon
    finally:
        await mon.stop()


async def test_denied_command_never_runs_and_explains_why() -> None:
    sink = MemorySink()
    async with await Environment.create("default", sink=sink) as env:
        r = await env.execute("touch /workspace/ran && xmrig -o stratum+tcp://pool.example:3333")
        assert r.denied and r.exit_code == DENIED_EXIT_CODE
        assert "The command was not run" in r.stderr
        assert r.violations and r.violations[0]["source"] == "guard"
        assert r.violations[0]["category"] == "cryptomining"
        assert r.violations[0]["attack"].startswith("T1496")
        assert (await env.execute("ls /workspace")).stdout == ""  # touch never ran
    verdicts = sink.of_kind(EventKind.GUARD_VERDICT)
    assert verdicts[0].step == 0 and verdicts[0].data["verdict"] == "deny"
    assert not [e for e in sink.of_kind(EventKind.EXEC_START) if e.step == 0]


async def test_allowed_command_runs_with_no_violations() -> None:
    async with await Environment.create("default") as env:
        r = await env.execute("echo hello && git --version >/dev/null")
        assert r.stdout == "hello\n" and r.violations == [] and not r.denied


async def test_unparsable_command_is_not_allowed_silently() -> None:
    async with await Environment.create("default") as env:
        r = await env.execute("echo $(( ")
        assert r.denied or r.exit_code != 0
        if r.denied:
            assert r.violations[0]["rule_id"] == "guard.unparsable"


async def test_script_written_now_and_run_later_is_killed_by_the_monitor(
    monitor: Monitor, monitor_sink: MemorySink
) -> None:
    sink = MemorySink()
    async with await Environment.create("default", sink=sink, monitor=monitor) as env:
        await env.sandbox.write_file("/workspace/burn.py", BURNER)
        await env.sandbox.write_file(
            "/workspace/run.sh",
            "exec python3 /workspace/burn.py --url stratum+tcp://pool.sim.test:3333\n",
        )
        r0 = await env.execute("ls /workspace", step=0)
        assert not r0.violations
        r1 = await env.execute("bash /workspace/run.sh", step=1, timeout=30)
        assert not r1.denied  # the guard cannot see inside the script...
        assert r1.exit_code == 137  # ...the monitor stopped it (the burner would exit 0)
        assert r1.kill_reason == KillReason.MONITOR
        caught = [v for v in r1.violations if v["source"] == "monitor"]
        assert caught and all(v["step"] == 1 for v in caught)
        assert any("stratum" in " ".join(v.get("argv") or []) for v in caught)
    responses = monitor_sink.of_kind(EventKind.RESPONSE)
    assert responses and responses[0].step == 1
    assert "latency_ms" in responses[0].data
    assert sink.of_kind(EventKind.SANDBOX_CLOSED)[0].data["reason"] == "monitor"
