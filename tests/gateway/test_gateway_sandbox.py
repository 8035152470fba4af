"""The contract with the sandbox: a real bwrap sandbox behind the gateway."""

from __future__ import annotations

from pathlib import Path

import pytest
from gateway_helpers import needs_root

from corral.bench.simnet import SimNet
from corral.events import EventKind, MemorySink
from corral.gateway import Gateway
from corral.policy import load_policy

runtime = pytest.importorskip("corral.sandbox.runtime")

pytestmark = [pytest.mark.asyncio(loop_scope="module"), needs_root]


async def test_real_sandbox_behind_the_gateway(simnet: SimNet) -> None:
    sink = MemorySink()
    policy = load_policy("networked", {"network.allow": [{"domain": "example.sim.test"}]})
    async with Gateway(resolver=simnet.resolver(), pool_size=1, name_prefix="crlsbx") as gw:
        sandbox = await runtime.AsyncSandbox.create(policy, sink=sink, episode_id="ep-9",
                                                    gateway=gw)
        try:
            allowed = await sandbox.exec("curl -sS -m 10 http://example.sim.test/", timeout=30)
            denied = await sandbox.exec(
                f"curl -sS -m 10 -D - http://{simnet.ip('sink')}:4444/", timeout=30
            )
            netns = [p.name for p in Path("/run/netns").glob("crlsbx-*")]
        finally:
            await sandbox.close()
        assert allowed.exit_code == 0 and "hello from web" in allowed.stdout, allowed
        assert "403" in denied.stdout and "X-Corral-Denied" in denied.stdout, denied
        assert len(netns) >= 2  # the gateway's own and the sandbox's
    events = sink.of_kind(EventKind.NET_CONNECT)
    assert {e.data["verdict"] for e in events} == {"allow", "deny"}
    assert all(e.sandbox_id == events[0].sandbox_id and e.episode_id == "ep-9" for e in events)
    assert list(Path("/run/netns").glob("crlsbx-*")) == []
