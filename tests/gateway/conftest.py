"""Fixtures for gateway tests: the simulated internet, a gateway, and client namespaces."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from gateway_helpers import Client

from corral.bench.simnet import SimNet
from corral.events import MemorySink
from corral.gateway import Gateway
from corral.policy import NetworkPolicy


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def simnet() -> AsyncIterator[SimNet]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    async with SimNet() as net:
        yield net


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gateway(simnet: SimNet) -> AsyncIterator[Gateway]:
    async with Gateway(resolver=simnet.resolver(), pool_size=2, peek_timeout=0.5) as gw:
        yield gw


@pytest_asyncio.fixture(loop_scope="module")
async def attach(gateway: Gateway) -> AsyncIterator[Callable[..., object]]:
    """``await attach(policy)`` gives a Client; all are closed (and checked gone) afterwards."""
    made: list[tuple[Client, Path]] = []
    etc_root = Path("/etc/netns")
    # A killed earlier run may have left /etc/netns/<name> for a namespace long gone.
    for stale in etc_root.glob("corral-*") if etc_root.exists() else []:
        if not (Path("/run/netns") / stale.name).exists():
            shutil.rmtree(stale, ignore_errors=True)
    etc_root_existed = etc_root.exists() and any(etc_root.iterdir())
    counter = iter(range(1000))

    async def make(
        policy: NetworkPolicy, *, step: int | Callable[[], int | None] | None = 1
    ) -> Client:
        sink = MemorySink()
        sandbox_id = f"t{os.getpid()}-{next(counter)}"
        current = step if callable(step) else (lambda: step)
        attachment = await gateway.attach(sandbox_id, "episode-1", policy, sink, current)
        name = Path(attachment.netns_path).name
        # What the sandbox binds at /etc/resolv.conf and /etc/hosts; ip netns exec does
        # the same from /etc/netns/<name>.
        etc = Path("/etc/netns") / name
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(attachment.resolv_conf)
        (etc / "hosts").write_text(attachment.hosts)
        client = Client(attachment, sink, name)
        made.append((client, etc))
        return client

    try:
        yield make
    finally:
        for client, etc in made:
            shutil.rmtree(etc, ignore_errors=True)
            await client.attachment.close()
            if Path(client.attachment.netns_path).exists():
                raise AssertionError(f"{client.attachment.netns_path} left behind")
        if not etc_root_existed and etc_root.exists() and not any(etc_root.iterdir()):
            etc_root.rmdir()


