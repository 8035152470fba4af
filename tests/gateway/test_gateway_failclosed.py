"""A gateway that can't start or attach raises GatewayError and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from gateway_helpers import needs_root

import corral.gateway
from corral.errors import GatewayError
from corral.events import MemorySink
from corral.gateway import Gateway, sweep_stale_namespaces
from corral.gateway.dns import SystemResolver
from corral.gateway.netns import create_netns, remove_netns
from corral.policy import NetworkPolicy

pytestmark = needs_root

POLICY = NetworkPolicy(mode="gateway")


def leftovers(prefix: str) -> list[str]:
    namespaces = [p.name for p in Path("/run/netns").glob(f"{prefix}*")]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return namespaces + [line for line in links.splitlines() if prefix in line]


def test_public_api_is_curated() -> None:
    assert set(corral.gateway.__all__) == {
        "Attachment", "DnsServerResolver", "Gateway", "Resolver", "SystemResolver",
        "sweep_stale_namespaces"}
    for name in corral.gateway.__all__:
        assert getattr(corral.gateway, name) is not None


async def test_start_without_nft_fails_closed() -> None:
    gateway = Gateway(nft="/nonexistent/nft", name_prefix="crlfail")
    with pytest.raises(GatewayError, match="nft"):
        await gateway.start()
    assert leftovers("crlfail") == []
    with pytest.raises(GatewayError):
        await gateway.attach("s1", None, POLICY, MemorySink(), lambda: None)
    await gateway.stop()


async def test_start_twice_and_attach_after_stop_fail() -> None:
    gateway = Gateway(pool_size=0, name_prefix="crltwice", resolver=SystemResolver())
    await gateway.start()
    try:
        with pytest.raises(GatewayError):
            await gateway.start()
    finally:
        await gateway.stop()
    assert leftovers("crltwice") == []
    with pytest.raises(GatewayError, match="not running"):
        await gateway.attach("s1", None, POLICY, MemorySink(), lambda: None)


async def test_bad_attach_requests_fail_and_leave_nothing() -> None:
    async with Gateway(pool_size=1, name_prefix="crlbad") as gateway:
        sink = MemorySink()
        with pytest.raises(GatewayError, match="does not use the gateway"):
            await gateway.attach("s1", None, NetworkPolicy(mode="none"), sink, lambda: None)
        for bad_id in ("", "../etc", "a" * 200, "with space"):
            with pytest.raises(GatewayError, match="invalid sandbox id"):
                await gateway.attach(bad_id, None, POLICY, sink, lambda: None)
        first = await gateway.attach("s1", None, POLICY, sink, lambda: None)
        with pytest.raises(GatewayError, match="already attached"):
            await gateway.attach("s1", None, POLICY, sink, lambda: None)
        # Cold path too: the pool is empty now until it refills.
        second = await gateway.attach("s2", "e", POLICY, sink, lambda: 3)
        assert Path(first.netns_path).exists() and Path(second.netns_path).exists()
        assert "nameserver 169.254." in first.resolv_conf and "localhost" in first.hosts
        await first.close()
        await first.close()  # idempotent
        assert not Path(first.netns_path).exists()
    assert not Path(second.netns_path).exists()
    assert leftovers("crlbad") == []


async def test_attach_fails_closed_when_namespaces_cannot_be_made() -> None:
    async with Gateway(pool_size=0, name_prefix="crlnons") as gateway:
        # Take the name the next namespace would get: creation must fail, not join it.
        squatter = Path("/run/netns") / f"crlnons-{gateway.netns_name.split('-gw-')[1]}-1"
        squatter.touch()
        try:
            with pytest.raises(GatewayError, match="namespace"):
                await gateway.attach("s1", None, POLICY, MemorySink(), lambda: None)
        finally:
            squatter.unlink()
    assert leftovers("crlnons") == []


async def test_sweep_removes_namespaces_of_dead_owners_only() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [f"crlsweep-gw-{dead.pid}-ab12", f"crlsweep-{dead.pid}-ab12-3"]
    live = f"crlsweep-gw-{os.getpid()}-cd34"
    for name in [*stale, live]:
        create_netns(name)
    try:
        assert sorted(sweep_stale_namespaces("crlsweep")) == sorted(stale)
        assert leftovers("crlsweep") == [live]
    finally:
        remove_netns(f"/run/netns/{live}")
        for name in stale:
            remove_netns(f"/run/netns/{name}")
    assert leftovers("crlsweep") == []


def test_gateway_depends_only_on_errors_policy_events() -> None:
    import ast

    allowed = ("corral.errors", "corral.policy", "corral.events", "corral.gateway")
    package = Path(corral.gateway.__file__).parent
    for source in package.glob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith("corral"):
                    assert name.startswith(allowed), f"{source.name} imports {name}"
