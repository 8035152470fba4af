"""The gateway namespace's nftables ruleset, rendered as text and loaded with ``nft -f -``.

The ruleset lives in the gateway's own namespace, never the host's, so a mistake
here cannot open host services: that namespace holds nothing but the gateway's
sockets and has no route anywhere except the sandbox links.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from corral.errors import GatewayError

TABLE = "corral_gw"
#: Every sandbox-facing veth end in the gateway namespace is named ``<prefix><n>``.
LINK_PREFIX = "cg"
#: Mark that routes tproxied UDP to the local sink socket (see :data:`TPROXY_TABLE`).
TPROXY_MARK = 1
#: Policy-routing table with the "everything is local" route tproxy needs.
TPROXY_TABLE = 100
#: NFLOG group (per namespace) that receives dropped packets of other protocols.
NFLOG_GROUP = 1


@dataclass(frozen=True, slots=True)
class Ports:
    """Ports of the gateway's sockets in its namespace, per address family."""

    tcp4: int
    tcp6: int
    dns4: int
    dns6: int
    udp4: int
    udp6: int


def render_ruleset(ports: Ports) -> str:
    """The whole table. Loading it atomically replaces any earlier copy."""
    links = f'"{LINK_PREFIX}*"'
    mark = f"0x{TPROXY_MARK:08x}"
    udp_other = f"udp dport != 53 meta mark set {mark}"
    on_link = "fib daddr type { local, multicast, broadcast, anycast }"
    return f"""
table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
    # Strict reverse-path check on every sandbox link: a packet must come from an address
    # routed back through the link it arrived on, so one sandbox cannot speak (or have its
    # DNS and UDP judged, attributed and punished) as another. IPv4 rp_filter alone does
    # not cover IPv6; this covers both.
    chain antispoof {{
        type filter hook prerouting priority raw; policy accept;
        iifname {links} ip6 saddr :: accept
        iifname {links} fib saddr . iif oif missing counter drop
    }}
    # UDP other than DNS: handed to the sink socket with its original destination
    # intact (tproxy), so the drop is logged as an Event with where it was going.
    chain divert {{
        type filter hook prerouting priority mangle; policy accept;
        iifname {links} meta nfproto ipv4 {udp_other} tproxy ip to :{ports.udp4} accept
        iifname {links} meta nfproto ipv6 {udp_other} tproxy ip6 to :{ports.udp6} accept
        # Neither TCP nor UDP and meant for another host (ping, raw IP, SCTP...): logged to
        # the gateway (an Event) and dropped. Link chatter (neighbour discovery to local or
        # multicast addresses) goes on to the input filter. A failed route lookup (every
        # remote address: this namespace has no routes out) doesn't match the first rule.
        iifname {links} meta l4proto != {{ tcp, udp }} {on_link} counter accept
        iifname {links} meta l4proto != {{ tcp, udp }} ip6 daddr ff00::/8 accept
        iifname {links} meta l4proto != {{ tcp, udp }} ip daddr 224.0.0.0/4 accept
        iifname {links} meta l4proto != {{ tcp, udp }} counter log group {NFLOG_GROUP} drop
    }}
    # Every TCP connection, to any address and port, goes to the transparent listener;
    # every DNS datagram to the gateway's resolver.
    chain intercept {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname {links} meta nfproto ipv4 meta l4proto tcp redirect to :{ports.tcp4}
        iifname {links} meta nfproto ipv6 meta l4proto tcp redirect to :{ports.tcp6}
        iifname {links} meta nfproto ipv4 udp dport 53 redirect to :{ports.dns4}
        iifname {links} meta nfproto ipv6 udp dport 53 redirect to :{ports.dns6}
    }}
    # Only the gateway's own sockets are reachable; anything else is dropped.
    chain input {{
        type filter hook input priority filter; policy drop;
        iif "lo" accept
        iifname {links} meta nfproto ipv4 tcp dport {ports.tcp4} accept
        iifname {links} meta nfproto ipv6 tcp dport {ports.tcp6} accept
        iifname {links} meta nfproto ipv4 udp dport {ports.dns4} accept
        iifname {links} meta nfproto ipv6 udp dport {ports.dns6} accept
        iifname {links} meta mark {mark} meta l4proto udp accept
        iifname {links} icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept
        counter drop
    }}
    # The gateway never forwards: allowed traffic leaves through its own connections.
    chain forward {{
        type filter hook forward priority filter; policy drop;
        counter drop
    }}
}}
"""


async def load_ruleset(netns_name: str, ruleset: str, *, nft: str = "nft") -> None:
    """Loads ``ruleset`` inside the named namespace; raises GatewayError if nft refuses it."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            netns_name,
            nft,
            "-f",
            "-",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(ruleset.encode()), timeout=20)
    except (OSError, TimeoutError) as exc:
        raise GatewayError(f"cannot run nft in {netns_name}: {exc}") from exc
    if proc.returncode != 0:
        raise GatewayError(f"nft refused the gateway ruleset: {err.decode(errors='replace')}")


__all__ = [
    "LINK_PREFIX",
    "NFLOG_GROUP",
    "TABLE",
    "TPROXY_MARK",
    "TPROXY_TABLE",
    "Ports",
    "load_ruleset",
    "render_ruleset",
]
