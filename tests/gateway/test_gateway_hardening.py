"""Fixes from a security review: each case was allowed, unattributed or crashed before."""

from __future__ import annotations

import ipaddress

import pytest

from corral.errors import PolicyError
from corral.gateway.classify import classify
from corral.gateway.listener import is_host_address
from corral.gateway.rules import compile_policy
from corral.policy import NetworkPolicy, Protocol, load_policy


def _open_policy() -> object:
    return compile_policy(NetworkPolicy.model_validate({"mode": "gateway", "allow": [
        {"cidr": "0.0.0.0/0"}, {"cidr": "::/0"}]}))


@pytest.mark.parametrize("dst", [
    "64:ff9b::a9fe:a9fe",  # NAT64 form of 169.254.169.254
    "64:ff9b::a00:1",  # NAT64 form of 10.0.0.1
    "64:ff9b:1::a00:1",
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "::7f00:1",  # IPv4-compatible 127.0.0.1
    "fec0::1",
    "198.18.0.1",
    "168.63.129.16",
    "192.0.0.170",
])
def test_embedded_and_special_addresses_stay_denied_under_open_rules(dst: str) -> None:
    decision = _open_policy().decide(dst, 80, Protocol.HTTP, None, lambda _: ())
    assert not decision.allowed, (dst, decision)


def test_open_rules_still_allow_ordinary_addresses() -> None:
    decision = _open_policy().decide("198.51.100.10", 80, Protocol.HTTP, None, lambda _: ())
    assert decision.allowed


def test_connect_tunnel_vouches_for_no_name() -> None:
    c = classify(b"CONNECT evil.test:443 HTTP/1.1\r\nHost: allowed.test\r\n\r\n", final=True)
    assert c is not None and c.server_name is None and c.http_method == "CONNECT"
    policy = compile_policy(NetworkPolicy.model_validate(
        {"mode": "gateway", "allow": [{"domain": "allowed.test"}]}))
    ip = ipaddress.ip_address("198.51.100.10")
    decision = policy.decide(ip, 80, Protocol.HTTP, c.server_name, lambda _: (ip,))
    assert not decision.allowed


def test_host_header_case_and_trailing_dot_are_normalised() -> None:
    c = classify(b"GET http://Allowed.Test./x HTTP/1.1\r\nHost: ALLOWED.test.\r\n\r\n",
                 final=True)
    assert c is not None and c.server_name == "allowed.test" and c.detail is None


def test_deeply_nested_json_is_unknown_not_a_crash() -> None:
    c = classify(b"[" * 5000 + b"\n", final=True)
    assert c is not None and c.protocol == Protocol.UNKNOWN


def test_empty_protocol_list_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match="protocols must not be empty"):
        load_policy("networked", {"network.allow": [{"domain": "a.test", "protocols": []}]})


def test_host_address_probe_fails_towards_the_host() -> None:
    assert is_host_address("127.0.0.1")
    assert not is_host_address("203.0.113.251")


async def test_idle_flow_is_cut_and_busy_flow_is_not() -> None:
    import asyncio
    import socket

    from corral.gateway.relay import relay

    a_client, a_gateway = socket.socketpair()
    b_gateway, b_server = socket.socketpair()
    for s in (a_gateway, b_gateway):
        s.setblocking(False)
    try:
        a_client.sendall(b"hello")
        task = asyncio.ensure_future(
            relay(a_gateway, b_gateway, lambda n: None, lambda n: None, idle_timeout=1.0)
        )
        await asyncio.sleep(0.1)
        assert b_server.recv(16) == b"hello"
        for _ in range(15):  # traffic keeps it alive well past the idle timeout
            a_client.sendall(b"x")
            await asyncio.sleep(0.1)
        assert not task.done()
        assert await asyncio.wait_for(task, 5) == "idle timeout"
    finally:
        for s in (a_client, a_gateway, b_gateway, b_server):
            s.close()


async def test_flow_caps_per_sandbox_and_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    from types import SimpleNamespace

    from corral.events import NullSink
    from corral.gateway.session import Session

    monkeypatch.setattr(Session, "MAX_FLOWS", 2)
    monkeypatch.setattr(Session, "MAX_FLOWS_TOTAL", 3)
    policy = compile_policy(NetworkPolicy.model_validate({"mode": "gateway"}))

    def session(name: str) -> Session:
        return Session(sandbox_id=name, episode_id=None, policy=policy, sink=NullSink(),
                       step=lambda: None, slot=SimpleNamespace(inode=0))  # type: ignore[arg-type]

    a, b = session("a"), session("b")
    gate = asyncio.Event()
    tasks = [asyncio.ensure_future(gate.wait()) for _ in range(3)]
    a.track(tasks[0])
    assert not a.at_capacity
    a.track(tasks[1])
    assert a.at_capacity and not b.at_capacity  # a's own cap, b unaffected
    b.track(tasks[2])
    assert b.at_capacity  # the process-wide cap
    gate.set()
    await asyncio.gather(*tasks)
    await asyncio.sleep(0)  # done-callbacks run
    assert not a.at_capacity and not b.at_capacity
