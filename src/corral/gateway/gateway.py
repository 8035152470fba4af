"""The egress gateway: one per owner process, serving many sandboxes.

Layout (all on this machine; nothing is forwarded to the uplink, ever)::

    sandbox netns (one per sandbox)          gateway netns (one per Gateway)      host netns
    eth0 169.254.X.2/30, fd7c:…:n::2  <-veth->  cg<n> 169.254.X.1, fd7c:…:n::1
    default route via the gateway end           nftables: all TCP -> listener,       the gateway's
                                                UDP 53 -> DNS, other UDP -> sink;    own outbound
                                                input: only those; forward: drop     connections

The gateway's sockets are made inside its namespace, but its outbound connections
from the host namespace: allowed traffic is relayed, never routed. The gateway
namespace has no uplink, so even a wrong rule there cannot reach host services.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from corral.errors import GatewayError
from corral.events import Event, EventKind, EventSink, NullSink
from corral.gateway.dns import (
    DnsOutcome,
    DnsServerProtocol,
    Resolver,
    SystemResolver,
    answer_query,
)
from corral.gateway.listener import TransparentListener
from corral.gateway.netns import (
    NETNS_DIR,
    create_netns,
    remove_netns,
    run_on_thread,
    write_sysctl,
)
from corral.gateway.nflog import LoggedPacket, NflogReader, open_nflog
from corral.gateway.nft import (
    NFLOG_GROUP,
    TPROXY_MARK,
    TPROXY_TABLE,
    Ports,
    load_ruleset,
    render_ruleset,
)
from corral.gateway.pool import NamespacePool, Slot
from corral.gateway.rules import compile_policy
from corral.gateway.session import Session, endpoint
from corral.gateway.signals import Signal, dns_signals
from corral.gateway.udp import UdpSink, prepare_sink_socket
from corral.policy import NetworkPolicy

_SANDBOX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

HOSTS_TEXT = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
)

_SETUP_ERRORS = (OSError, NetlinkError, ValueError, IndexError, RuntimeError)


class Attachment:
    """One sandbox's way out. Hand ``netns_path``, ``resolv_conf`` and ``hosts`` to the
    sandbox launcher; call :meth:`close` when the sandbox ends."""

    def __init__(self, gateway: Gateway, session: Session) -> None:
        self._gateway = gateway
        self._session = session
        slot = session.slot
        self.sandbox_id = session.sandbox_id
        self.netns_path: str = slot.path
        self.address: str = slot.addresses.sandbox4
        self.gateway_address: str = slot.addresses.gateway4
        self.resolv_conf: str = (
            f"nameserver {slot.addresses.gateway4}\noptions timeout:2 attempts:2\n"
        )
        self.hosts: str = HOSTS_TEXT
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Removes the namespace, its link and its flows. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._gateway._detach(self._session)


class Gateway:
    """Intercepts, classifies, decides and relays every flow of the sandboxes attached to it.

    Every failure to start raises :class:`GatewayError` after removing what was made.
    It must live on an event loop that keeps running: the loop does the relaying.

    ``resolver``: upstream resolution of allowed names (default: the host's getaddrinfo).
    ``sink``: events that belong to no attached sandbox (default: dropped).
    ``pool_size``: namespaces kept ready so attach is instant (0: build on demand).
    ``peek_timeout``: how long to wait for a client's first bytes before calling the
    protocol "unknown" (server-speaks-first protocols send nothing).
    ``connect_timeout``: for the gateway's own outbound connections.
    ``name_prefix``: start of every namespace name (tests use their own).
    ``nft``: the nft binary.
    """

    def __init__(
        self,
        *,
        resolver: Resolver | None = None,
        sink: EventSink | None = None,
        pool_size: int = 4,
        peek_timeout: float = 1.0,
        connect_timeout: float = 10.0,
        name_prefix: str = "corral",
        nft: str = "nft",
    ) -> None:
        if pool_size < 0 or peek_timeout <= 0 or connect_timeout <= 0:
            raise ValueError("pool_size must be >= 0 and timeouts > 0")
        self._resolver: Resolver = resolver or SystemResolver()
        self._sink: EventSink = sink or NullSink()
        self._pool_size = pool_size
        self._peek_timeout = peek_timeout
        self._connect_timeout = connect_timeout
        self._prefix = name_prefix
        self._nft = nft
        self._state = "new"
        self._token = ""
        self._netns_name = ""
        self._netns_path: str | None = None
        self._sockets: list[socket.socket] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._dns: list[tuple[asyncio.DatagramTransport, DnsServerProtocol]] = []
        self._sinks: list[UdpSink] = []
        self._nflog: NflogReader | None = None
        self._pool: NamespacePool | None = None
        self._host_addresses: list[str] = []
        self._sessions: dict[str, Session] = {}
        self._reserved: set[str] = set()
        self._by_address: dict[str, Session] = {}
        self._by_ifindex: dict[int, Session] = {}
        self._attachments: dict[str, Attachment] = {}

    @property
    def netns_name(self) -> str:
        """Name of the gateway's own namespace (under /run/netns) while running."""
        return self._netns_name

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        if self._state != "new":
            raise GatewayError(f"gateway cannot start from state {self._state!r}")
        self._state = "starting"
        # Leftovers of gateways whose owner was killed go first (as the sandbox does at
        # its first start); the owner's pid in every name is what makes them findable.
        await asyncio.to_thread(sweep_stale_namespaces, self._prefix)
        self._token = f"{os.getpid()}-{secrets.token_hex(2)}"
        self._netns_name = f"{self._prefix}-gw-{self._token}"
        try:
            self._netns_path = await asyncio.to_thread(create_netns, self._netns_name)
            await asyncio.to_thread(run_on_thread, _setup_gateway_netns, netns=self._netns_path)
            ports = await self._open_sockets()
            await load_ruleset(self._netns_name, render_ruleset(ports), nft=self._nft)
            self._host_addresses = await asyncio.to_thread(_host_addresses)
            await self._start_serving()
            self._pool = NamespacePool(
                self._netns_path, f"{self._prefix}-{self._token}", self._pool_size
            )
            await self._pool.fill()
        except (*_SETUP_ERRORS, GatewayError) as exc:
            await self._teardown()
            self._state = "failed"
            if isinstance(exc, GatewayError):
                raise
            raise GatewayError(f"gateway could not start: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            await self._teardown()
            self._state = "failed"
            raise
        self._state = "running"

    async def stop(self) -> None:
        """Closes every attachment and removes everything the gateway made. Idempotent."""
        if self._state in ("stopped", "new"):
            self._state = "stopped"
            return
        self._state = "stopping"
        await self._teardown()
        self._state = "stopped"

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _teardown(self) -> None:
        for attachment in list(self._attachments.values()):
            with contextlib.suppress(*_SETUP_ERRORS, GatewayError):
                await attachment.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for transport, protocol in self._dns:
            protocol.cancel_pending()
            transport.close()
        self._dns.clear()
        for udp in self._sinks:
            udp.stop()
        self._sinks.clear()
        if self._nflog is not None:
            self._nflog.stop()
            self._nflog = None
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._netns_path is not None:
            # Its nft table and every cg<n> link die with the namespace.
            await asyncio.to_thread(remove_netns, self._netns_path)
            self._netns_path = None

    async def _open_sockets(self) -> Ports:
        path = self._netns_path
        if path is None:
            raise GatewayError("gateway namespace missing")

        def open_all() -> list[socket.socket]:
            made: list[socket.socket] = []
            try:
                for family, any_addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                    tcp = socket.socket(family, socket.SOCK_STREAM)
                    made.append(tcp)
                    dns = socket.socket(family, socket.SOCK_DGRAM)
                    made.append(dns)
                    udp = socket.socket(family, socket.SOCK_DGRAM)
                    made.append(udp)
                    if family == socket.AF_INET6:
                        tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                        dns.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    tcp.bind((any_addr, 0))
                    tcp.listen(1024)
                    dns.bind((any_addr, 0))
                    prepare_sink_socket(udp)
                    udp.bind((any_addr, 0))
                made.append(open_nflog(NFLOG_GROUP))
            except OSError:
                for sock in made:
                    sock.close()
                raise
            return made

        self._sockets = await asyncio.to_thread(run_on_thread, open_all, netns=path)
        tcp4, dns4, udp4, tcp6, dns6, udp6, _ = self._sockets
        return Ports(
            tcp4=tcp4.getsockname()[1],
            tcp6=tcp6.getsockname()[1],
            dns4=dns4.getsockname()[1],
            dns6=dns6.getsockname()[1],
            udp4=udp4.getsockname()[1],
            udp6=udp6.getsockname()[1],
        )

    async def _start_serving(self) -> None:
        loop = asyncio.get_running_loop()
        tcp4, dns4, udp4, tcp6, dns6, udp6, nflog = self._sockets
        self._nflog = NflogReader(nflog, self._other_dropped)
        self._nflog.start()
        for tcp in (tcp4, tcp6):
            listener = TransparentListener(
                tcp,
                self._lookup,
                self._sink,
                self._answer_dns,
                peek_timeout=self._peek_timeout,
                connect_timeout=self._connect_timeout,
            )
            self._tasks.append(loop.create_task(listener.serve()))
        for dns in (dns4, dns6):
            protocol = DnsServerProtocol(self._answer_dns)
            dns.setblocking(False)
            transport, _ = await loop.create_datagram_endpoint(
                lambda protocol=protocol: protocol, sock=dns  # type: ignore[misc]
            )
            self._dns.append((transport, protocol))
        for udp in (udp4, udp6):
            sink = UdpSink(udp, self._udp_dropped)
            sink.start()
            self._sinks.append(sink)

    async def fill_pool(self) -> None:
        """Waits until ``pool_size`` namespaces are ready, so the next attach is warm."""
        if self._state != "running" or self._pool is None:
            raise GatewayError(f"gateway is not running (state {self._state!r})")
        try:
            await self._pool.fill()
        except _SETUP_ERRORS as exc:
            raise GatewayError(f"cannot make a network namespace: {exc}") from exc

    # --- sandboxes -----------------------------------------------------------------

    async def attach(
        self,
        sandbox_id: str,
        episode_id: str | None,
        policy: NetworkPolicy,
        sink: EventSink,
        step: Callable[[], int | None],
    ) -> Attachment:
        """Gives a sandbox its namespace and starts enforcing ``policy`` for it."""
        if self._state != "running" or self._pool is None:
            raise GatewayError(f"gateway is not running (state {self._state!r})")
        if not _SANDBOX_ID.match(sandbox_id):
            raise GatewayError(f"invalid sandbox id {sandbox_id!r}")
        if sandbox_id in self._sessions or sandbox_id in self._reserved:
            raise GatewayError(f"sandbox {sandbox_id!r} is already attached")
        compiled = compile_policy(policy, host_addresses=self._host_addresses)
        # Reserved while awaiting, so a concurrent attach of the same id fails.
        self._reserved.add(sandbox_id)
        try:
            slot = await self._pool.take()
        except (*_SETUP_ERRORS, RuntimeError) as exc:
            raise GatewayError(f"cannot make a network namespace: {exc}") from exc
        finally:
            self._reserved.discard(sandbox_id)
        session = Session(
            sandbox_id=sandbox_id,
            episode_id=episode_id,
            policy=compiled,
            sink=sink,
            step=step,
            slot=slot,
        )
        self._register(session, slot)
        attachment = Attachment(self, session)
        self._attachments[sandbox_id] = attachment
        return attachment

    def _register(self, session: Session, slot: Slot) -> None:
        self._sessions[session.sandbox_id] = session
        self._by_address[slot.addresses.sandbox4] = session
        self._by_address[str(ipaddress.ip_address(slot.addresses.sandbox6))] = session
        self._by_ifindex[slot.gateway_ifindex] = session

    async def _detach(self, session: Session) -> None:
        session.closed = True
        slot = session.slot
        self._sessions.pop(session.sandbox_id, None)
        self._attachments.pop(session.sandbox_id, None)
        self._by_address.pop(slot.addresses.sandbox4, None)
        self._by_address.pop(str(ipaddress.ip_address(slot.addresses.sandbox6)), None)
        self._by_ifindex.pop(slot.gateway_ifindex, None)
        await session.cancel_flows()
        if self._pool is not None:
            try:
                await self._pool.release(slot)
            except _SETUP_ERRORS as exc:
                raise GatewayError(f"could not remove {slot.path}: {exc}") from exc

    def _lookup(self, peer: tuple[Any, ...]) -> Session | None:
        host = str(peer[0])
        if "%" in host or host.startswith("fe80:"):
            # IPv6 link-local source: the interface it came in on names the sandbox.
            scope = peer[3] if len(peer) > 3 else 0
            return self._by_ifindex.get(int(scope))
        try:
            key = str(ipaddress.ip_address(host))
        except ValueError:
            return None
        return self._by_address.get(key)

    # --- DNS and UDP ---------------------------------------------------------------

    async def _answer_dns(
        self, packet: bytes, peer: tuple[Any, ...], transport: str = "udp"
    ) -> bytes | None:
        session = self._lookup(peer)
        if session is None or session.closed:
            return None
        step = session.step()
        outcome = await answer_query(packet, session.policy, self._resolver, session.bindings)
        # Reported after the reply is on its way: the pid lookup must not slow DNS down.
        task = asyncio.get_running_loop().create_task(
            self._report_dns(session, peer, transport, outcome, step)
        )
        session.track(task)
        return outcome.reply

    async def _report_dns(
        self,
        session: Session,
        peer: tuple[Any, ...],
        transport: str,
        outcome: DnsOutcome,
        step: int | None,
    ) -> None:
        if outcome.name:
            for signal in dns_signals(outcome.name, session.policy.thresholds):
                await session.raise_signal(signal, transport=transport, local=peer, step=step)
        dropped = session.admit_report("dns")
        if dropped is None:
            return
        pid = None if outcome.allowed else await session.pid_of(transport, peer)
        session.emit(
            EventKind.NET_DNS,
            {"src": endpoint(peer), "transport": transport, **outcome.to_data(),
             "suppressed_before": dropped},
            pid,
            step=step,
        )

    def _udp_dropped(self, src: tuple[Any, ...], dst: tuple[str, int], size: int) -> None:
        session = self._lookup(src)
        data = {
            "transport": "udp",
            "src": endpoint(src),
            "dst": dst[0],
            "port": dst[1],
            "bytes_up": size,
            "verdict": "deny",
            "reason": "UDP other than DNS is never relayed",
            "phase": "decision",
        }
        if session is None:
            self._sink.emit(Event(EventKind.NET_CONNECT, "unknown", data=data))
            return
        scan = session.scan.note(dst[0], dst[1], time.monotonic())
        dropped = session.admit_report("udp")
        if dropped is None and scan is None:
            return
        data["suppressed_before"] = dropped or 0
        task = asyncio.get_running_loop().create_task(
            self._report_udp(session, src, data, scan, session.step())
        )
        session.track(task)

    def _other_dropped(self, packet: LoggedPacket) -> None:
        session = self._by_ifindex.get(packet.in_ifindex or -1) or self._lookup((packet.src, 0))
        data = {
            "transport": packet.protocol,
            "src": packet.src,
            "dst": packet.dst,
            "bytes_up": packet.size,
            "verdict": "deny",
            "reason": "only TCP and UDP leave a sandbox, through the gateway",
            "phase": "decision",
        }
        if session is None:
            self._sink.emit(Event(EventKind.NET_CONNECT, "unknown", data=data))
            return
        dropped = session.admit_report("other")
        if dropped is not None:
            session.emit(EventKind.NET_CONNECT, {**data, "suppressed_before": dropped})

    async def _report_udp(
        self,
        session: Session,
        src: tuple[Any, ...],
        data: dict[str, Any],
        scan: Signal | None,
        step: int | None,
    ) -> None:
        pid = await session.pid_of("udp", src)
        if scan is not None:
            await session.raise_signal(scan, transport="udp", local=src, pid=pid, step=step)
        session.emit(EventKind.NET_CONNECT, data, pid, step=step)


def sweep_stale_namespaces(prefix: str = "corral") -> list[str]:
    """Removes namespaces left by gateways whose owner process is gone; returns their names.

    A live owner's namespaces are never touched (its pid still exists).
    """
    pattern = re.compile(rf"^{re.escape(prefix)}-(?:gw-)?(\d+)-[0-9a-f]{{4}}(?:-\d+)?$")
    removed: list[str] = []
    for path in sorted(NETNS_DIR.glob(f"{prefix}-*")):
        found = pattern.match(path.name)
        if found is None:
            continue
        try:
            os.kill(int(found.group(1)), 0)
            continue  # owner alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # exists, just not ours to signal
        remove_netns(str(path))
        removed.append(path.name)
    return removed


def _setup_gateway_netns() -> None:
    """Runs inside the gateway namespace: loopback, no forwarding, tproxy routing."""
    for key, value in (
        ("net.ipv4.ip_forward", "0"),
        ("net.ipv6.conf.all.forwarding", "0"),
        # Strict reverse-path: a sandbox can only speak from the addresses of its own link.
        ("net.ipv4.conf.all.rp_filter", "1"),
        ("net.ipv4.conf.default.rp_filter", "1"),
        ("net.ipv6.conf.all.accept_ra", "0"),
        ("net.ipv6.conf.default.accept_ra", "0"),
    ):
        write_sysctl(key, value)
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        lo = ipr.link_lookup(ifname="lo")[0]
        for family, dst in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            ipr.rule("add", family=family, fwmark=TPROXY_MARK, table=TPROXY_TABLE)
            # "local default dev lo": marked (tproxied) packets are delivered to our socket.
            ipr.route(
                "add",
                family=family,
                dst=dst,
                dst_len=0,
                type="local",
                scope=254,  # RT_SCOPE_HOST
                oif=lo,
                table=TPROXY_TABLE,
            )


def _host_addresses() -> list[str]:
    """Every address of the host namespace: always denied as destinations."""
    with IPRoute() as ipr:
        found = {
            str(addr.get("IFA_ADDRESS") or addr.get_attr("IFA_ADDRESS"))
            for addr in ipr.get_addr()
        }
    return sorted(a for a in found if a and a != "None")


__all__ = ["HOSTS_TEXT", "Attachment", "Gateway", "sweep_stale_namespaces"]
