"""The simulated internet's plumbing: a bridge in the host namespace and one namespace per
test host. Only 198.51.100.0/24 and 203.0.113.0/24 (TEST-NET-2/3, never routed on the real
internet) are used; the host gets routes for exactly those two blocks, via the bridge, and
test hosts have no default route, so nothing they send can go anywhere else."""

from __future__ import annotations

import contextlib
import ipaddress
import os

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from corral.gateway.netns import create_netns, remove_netns, run_on_thread, write_sysctl

SIM_NETWORKS = (ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("203.0.113.0/24"))
#: The host side of the bridge in each block (what the gateway's connections come from).
BRIDGE_ADDRESSES = ("198.51.100.1", "203.0.113.1")


def check_sim_address(ip: str) -> None:
    addr = ipaddress.ip_address(ip)
    if not any(addr in net for net in SIM_NETWORKS) or ip in BRIDGE_ADDRESSES:
        raise ValueError(f"{ip} is not a test-host address in {SIM_NETWORKS}")


#: Bridges are tagged ``<ALIAS_TAG><owner pid>`` so a later run can remove a dead run's net.
ALIAS_TAG = "corral-simnet-owner:"


def create_bridge(name: str, tag: str) -> None:
    """The simnet's bridge; ``tag`` (after the owner pid) names what else belongs to it."""
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="bridge")
        index = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=index, ifalias=f"{ALIAS_TAG}{os.getpid()}:{tag}")
        # No IPv6 on the bridge: the simulated internet is IPv4 only and stays silent.
        write_sysctl(f"net.ipv6.conf.{name}.disable_ipv6", "1")
        for ip in BRIDGE_ADDRESSES:
            ipr.addr("add", index=index, address=ip, prefixlen=24)
        ipr.link("set", index=index, state="up")


def delete_link(name: str) -> None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if found:
            with contextlib.suppress(NetlinkError):
                ipr.link("del", index=found[0])


def existing_bridges() -> list[tuple[str, int, str, bool]]:
    """Simnet bridges on this host: (name, owner pid, tag, owner alive)."""
    found = []
    with IPRoute() as ipr:
        for link in ipr.get_links():
            alias = link.get_attr("IFLA_IFALIAS") or ""
            if not alias.startswith(ALIAS_TAG):
                continue
            pid_text, _, tag = alias[len(ALIAS_TAG) :].partition(":")
            try:
                pid = int(pid_text)
                os.kill(pid, 0)
                alive = True
            except ProcessLookupError:
                alive = False
            except (PermissionError, ValueError):
                continue
            found.append((link.get_attr("IFLA_IFNAME"), pid, tag, alive))
    return found


def create_host(netns_name: str, host_link: str, bridge: str, ip: str) -> str:
    """A namespace with ``eth0`` (``ip``/24) plugged into ``bridge``; returns its path."""
    check_sim_address(ip)
    path = create_netns(netns_name)
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=host_link, kind="veth", peer={"ifname": "eth0",
                                                                 "net_ns_fd": path})
            index = ipr.link_lookup(ifname=host_link)[0]
            write_sysctl(f"net.ipv6.conf.{host_link}.disable_ipv6", "1")
            ipr.link("set", index=index, master=ipr.link_lookup(ifname=bridge)[0], state="up")

        def inside() -> None:
            write_sysctl("net.ipv6.conf.all.disable_ipv6", "1")
            with IPRoute() as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
                eth = ipr.link_lookup(ifname="eth0")[0]
                ipr.addr("add", index=eth, address=ip, prefixlen=24)
                ipr.link("set", index=eth, state="up")

        run_on_thread(inside, netns=path)
    except (OSError, NetlinkError, IndexError):
        delete_link(host_link)
        remove_netns(path)
        raise
    return path


__all__ = [
    "ALIAS_TAG",
    "BRIDGE_ADDRESSES",
    "SIM_NETWORKS",
    "check_sim_address",
    "create_bridge",
    "create_host",
    "delete_link",
    "existing_bridges",
]
