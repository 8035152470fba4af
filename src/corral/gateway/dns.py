"""The sandbox's DNS: answer allowed names through an upstream resolver, NXDOMAIN the rest.

Every answer the gateway gives is remembered per sandbox (:class:`NameBindings`),
because a domain rule only allows connecting to addresses the name resolved to
here. Answers pointing into always-denied ranges (private, loopback, link-local…)
are dropped, which defeats DNS rebinding.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol as TypingProtocol

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSError, DNSRecord

from corral.gateway.rules import CompiledPolicy, IPAddress

#: TTL the gateway gives its answers; short so policy changes are picked up quickly.
ANSWER_TTL = 30


class Resolver(TypingProtocol):
    """Upstream name resolution. Returns addresses (empty: no such name) or raises OSError."""

    async def resolve(self, name: str, family: socket.AddressFamily) -> list[str]: ...


class SystemResolver:
    """The host's resolver (getaddrinfo): what ``Gateway`` uses when given none."""

    async def resolve(self, name: str, family: socket.AddressFamily) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            # Fully qualified: the host's search domains must not turn an allowed name
            # into a query for an internal one.
            fqdn = name if name.endswith(".") else name + "."
            infos = await loop.getaddrinfo(fqdn, None, family=family, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            if exc.errno in (socket.EAI_NONAME, socket.EAI_NODATA):
                return []
            raise
        return list(dict.fromkeys(str(info[4][0]) for info in infos))


class DnsServerResolver:
    """Asks one DNS server directly over UDP (tests point it at the simulated internet)."""

    def __init__(self, server: str, port: int = 53, *, timeout: float = 2.0) -> None:
        self.server = server
        self.port = port
        self.timeout = timeout

    async def resolve(self, name: str, family: socket.AddressFamily) -> list[str]:
        qtype = "AAAA" if family == socket.AF_INET6 else "A"
        query = DNSRecord.question(name, qtype)
        loop = asyncio.get_running_loop()
        reply_future: asyncio.Future[bytes] = loop.create_future()

        class _Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                if not reply_future.done():
                    reply_future.set_result(data)

            def error_received(self, exc: Exception) -> None:
                if not reply_future.done():
                    reply_future.set_exception(exc)

        transport, _ = await loop.create_datagram_endpoint(
            _Client, remote_addr=(self.server, self.port)
        )
        try:
            transport.sendto(query.pack())
            raw = await asyncio.wait_for(reply_future, self.timeout)
        finally:
            transport.close()
        try:
            reply = DNSRecord.parse(raw)
        except DNSError as exc:
            raise OSError(f"malformed reply from {self.server}: {exc}") from exc
        if reply.header.id != query.header.id:
            raise OSError("DNS reply id mismatch")
        if reply.header.rcode == RCODE.NXDOMAIN:
            return []
        if reply.header.rcode != RCODE.NOERROR:
            raise OSError(f"DNS server answered {RCODE.get(reply.header.rcode)}")
        want = QTYPE.AAAA if family == socket.AF_INET6 else QTYPE.A
        return [str(rr.rdata) for rr in reply.rr if rr.rtype == want]


class NameBindings:
    """Names this sandbox resolved through the gateway, and to which addresses. Bounded."""

    def __init__(self, max_names: int = 4096) -> None:
        self._names: OrderedDict[str, set[IPAddress]] = OrderedDict()
        self._max = max_names

    def add(self, name: str, addresses: list[IPAddress]) -> None:
        key = name.lower().rstrip(".")
        known = self._names.pop(key, set())
        known.update(addresses)
        self._names[key] = known
        while len(self._names) > self._max:
            self._names.popitem(last=False)

    def addresses(self, name: str) -> set[IPAddress]:
        return set(self._names.get(name.lower().rstrip("."), ()))


@dataclass(slots=True)
class DnsOutcome:
    """The reply to send (None: send nothing) and what to log about it."""

    reply: bytes | None
    name: str
    qtype: str
    allowed: bool
    reason: str
    answers: list[str] = field(default_factory=list)
    rcode: str = "NOERROR"

    def to_data(self) -> dict[str, object]:
        return {
            "name": self.name,
            "qtype": self.qtype,
            "verdict": "allow" if self.allowed else "deny",
            "reason": self.reason,
            "answers": self.answers,
            "rcode": self.rcode,
        }


async def answer_query(
    packet: bytes,
    policy: CompiledPolicy,
    resolver: Resolver,
    bindings: NameBindings,
    *,
    timeout: float = 3.0,
) -> DnsOutcome:
    """Decides and builds the reply to one DNS query from a sandbox."""
    try:
        request = DNSRecord.parse(packet)
    except DNSError as exc:
        return DnsOutcome(None, "", "", False, f"malformed query: {exc}", rcode="-")
    if len(request.questions) != 1 or request.header.qr:
        reply = request.reply()
        reply.header.rcode = RCODE.FORMERR
        return DnsOutcome(reply.pack(), "", "", False, "not exactly one question", rcode="FORMERR")

    question = request.q
    name = str(question.qname).lower().rstrip(".")
    qtype = QTYPE.get(question.qtype, str(question.qtype))
    reply = request.reply()

    def finish(allowed: bool, reason: str, rcode: int, answers: list[str]) -> DnsOutcome:
        reply.header.rcode = rcode
        return DnsOutcome(
            reply.pack(), name, str(qtype), allowed, reason, answers, RCODE.get(rcode)
        )

    if not name or not policy.name_allowed(name):
        return finish(False, "name not allowed by policy", RCODE.NXDOMAIN, [])
    if question.qtype not in (QTYPE.A, QTYPE.AAAA):
        # Only addresses are served; other types (TXT, MX...) are data channels we don't need.
        return finish(True, f"{qtype} not served", RCODE.NOERROR, [])
    if question.qtype == QTYPE.AAAA and not policy.allows_ipv6:
        return finish(True, "IPv6 not allowed by policy", RCODE.NOERROR, [])

    family = socket.AF_INET6 if question.qtype == QTYPE.AAAA else socket.AF_INET
    try:
        found = await asyncio.wait_for(resolver.resolve(name, family), timeout)
    except (OSError, TimeoutError) as exc:
        return finish(True, f"upstream failed: {exc or type(exc).__name__}", RCODE.SERVFAIL, [])

    usable: list[IPAddress] = []
    refused: list[str] = []
    for text in found:
        with contextlib.suppress(ValueError):
            ip = ipaddress.ip_address(text)
            if ip.version == (6 if family == socket.AF_INET6 else 4) and policy.address_reachable(
                ip
            ):
                usable.append(ip)
            else:
                refused.append(text)
    if not found:
        return finish(True, "no such name upstream", RCODE.NXDOMAIN, [])
    if not usable:
        # Every answer points somewhere a sandbox may never go: a rebinding attempt.
        return finish(False, f"answers in denied ranges refused: {refused}", RCODE.REFUSED, [])

    bindings.add(name, usable)
    for ip in usable:
        rdata = AAAA(str(ip)) if ip.version == 6 else A(str(ip))
        reply.add_answer(RR(question.qname, question.qtype, rdata=rdata, ttl=ANSWER_TTL))
    reason = "resolved" if not refused else f"resolved; refused {refused}"
    return finish(True, reason, RCODE.NOERROR, [str(ip) for ip in usable])


class DnsServerProtocol(asyncio.DatagramProtocol):
    """Receives queries on a gateway socket and answers through ``handler`` (bounded)."""

    def __init__(
        self,
        handler: Callable[[bytes, tuple[str, int]], Awaitable[bytes | None]],
        *,
        max_pending: int = 512,
    ) -> None:
        self._handler = handler
        self._max_pending = max_pending
        self._pending: set[asyncio.Task[None]] = set()
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(self._pending) >= self._max_pending:
            return  # overloaded: dropping is safe, the client retries
        task = asyncio.get_running_loop().create_task(self._answer(data, addr))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self._handler(data, addr)
        if reply is not None and self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(reply, addr)

    def cancel_pending(self) -> None:
        for task in list(self._pending):
            task.cancel()


__all__ = [
    "ANSWER_TTL",
    "DnsOutcome",
    "DnsServerProtocol",
    "DnsServerResolver",
    "NameBindings",
    "Resolver",
    "SystemResolver",
    "answer_query",
]
