"""The enforced form of a NetworkPolicy, and the one function that decides a flow.

Users write :class:`corral.policy.NetworkPolicy`; the gateway compiles it once per
attachment into :class:`CompiledPolicy` and decides every connection in a fixed order:

1. always-denied ranges (loopback, private, CGNAT, link-local and metadata, multicast,
   reserved, the host's own addresses, all of IPv6) unless a CIDR rule *inside* that
   range names the address — a broad ``0.0.0.0/0`` does not unlock ``10.0.0.0/8``;
2. allow rules, in policy order;
3. deny.

Anything that cannot be evaluated (bad address, missing name) is a deny.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from corral.errors import GatewayError
from corral.policy import DetectorThresholds, NetworkPolicy, Protocol

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Ports a domain rule allows when it names none.
DOMAIN_DEFAULT_PORTS = frozenset({80, 443})
#: Protocols a rule allows when it names none. ssh and stratum must always be named.
#: Domain rules can only ever match TLS or HTTP, because only those carry a name (SNI/Host).
#: CIDR rules also allow "unknown", so a named database or API on a private port works.
DOMAIN_DEFAULT_PROTOCOLS = frozenset({Protocol.TLS, Protocol.HTTP})
CIDR_DEFAULT_PROTOCOLS = frozenset({Protocol.TLS, Protocol.HTTP, Protocol.UNKNOWN})
_NAMED_PROTOCOLS = frozenset({Protocol.TLS, Protocol.HTTP})

#: (range, why) pairs denied unless a CIDR rule inside the range names the address.
#: Ordered most specific first so the reason names the narrowest range.
ALWAYS_DENIED: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), why)
    for net, why in (
        ("169.254.169.254/32", "cloud metadata"),
        ("0.0.0.0/8", "this-network"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("168.63.129.16/32", "cloud host endpoint"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay"),
        ("198.18.0.0/15", "benchmarking"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("::1/128", "loopback"),
        ("::/128", "unspecified"),
        # IPv6 forms that carry an IPv4 address inside (NAT64, 6to4, Teredo, IPv4-compatible):
        # on a NAT64 network they reach IPv4 hosts, private ones included.
        ("64:ff9b::/96", "NAT64"),
        ("64:ff9b:1::/48", "NAT64"),
        ("2002::/16", "6to4"),
        ("2001::/32", "Teredo"),
        ("::/96", "IPv4-compatible"),
        ("100::/64", "discard"),
        ("fec0::/10", "site-local"),
        ("fc00::/7", "unique-local"),
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
        ("::/0", "ipv6"),
    )
)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    rule: int | None = None

    @property
    def verdict(self) -> str:
        return "allow" if self.allowed else "deny"


@dataclass(frozen=True, slots=True)
class DomainPattern:
    """``name`` exactly, or (``wildcard``) any name strictly below ``name``."""

    name: str
    wildcard: bool

    def matches(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        if self.wildcard:
            return host.endswith("." + self.name)
        return host == self.name


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One enforced allow rule. ``ports`` None: any port. ``protocols`` empty: matches nothing
    (a domain rule naming only ssh/stratum, which carry no name to check)."""

    index: int
    protocols: frozenset[Protocol]
    ports: frozenset[int] | None
    network: IPNetwork | None = None
    domain: DomainPattern | None = None

    def port_ok(self, port: int) -> bool:
        return self.ports is None or port in self.ports


def _parse_ip(value: str | IPAddress) -> IPAddress:
    ip = ipaddress.ip_address(value) if isinstance(value, str) else value
    # An IPv4-mapped IPv6 address is the IPv4 address; judge it as such.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    rules: tuple[CompiledRule, ...]
    denied: tuple[tuple[IPNetwork, str], ...]
    thresholds: DetectorThresholds

    # --- addresses --------------------------------------------------------------

    def _denied_range(self, ip: IPAddress) -> tuple[IPNetwork, str] | None:
        for net, why in self.denied:
            if ip.version == net.version and ip in net:
                return net, why
        return None

    def _unlocking_rules(self, ip: IPAddress, denied: IPNetwork) -> list[CompiledRule]:
        return [
            r
            for r in self.rules
            if r.network is not None
            and r.network.version == ip.version
            and ip in r.network
            and r.network.subnet_of(denied)  # type: ignore[arg-type]
        ]

    def address_reachable(self, ip: str | IPAddress) -> bool:
        """Whether ``ip`` is outside every always-denied range, or explicitly unlocked.

        The DNS server uses this to refuse answers pointing at private addresses.
        """
        try:
            addr = _parse_ip(ip)
        except ValueError:
            return False
        hit = self._denied_range(addr)
        return hit is None or bool(self._unlocking_rules(addr, hit[0]))

    @property
    def allows_ipv6(self) -> bool:
        return any(r.network is not None and r.network.version == 6 for r in self.rules)

    # --- names ------------------------------------------------------------------

    def name_allowed(self, name: str) -> bool:
        """Whether a domain rule covers ``name`` (so the DNS server may resolve it)."""
        return any(r.domain is not None and r.domain.matches(name) for r in self.rules)

    # --- flows ------------------------------------------------------------------

    def decide(
        self,
        dst: str | IPAddress,
        port: int,
        protocol: Protocol,
        server_name: str | None,
        resolved: Callable[[str], Iterable[IPAddress]],
    ) -> Decision:
        """Decides one TCP flow. ``resolved(name)`` gives the addresses ``name`` resolved
        to through this gateway for this sandbox; a domain rule only allows those."""
        try:
            ip = _parse_ip(dst)
        except ValueError:
            return Decision(False, f"unparsable destination {dst!r}")
        if not 0 < port < 65536:
            return Decision(False, f"bad port {port}")

        hit = self._denied_range(ip)
        if hit is not None:
            net, why = hit
            for rule in self._unlocking_rules(ip, net):
                if rule.port_ok(port) and protocol in rule.protocols:
                    return Decision(True, f"cidr {rule.network} names it", rule.index)
            return Decision(False, f"{ip} is {why} ({net}), denied unless a CIDR rule names it")

        for rule in self.rules:
            if not rule.port_ok(port) or protocol not in rule.protocols:
                continue
            if rule.network is not None:
                if ip.version == rule.network.version and ip in rule.network:
                    return Decision(True, f"cidr {rule.network}", rule.index)
            elif (
                rule.domain is not None
                and server_name
                and rule.domain.matches(server_name)
                and ip in set(resolved(server_name))
            ):
                return Decision(True, f"domain {server_name}", rule.index)

        return Decision(False, self._why_denied(ip, port, protocol, server_name))

    def _why_denied(
        self, ip: IPAddress, port: int, protocol: Protocol, server_name: str | None
    ) -> str:
        if protocol in (Protocol.SSH, Protocol.STRATUM):
            return f"{protocol} to {ip}:{port} is not allowed by any rule"
        if server_name is None:
            return f"no rule allows {ip}:{port} ({protocol}, no SNI/Host)"
        if not self.name_allowed(server_name):
            return f"{server_name} is not an allowed domain"
        return (
            f"{server_name} did not resolve to {ip} through the gateway, "
            f"or port {port} is not allowed for it"
        )


def compile_policy(
    policy: NetworkPolicy, *, host_addresses: Iterable[str | IPAddress] = ()
) -> CompiledPolicy:
    """Compiles ``policy``; ``host_addresses`` (the host's own) join the always-denied ranges."""
    if policy.mode != "gateway":
        raise GatewayError(f"network mode {policy.mode!r} does not use the gateway")
    rules: list[CompiledRule] = []
    for index, rule in enumerate(policy.allow):
        ports = frozenset(rule.ports) if rule.ports is not None else None
        named = frozenset(rule.protocols) if rule.protocols is not None else None
        if rule.domain is not None:
            wildcard = rule.domain.startswith("*.")
            pattern = DomainPattern(rule.domain[2:] if wildcard else rule.domain, wildcard)
            rules.append(
                CompiledRule(
                    index=index,
                    # Only TLS and HTTP carry a name to check, so nothing else can match.
                    protocols=(named & _NAMED_PROTOCOLS) if named else DOMAIN_DEFAULT_PROTOCOLS,
                    ports=ports if ports is not None else DOMAIN_DEFAULT_PORTS,
                    domain=pattern,
                )
            )
        elif rule.cidr is not None:
            rules.append(
                CompiledRule(
                    index=index,
                    protocols=named if named else CIDR_DEFAULT_PROTOCOLS,
                    ports=ports,
                    network=ipaddress.ip_network(rule.cidr, strict=False),
                )
            )
        else:  # the policy model already refuses this; never allow on a shape we don't know
            raise GatewayError(f"allow rule {index} names neither a domain nor a CIDR")
    host: list[tuple[IPNetwork, str]] = []
    for addr in host_addresses:
        ip = _parse_ip(addr)
        host.append((ipaddress.ip_network(ip), "this host"))
    return CompiledPolicy(tuple(rules), tuple(host) + ALWAYS_DENIED, policy.thresholds)


__all__ = [
    "ALWAYS_DENIED",
    "CIDR_DEFAULT_PROTOCOLS",
    "DOMAIN_DEFAULT_PORTS",
    "DOMAIN_DEFAULT_PROTOCOLS",
    "CompiledPolicy",
    "CompiledRule",
    "Decision",
    "DomainPattern",
    "compile_policy",
]
