"""CPU saturation by a process outside the expected workload is an alert; expected work is not."""

from __future__ import annotations

import asyncio

from corral.monitor import MonitorConfig
from corral.policy import Action
from tests.monitor.helpers import BURNER, PYTHON, Harness, alive, respond_all, wait_for

# Low threshold: other work on this 2-core machine may take part of the burner's core.
FAST = MonitorConfig(sample_interval=0.1, cpu_saturation=0.5, cpu_saturation_seconds=1.0)


async def test_saturating_process_outside_the_workload_is_killed(make_harness: object) -> None:
    harness: Harness = await make_harness(config=FAST)  # type: ignore[operator]
    sb = await harness.sandbox(respond_all(Action.KILL), expected=("sleep",))
    pid = await harness.step(sb, 1, [PYTHON, "-c", BURNER])
    await wait_for(lambda: harness.alerts(sb, "cpu.saturation"), timeout=8)
    alert = harness.alerts(sb, "cpu.saturation")[0]
    assert alert.pid == pid
    assert alert.step == 1
    assert alert.data["attack"] == "T1496"
    assert alert.data["evidence"]["cpu_cores"] >= 0.5
    await wait_for(lambda: not alive(pid))


async def test_expected_workload_may_saturate_and_is_measured(make_harness: object) -> None:
    harness: Harness = await make_harness(config=FAST)  # type: ignore[operator]
    sb = await harness.sandbox(respond_all(Action.KILL), expected=("python3*",))
    pid = await harness.step(sb, 1, [PYTHON, "-c", BURNER])
    await asyncio.sleep(2.0)
    assert not harness.alerts(sb)
    assert alive(pid)
    proc = next(p for p in harness.monitor.processes(sb.sandbox_id) if p["pid"] == pid)
    assert proc["cpu_cores"] > 0.2  # measured; the exact share depends on the host's load
    assert proc["rss_bytes"] > 1024 * 1024
