"""Fixtures for the monitor's behaviour tests: a real monitor, real sandboxes, real processes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from corral.events import MemorySink
from corral.monitor import Monitor, MonitorConfig
from tests.monitor.helpers import Harness, fake_guard

if os.geteuid() != 0 or not Path("/sys/fs/cgroup/freezer").is_dir():
    pytest.skip("monitor tests need root and cgroup v1 (freezer)", allow_module_level=True)


@pytest.fixture
async def make_harness() -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    made: list[Harness] = []

    async def make(**kwargs: object) -> Harness:
        config = kwargs.pop("config", None) or MonitorConfig()
        sink = MemorySink()
        monitor = Monitor(sink, config=config, **kwargs)  # type: ignore[arg-type]
        await monitor.start()
        harness = Harness(sink, monitor)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        try:
            await harness.close()
        finally:
            await harness.monitor.stop()


@pytest.fixture
async def harness(make_harness: Callable[..., Awaitable[Harness]]) -> Harness:
    return await make_harness(check_argv=fake_guard)
