"""Benchmarks: the monitor's CPU overhead with idle sandboxes, and a miner's exec-to-kill time.

Call from a script (``bench/guard.py``); needs root and cgroup v1, like the tests.
Nothing here runs at import. Results are plain dicts, ready for JSON.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from corral.events import Event, EventKind, MemorySink
from corral.monitor import procfs
from corral.monitor.config import MonitorConfig
from corral.monitor.monitor import Monitor
from corral.monitor.testing import SIMULATED_MINER, LocalSandbox
from corral.policy import Action, Policy, ResponsePolicy

_KILL_ALL = ResponsePolicy(
    low=Action.LOG, medium=Action.LOG, high=Action.KILL, critical=Action.KILL
)


async def measure_overhead(
    sandboxes: int = 50,
    seconds: float = 10.0,
    processes_per_sandbox: int = 2,
    config: MonitorConfig | None = None,
) -> dict[str, Any]:
    """CPU the monitor uses, as a fraction of one core, while N sandboxes sit idle.

    Measured as this process's CPU time (all threads) over ``seconds``; the
    benchmark itself is idle meanwhile, so that is the monitor's cost.
    """
    sink = MemorySink(maxlen=10_000)
    boxes: list[LocalSandbox] = []
    async with Monitor(sink, config=config) as monitor:
        try:
            for _ in range(sandboxes):
                box = LocalSandbox(with_home=True)
                boxes.append(box)
                box.start()
                await monitor.watch(box)
                for _ in range(processes_per_sandbox):
                    await box.spawn(["/bin/sleep", str(int(seconds) + 60)])
            await asyncio.sleep(1.0)  # let start-up events settle
            cpu0, wall0 = time.process_time(), time.monotonic()
            await asyncio.sleep(seconds)
            cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
            watched = sum(len(monitor.processes(b.sandbox_id)) for b in boxes)
        finally:
            for box in boxes:
                await box.close()
    return {
        "sandboxes": sandboxes,
        "processes_watched": watched,
        "seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 4),
        "core_fraction": round(cpu / wall, 5),
        "sample_interval": monitor.config.sample_interval,
    }


async def measure_time_to_kill(runs: int = 20, timeout: float = 5.0) -> dict[str, Any]:
    """Latency from a simulated miner's exec to its kill, over ``runs`` fresh starts.

    ``latency_ms`` is the monitor's own figure (kernel exec timestamp to the
    kill returning); ``gone_ms`` is when /proc shows the process gone.
    """
    sink = MemorySink(maxlen=100_000)
    latencies: list[float] = []
    gone: list[float] = []
    misses = 0
    async with Monitor(sink) as monitor:
        box = LocalSandbox(Policy(response=_KILL_ALL), with_home=False)
        box.start()
        try:
            await monitor.watch(box)
            for step in range(runs):
                seen = len(sink.of_kind(EventKind.RESPONSE))
                pid = await box.spawn(SIMULATED_MINER)
                # As the sandbox does, so events name the step instead of waiting for it.
                monitor.emit(
                    Event(EventKind.EXEC_START, box.sandbox_id, box.episode_id, step=step, pid=pid)
                )
                deadline = time.monotonic() + timeout
                while len(sink.of_kind(EventKind.RESPONSE)) == seen:
                    if time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.002)
                responses = sink.of_kind(EventKind.RESPONSE)[seen:]
                if not responses:
                    misses += 1
                    await box.kill_tree(pid)
                    continue
                latencies.append(responses[0].data["latency_ms"])
                execs = [e for e in sink.of_kind(EventKind.PROC_EXEC) if e.pid == pid]
                while time.monotonic() < deadline and procfs.is_running(pid):
                    await asyncio.sleep(0.001)
                if execs:
                    gone.append(round((time.time() - execs[-1].time) * 1000, 3))
        finally:
            await box.close()
    return {
        "runs": runs,
        "missed": misses,
        "latency_ms": _summary(latencies),
        "gone_ms": _summary(gone),
    }


def _summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "p50": round(statistics.median(ordered), 3),
        "p95": round(p95, 3),
        "max": round(ordered[-1], 3),
    }


def run_overhead_benchmark(sandboxes: int = 50, seconds: float = 10.0) -> dict[str, Any]:
    """Synchronous wrapper of :func:`measure_overhead`."""
    return asyncio.run(measure_overhead(sandboxes, seconds))


def run_time_to_kill_benchmark(runs: int = 20) -> dict[str, Any]:
    """Synchronous wrapper of :func:`measure_time_to_kill`."""
    return asyncio.run(measure_time_to_kill(runs))
