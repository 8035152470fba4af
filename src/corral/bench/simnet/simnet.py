"""``SimNet``: the simulated internet as one async context manager.

    async with SimNet() as net:
        gateway = Gateway(resolver=net.resolver())
        ...
        assert net.received("ssh") == 0

Servers run on a private event loop in a thread of their own, so they keep serving
while the caller's loop (or a blocking benchmark) is busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import socket
import tempfile
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pyroute2.netlink.exceptions import NetlinkError

from corral.bench.simnet.certs import make_ca_and_leaf
from corral.bench.simnet.network import (
    BRIDGE_ADDRESSES,
    create_bridge,
    create_host,
    delete_link,
    existing_bridges,
)
from corral.bench.simnet.servers import (
    CountingDatagram,
    HostCounter,
    PoolStats,
    SimDnsServer,
    counting_front,
    echo_handler,
    http_handler,
    index_routes,
    listening_socket,
    ssh_server,
    static_routes,
    stratum_handler,
    tls_context,
)
from corral.bench.simnet.wheel import PROJECT, WHEEL_NAME, build_wheel
from corral.gateway.dns import DnsServerResolver
from corral.gateway.netns import netns_path, remove_netns

T = TypeVar("T")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True)
class HostSpec:
    name: str
    ip: str
    names: tuple[str, ...] = ()


#: The simulated hosts, their addresses and DNS names (all under the reserved .test TLD).
HOSTS: tuple[HostSpec, ...] = (
    HostSpec("web", "198.51.100.10", ("example.sim.test", "www.example.sim.test")),
    HostSpec("other", "198.51.100.11", ("evil.sim.test",)),
    HostSpec("pypi", "198.51.100.20", ("pypi.sim.test",)),
    HostSpec("dns", "198.51.100.53", ("ns.sim.test",)),
    HostSpec("ssh", "203.0.113.22", ("ssh.sim.test",)),
    HostSpec("pool", "203.0.113.33", ("pool.minexmr.sim.test",)),
    HostSpec("sink", "203.0.113.99", ("sink.sim.test",)),
)
#: Names that point where a sandbox must never go (DNS rebinding tests).
REBINDING_RECORDS = {
    "rebind.sim.test": ["10.0.0.5"],
    "loopback.sim.test": ["127.0.0.1"],
    "metadata.sim.test": ["169.254.169.254"],
}
#: Ports the sink host answers on (TCP echo) and counts (UDP).
SINK_TCP_PORTS = (4444, 8080, 9999)
SINK_UDP_PORTS = (9999, 5353)


@dataclass
class SimHost:
    name: str
    ip: str
    names: tuple[str, ...]
    netns_name: str
    netns_path: str
    link: str
    counter: HostCounter = field(default_factory=HostCounter)

    @property
    def received(self) -> int:
        return self.counter.total


def _remove_leftovers(bridge: str, tag: str) -> None:
    """Removes what a killed run left: its bridge, host links, namespaces and temp dir."""
    prefix, _, rest = tag.partition(":")
    token, _, tmp = rest.partition(":")
    if tmp.startswith(f"{tempfile.gettempdir()}/corral-simnet-"):
        shutil.rmtree(tmp, ignore_errors=True)
    for i, spec in enumerate(HOSTS):
        with contextlib.suppress(OSError, NetlinkError):
            delete_link(f"{prefix}h{token}{i}")
        with contextlib.suppress(OSError):
            remove_netns(netns_path(f"{prefix}-sim-{token}-{spec.name}"))
    with contextlib.suppress(OSError, NetlinkError):
        delete_link(bridge)


class SimNet:
    """Test hosts in their own namespaces behind a bridge, with real servers on them."""

    def __init__(self, *, prefix: str = "crl") -> None:
        self._token = secrets.token_hex(3)
        self._prefix = prefix
        self.bridge = f"{prefix}b{self._token}"
        self.hosts: dict[str, SimHost] = {}
        self.pool_stats = PoolStats()
        self.tmp: Path | None = None
        self.ca_pem: str = ""
        self.wheel_name = WHEEL_NAME
        self.project = PROJECT
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[Any] = []
        self._sockets: list[socket.socket] = []
        self._bridge_made = False

    # --- public helpers ------------------------------------------------------------

    @property
    def bridge_address(self) -> str:
        """This machine's own address on the simulated net (never a test host)."""
        return BRIDGE_ADDRESSES[0]

    @property
    def dns_server(self) -> str:
        return self.hosts["dns"].ip

    def resolver(self) -> DnsServerResolver:
        return DnsServerResolver(self.dns_server)

    def ip(self, host: str) -> str:
        return self.hosts[host].ip

    def received(self, host: str | None = None) -> int:
        """Bytes received by one host, or by all hosts."""
        if host is not None:
            return self.hosts[host].received
        return sum(h.received for h in self.hosts.values())

    def reset_counters(self) -> None:
        for host in self.hosts.values():
            host.counter.total = 0
            host.counter.by_port.clear()

    def records(self) -> dict[str, list[str]]:
        out = {name: [h.ip] for h in self.hosts.values() for name in h.names}
        out.update(REBINDING_RECORDS)
        return out

    # --- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> SimNet:
        try:
            await asyncio.to_thread(self._build_network)
            self._start_loop()
            await self._on_sim_loop(self._start_servers())
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(OSError, RuntimeError):
                await self._on_sim_loop(self._stop_servers())
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                await asyncio.to_thread(self._thread.join, 10)
            self._loop.close()
            self._loop = None
        await asyncio.to_thread(self._remove_network)

    def _build_network(self) -> None:
        # One simulated internet per host: two would claim the same addresses and routes.
        for name, pid, tag, alive in existing_bridges():
            if alive:
                raise RuntimeError(f"a simulated internet is already running (pid {pid})")
            _remove_leftovers(name, tag)
        self.tmp = Path(tempfile.mkdtemp(prefix="corral-simnet-"))
        # Clients run as an unprivileged uid and must read the CA (the keys stay 0600).
        self.tmp.chmod(0o755)
        create_bridge(self.bridge, f"{self._prefix}:{self._token}:{self.tmp}")
        self._bridge_made = True
        for i, spec in enumerate(HOSTS):
            ns = f"{self._prefix}-sim-{self._token}-{spec.name}"
            link = f"{self._prefix}h{self._token}{i}"
            path = create_host(ns, link, self.bridge, spec.ip)
            self.hosts[spec.name] = SimHost(spec.name, spec.ip, spec.names, ns, path, link)
        names = sorted({n for spec in HOSTS for n in spec.names})
        ca, cert, key = make_ca_and_leaf(self.tmp, names, [])
        self.ca_pem = str(ca)
        self._cert, self._key = cert, key
        self._wheel = build_wheel(self.tmp)

    def _remove_network(self) -> None:
        for host in list(self.hosts.values()):
            with contextlib.suppress(OSError, NetlinkError):
                delete_link(host.link)
            with contextlib.suppress(OSError):
                remove_netns(host.netns_path)
        self.hosts.clear()
        # Hosts whose creation failed half way leave names behind; sweep ours by prefix.
        for spec in HOSTS:
            with contextlib.suppress(OSError):
                remove_netns(netns_path(f"{self._prefix}-sim-{self._token}-{spec.name}"))
        if self._bridge_made:
            with contextlib.suppress(OSError, NetlinkError):
                delete_link(self.bridge)
            self._bridge_made = False
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def _start_loop(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="corral-simnet", daemon=True)
        self._thread.start()
        ready.wait(10)
        self._loop = loop

    async def _on_sim_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            raise RuntimeError("simnet loop not running")
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    # --- servers (run on the simnet loop) -------------------------------------------------

    async def _tcp(self, host: SimHost, port: int, handler: Handler,
                   **kwargs: Any) -> None:
        sock = await asyncio.to_thread(listening_socket, host.netns_path, host.ip, port,
                                       socket.SOCK_STREAM)
        self._sockets.append(sock)
        self._servers.append(await asyncio.start_server(handler, sock=sock, **kwargs))

    async def _internal(self, host: SimHost, handler: Handler | None = None,
                        **kwargs: Any) -> tuple[int, socket.socket]:
        sock = await asyncio.to_thread(listening_socket, host.netns_path, "127.0.0.1", 0,
                                       socket.SOCK_STREAM)
        self._sockets.append(sock)
        if handler is not None:
            self._servers.append(await asyncio.start_server(handler, sock=sock, **kwargs))
        return sock.getsockname()[1], sock

    async def _udp(self, host: SimHost, port: int,
                   factory: Callable[[], asyncio.DatagramProtocol]) -> None:
        sock = await asyncio.to_thread(listening_socket, host.netns_path, host.ip, port,
                                       socket.SOCK_DGRAM)
        self._sockets.append(sock)
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            factory, sock=sock
        )
        self._servers.append(transport)

    async def _https(self, host: SimHost, route: Any) -> None:
        inner, _ = await self._internal(
            host, http_handler(route, None), ssl=tls_context(self._cert, self._key)
        )
        await self._tcp(host, 443, counting_front(host.netns_path, inner,
                                                  host.counter.counter(443)))

    async def _start_servers(self) -> None:
        web, other, pypi = self.hosts["web"], self.hosts["other"], self.hosts["pypi"]
        for host in (web, other):
            await self._tcp(host, 80, http_handler(static_routes(host.name),
                                                   host.counter.counter(80)))
            await self._https(host, static_routes(host.name))
        index = index_routes(PROJECT, self._wheel)
        await self._tcp(pypi, 80, http_handler(index, pypi.counter.counter(80)))
        await self._https(pypi, index)

        ssh = self.hosts["ssh"]
        inner, inner_sock = await self._internal(ssh)
        self._servers.append(await ssh_server(inner_sock))
        for port in (22, 443):
            await self._tcp(ssh, port, counting_front(ssh.netns_path, inner,
                                                      ssh.counter.counter(port)))

        pool = self.hosts["pool"]
        for port in (3333, 443):
            await self._tcp(pool, port, stratum_handler(self.pool_stats,
                                                        pool.counter.counter(port)))

        sink = self.hosts["sink"]
        for port in SINK_TCP_PORTS:
            await self._tcp(sink, port, echo_handler(sink.counter.counter(port)))
        for port in SINK_UDP_PORTS:
            counter = sink.counter.counter(port)
            await self._udp(sink, port, lambda counter=counter: CountingDatagram(counter))

        dns = self.hosts["dns"]
        records = self.records()
        dns_count = dns.counter.counter(53)
        await self._udp(dns, 53, lambda: SimDnsServer(records, dns_count))

    async def _stop_servers(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            if isinstance(server, asyncio.AbstractServer):
                with contextlib.suppress(OSError):
                    await asyncio.wait_for(server.wait_closed(), 2)
        self._servers.clear()
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        current = asyncio.current_task()
        others = [t for t in asyncio.all_tasks() if t is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)


__all__ = ["HOSTS", "REBINDING_RECORDS", "SINK_TCP_PORTS", "SINK_UDP_PORTS", "HostSpec",
           "SimHost", "SimNet"]
