"""The DNS decision logic with a fake upstream (no network)."""

from __future__ import annotations

import asyncio
import socket

from dnslib import QTYPE, RCODE, DNSRecord

from corral.gateway.dns import NameBindings, answer_query
from corral.gateway.rules import compile_policy
from corral.policy import NetworkPolicy


class FakeResolver:
    def __init__(self, table: dict[str, list[str]], *, fail: bool = False) -> None:
        self.table = table
        self.fail = fail
        self.asked: list[tuple[str, socket.AddressFamily]] = []

    async def resolve(self, name: str, family: socket.AddressFamily) -> list[str]:
        self.asked.append((name, family))
        if self.fail:
            raise OSError("upstream down")
        return list(self.table.get(name, []))


class SlowResolver:
    async def resolve(self, name: str, family: socket.AddressFamily) -> list[str]:
        await asyncio.sleep(10)
        return []


def policy(*rules: dict[str, object]):
    return compile_policy(NetworkPolicy.model_validate({"mode": "gateway", "allow": list(rules)}))


ALLOW = policy({"domain": "*.sim.test"})
TABLE = {
    "example.sim.test": ["198.51.100.10"],
    "rebind.sim.test": ["10.0.0.5"],
    "mixed.sim.test": ["198.51.100.10", "127.0.0.1"],
}


def query(name: str, qtype: str = "A") -> bytes:
    return DNSRecord.question(name, qtype).pack()


async def ask(name: str, qtype: str = "A", compiled=ALLOW, resolver=None, bindings=None):
    resolver = resolver or FakeResolver(TABLE)
    bindings = bindings or NameBindings()
    outcome = await answer_query(query(name, qtype), compiled, resolver, bindings, timeout=0.2)
    reply = DNSRecord.parse(outcome.reply) if outcome.reply else None
    return outcome, reply, resolver, bindings


async def test_allowed_name_resolves_and_is_remembered() -> None:
    outcome, reply, _, bindings = await ask("Example.Sim.Test")
    assert outcome.allowed and reply.header.rcode == RCODE.NOERROR
    assert [str(rr.rdata) for rr in reply.rr] == ["198.51.100.10"]
    assert {str(a) for a in bindings.addresses("example.sim.test")} == {"198.51.100.10"}


async def test_other_names_get_nxdomain_without_asking_upstream() -> None:
    outcome, reply, resolver, _ = await ask("example.com")
    assert not outcome.allowed and reply.header.rcode == RCODE.NXDOMAIN
    assert resolver.asked == []


async def test_rebinding_to_private_is_refused() -> None:
    outcome, reply, _, bindings = await ask("rebind.sim.test")
    assert not outcome.allowed and reply.header.rcode == RCODE.REFUSED
    assert bindings.addresses("rebind.sim.test") == set()
    outcome, reply, _, _ = await ask("mixed.sim.test")
    assert [str(rr.rdata) for rr in reply.rr] == ["198.51.100.10"]
    assert "127.0.0.1" in outcome.reason


async def test_rebinding_allowed_when_a_cidr_names_the_range() -> None:
    compiled = policy({"domain": "rebind.sim.test"}, {"cidr": "10.0.0.0/24"})
    outcome, reply, _, _ = await ask("rebind.sim.test", compiled=compiled)
    assert outcome.allowed and [str(rr.rdata) for rr in reply.rr] == ["10.0.0.5"]


async def test_aaaa_and_other_types_get_empty_answers() -> None:
    for qtype in ("AAAA", "TXT", "MX"):
        _, reply, resolver, _ = await ask("example.sim.test", qtype)
        assert reply.header.rcode == RCODE.NOERROR and not reply.rr, qtype
        assert resolver.asked == []


async def test_upstream_failure_and_timeout_are_servfail() -> None:
    _, reply, _, _ = await ask("example.sim.test", resolver=FakeResolver({}, fail=True))
    assert reply.header.rcode == RCODE.SERVFAIL
    _, reply, _, _ = await ask("example.sim.test", resolver=SlowResolver())
    assert reply.header.rcode == RCODE.SERVFAIL
    _, reply, _, _ = await ask("missing.sim.test")
    assert reply.header.rcode == RCODE.NXDOMAIN


async def test_malformed_queries() -> None:
    bindings = NameBindings()
    garbage = await answer_query(b"\x00\x01garbage", ALLOW, FakeResolver(TABLE), bindings)
    assert garbage.reply is None and not garbage.allowed
    request = DNSRecord.question("example.sim.test")
    request.add_question(DNSRecord.question("other.sim.test").q)
    two = await answer_query(request.pack(), ALLOW, FakeResolver(TABLE), bindings)
    assert DNSRecord.parse(two.reply).header.rcode == RCODE.FORMERR


def test_bindings_are_bounded() -> None:
    import ipaddress

    bindings = NameBindings(max_names=3)
    for i in range(5):
        bindings.add(f"n{i}.test", [ipaddress.ip_address(f"198.51.100.{i}")])
    assert bindings.addresses("n0.test") == set() and bindings.addresses("n4.test")
    assert QTYPE.A == 1
