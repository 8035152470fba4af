"""Per-sandbox network namespaces, made ahead of time so attaching one takes microseconds.

Each slot is a namespace whose only interface (besides ``lo``) is one end of a veth
pair; the other end (``cg<n>``) sits in the gateway's namespace. The sandbox end has
a default route (v4 and v6) via the gateway end, and nothing else: every packet a
sandbox sends arrives at the gateway namespace, where nftables hands it to the gateway.

Addressing, per slot index ``n``:

* IPv4 ``169.254.X.Y/30`` pairs (gateway ``.1``, sandbox ``.2`` within the /30),
  skipping ``169.254.0.0/24``, ``169.254.255.0/24`` (reserved by RFC 3927) and
  ``169.254.169.0/24`` (the cloud metadata address must never be a local one, so
  a connection to it always takes the default route into the gateway and is refused).
  Link-local is never routed off a link, so these addresses cannot collide with
  anything the host routes — and they only exist inside the gateway and sandbox
  namespaces anyway, never in the host's.
* IPv6 ``fd7c:6f72:7261:<n>::/64`` from a ULA prefix no host route uses, for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from corral.gateway.netns import (
    create_netns,
    netns_inode,
    netns_path,
    remove_netns,
    run_on_thread,
    setns_current_thread,
    write_sysctl,
)
from corral.gateway.nft import LINK_PREFIX

ULA_PREFIX = "fd7c:6f72:7261"
_V4_BASE = int(ipaddress.IPv4Address("169.254.1.0"))
_SLOTS_PER_24 = 64
_SKIPPED_THIRD_OCTET = 169
MAX_SLOTS = 253 * _SLOTS_PER_24  # third octets 1..254 minus 169
_IFA_F_NODAD = 0x02
_LINK_MTU = 65520


@dataclass(frozen=True, slots=True)
class LinkAddresses:
    gateway4: str
    sandbox4: str
    gateway6: str
    sandbox6: str


def link_addresses(index: int) -> LinkAddresses:
    if not 0 <= index < MAX_SLOTS:
        raise ValueError(f"slot index {index} out of range")
    third = 1 + index // _SLOTS_PER_24
    if third >= _SKIPPED_THIRD_OCTET:
        third += 1
    base = f"169.254.{third}."
    fourth = (index % _SLOTS_PER_24) * 4
    return LinkAddresses(
        gateway4=f"{base}{fourth + 1}",
        sandbox4=f"{base}{fourth + 2}",
        gateway6=f"{ULA_PREFIX}:{index:x}::1",
        sandbox6=f"{ULA_PREFIX}:{index:x}::2",
    )


@dataclass(frozen=True, slots=True)
class Slot:
    index: int
    name: str
    path: str
    inode: int
    gateway_ifname: str
    gateway_ifindex: int
    addresses: LinkAddresses


def _create_slot(index: int, name: str, gateway_netns: str) -> Slot:
    """Blocking: builds one namespace and its link. Removes what it made if it fails."""
    addrs = link_addresses(index)
    gw_ifname = f"{LINK_PREFIX}{index}"
    path = create_netns(name)

    def configure() -> int:
        # This thread is in the new sandbox namespace (run_on_thread put it there).
        for key, value in (
            ("net.ipv6.conf.all.accept_ra", "0"),
            ("net.ipv6.conf.default.accept_ra", "0"),
            ("net.ipv4.ip_forward", "0"),
        ):
            write_sysctl(key, value)
        gw_fd = os.open(gateway_netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with IPRoute() as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
                # The link is virtual and ends at the gateway, which terminates TCP: a big
                # MTU costs nothing upstream and cuts per-packet work on bulk transfers.
                ipr.link(
                    "add",
                    ifname="eth0",
                    kind="veth",
                    peer={"ifname": gw_ifname, "net_ns_fd": gw_fd, "mtu": _LINK_MTU},
                    mtu=_LINK_MTU,
                )
                eth = ipr.link_lookup(ifname="eth0")[0]
                ipr.addr("add", index=eth, address=addrs.sandbox4, prefixlen=30)
                ipr.addr(
                    "add", index=eth, address=addrs.sandbox6, prefixlen=64, flags=_IFA_F_NODAD
                )
                ipr.link("set", index=eth, state="up")
                ipr.route("add", dst="0.0.0.0/0", gateway=addrs.gateway4)
                ipr.route("add", dst="::/0", gateway=addrs.gateway6, family=socket.AF_INET6)
        finally:
            os.close(gw_fd)
        setns_current_thread(gateway_netns)
        with IPRoute() as ipr:
            gw = ipr.link_lookup(ifname=gw_ifname)[0]
            ipr.addr("add", index=gw, address=addrs.gateway4, prefixlen=30)
            ipr.addr("add", index=gw, address=addrs.gateway6, prefixlen=64, flags=_IFA_F_NODAD)
            ipr.link("set", index=gw, state="up")
            return int(gw)

    try:
        ifindex = run_on_thread(configure, netns=path)
        return Slot(index, name, path, netns_inode(path), gw_ifname, ifindex, addrs)
    except (OSError, NetlinkError, IndexError):
        _destroy(gw_ifname, path, gateway_netns)
        raise


def _destroy(gw_ifname: str, path: str, gateway_netns: str) -> None:
    """Blocking: cuts the link first (so processes still inside lose it at once), then unpins."""

    def cut() -> None:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=gw_ifname)
            if found:
                with contextlib.suppress(NetlinkError):
                    ipr.link("del", index=found[0])

    with contextlib.suppress(FileNotFoundError):
        run_on_thread(cut, netns=gateway_netns)
    remove_netns(path)


class NamespacePool:
    """Keeps ``size`` slots ready. ``take`` is instant when warm, builds one when cold."""

    def __init__(self, gateway_netns: str, name_prefix: str, size: int) -> None:
        self._gateway_netns = gateway_netns
        self._prefix = name_prefix
        self._size = size
        self._ready: list[Slot] = []
        self._used: set[int] = set()
        self._serial = 0
        self._lock = asyncio.Lock()
        self._refill: asyncio.Task[None] | None = None
        self._closed = False
        self._orphans: set[asyncio.Future[Slot]] = set()

    def _allocate(self) -> tuple[int, str]:
        index = next(i for i in range(MAX_SLOTS) if i not in self._used)
        self._used.add(index)
        self._serial += 1
        return index, f"{self._prefix}-{self._serial}"

    async def _make(self) -> Slot:
        index, name = self._allocate()
        build = asyncio.ensure_future(
            asyncio.to_thread(_create_slot, index, name, self._gateway_netns)
        )
        try:
            # Shielded: the thread runs on even if we are cancelled, and must not leak.
            return await asyncio.shield(build)
        except asyncio.CancelledError:
            self._orphans.add(build)
            raise
        except BaseException:
            self._used.discard(index)
            raise

    async def fill(self) -> None:
        """Builds slots until ``size`` are ready."""
        async with self._lock:
            while not self._closed and len(self._ready) < self._size:
                self._ready.append(await self._make())

    def _schedule_refill(self) -> None:
        if self._size and (self._refill is None or self._refill.done()) and not self._closed:
            self._refill = asyncio.get_running_loop().create_task(self._background_fill())

    async def _background_fill(self) -> None:
        # A failure here is not lost: the next take() builds cold and raises it to attach().
        with contextlib.suppress(OSError, NetlinkError, IndexError):
            await self.fill()

    async def take(self) -> Slot:
        if self._closed:
            raise RuntimeError("pool is closed")
        if self._ready:
            slot = self._ready.pop()
        else:
            slot = await self._make()
        self._schedule_refill()
        return slot

    async def release(self, slot: Slot) -> None:
        """Destroys a slot that was handed out; slots are never reused."""
        try:
            await asyncio.to_thread(
                _destroy, slot.gateway_ifname, slot.path, self._gateway_netns
            )
        finally:
            self._used.discard(slot.index)

    async def close(self) -> None:
        """Destroys every slot not handed out, including ones whose builder was cancelled."""
        self._closed = True
        if self._refill is not None:
            # Not cancelled: fill() stops after the slot it is building, which we then free.
            await asyncio.gather(self._refill, return_exceptions=True)
        async with self._lock:
            ready, self._ready = self._ready, []
        for build in list(self._orphans):
            result = (await asyncio.gather(build, return_exceptions=True))[0]
            if isinstance(result, Slot):
                ready.append(result)
        self._orphans.clear()
        for slot in ready:
            await self.release(slot)


__all__ = [
    "MAX_SLOTS",
    "ULA_PREFIX",
    "LinkAddresses",
    "NamespacePool",
    "Slot",
    "link_addresses",
    "netns_path",
]
