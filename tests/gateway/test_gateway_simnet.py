"""The simulated internet itself, reached directly from the host (no gateway)."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import urllib.request

import pytest
from gateway_helpers import needs_root

from corral.bench.simnet import SimNet

pytestmark = [pytest.mark.asyncio(loop_scope="module"), needs_root]


def _first_line(ip: str, port: int, send: bytes = b"") -> bytes:
    with socket.create_connection((ip, port), timeout=5) as sock:
        if send:
            sock.sendall(send)
        return sock.makefile("rb").readline()


async def test_hosts_speak_their_protocols(simnet: SimNet) -> None:
    before = simnet.received("pool")
    banner = await asyncio.to_thread(_first_line, simnet.ip("ssh"), 22, b"SSH-2.0-probe\r\n")
    assert banner.startswith(b"SSH-2.0-")
    subscribe = json.dumps({"id": 7, "method": "mining.subscribe", "params": []}).encode() + b"\n"
    reply = json.loads(await asyncio.to_thread(_first_line, simnet.ip("pool"), 3333, subscribe))
    assert reply["id"] == 7 and reply["error"] is None
    assert simnet.pool_stats.subscribes >= 1
    assert simnet.received("pool") - before == len(subscribe)
    assert simnet.received("ssh") > 0


async def test_dns_and_https_with_the_test_ca(simnet: SimNet) -> None:
    resolver = simnet.resolver()
    assert await resolver.resolve("pypi.sim.test", socket.AF_INET) == [simnet.ip("pypi")]
    assert await resolver.resolve("nothing.sim.test", socket.AF_INET) == []
    ctx = ssl.create_default_context(cafile=simnet.ca_pem)

    def fetch() -> str:
        # The name must resolve to the simnet host without touching the host's resolver.
        with socket.create_connection((simnet.ip("pypi"), 443), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="pypi.sim.test") as tls:
            tls.sendall(b"GET /simple/corral-testpkg/ HTTP/1.1\r\nHost: pypi.sim.test\r\n\r\n")
            return tls.makefile("rb").read().decode()

    page = await asyncio.to_thread(fetch)
    assert "200 OK" in page and simnet.wheel_name in page and "sha256=" in page
    assert urllib.request is not None


async def test_only_one_simulated_internet_at_a_time(simnet: SimNet) -> None:
    second = SimNet()
    with pytest.raises(RuntimeError, match="already running"):
        await second.__aenter__()
    assert simnet.received() >= 0 and second.hosts == {} and second.tmp is None
