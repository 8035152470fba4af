"""The benchmark helpers run end to end (tiny sizes; the real numbers come from bench/)."""

from __future__ import annotations

from corral.monitor.bench import measure_overhead, measure_time_to_kill


async def test_time_to_kill_benchmark_kills_every_simulated_miner() -> None:
    result = await measure_time_to_kill(runs=3)
    assert result["missed"] == 0
    assert result["latency_ms"]["p95"] is not None


async def test_overhead_benchmark_watches_every_idle_process() -> None:
    result = await measure_overhead(sandboxes=3, seconds=0.5)
    assert result["processes_watched"] == 6
    assert 0 <= result["core_fraction"] < 1
