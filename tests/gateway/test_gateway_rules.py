"""The rule compiler and the decision order (no network)."""

from __future__ import annotations

import ipaddress

import pytest

from corral.errors import GatewayError, PolicyError
from corral.gateway.rules import compile_policy
from corral.policy import NetworkPolicy, Protocol, load_policy

T, H, S, M, U = Protocol.TLS, Protocol.HTTP, Protocol.SSH, Protocol.STRATUM, Protocol.UNKNOWN


def policy(*rules: dict[str, object]) -> NetworkPolicy:
    return NetworkPolicy.model_validate({"mode": "gateway", "allow": list(rules)})


def resolved(table: dict[str, list[str]]):
    def lookup(name: str) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return {ipaddress.ip_address(a) for a in table.get(name, [])}

    return lookup


NOTHING = resolved({})
EXAMPLE = resolved({"example.test": ["203.0.113.5"], "api.example.test": ["203.0.113.6"]})


@pytest.mark.parametrize(
    "rule",
    [
        {"domain": "*.com"},
        {"domain": "*"},
        {"domain": "bad_label.test"},
        {"cidr": "300.1.2.3/8"},
        {"domain": "a.test", "cidr": "203.0.113.0/24"},
        {},
        {"domain": "a.test", "ports": []},
        {"domain": "a.test", "ports": [70000]},
        {"domain": "a.test", "protocols": ["gopher"]},
        {"domain": "a.test", "colour": "red"},
    ],
)
def test_malformed_allow_rules_are_policy_errors(rule: dict[str, object]) -> None:
    with pytest.raises(PolicyError):
        load_policy("networked", {"network.allow": [rule]})


def test_mode_none_does_not_compile() -> None:
    with pytest.raises(GatewayError):
        compile_policy(NetworkPolicy(mode="none"))


def test_defaults() -> None:
    compiled = compile_policy(policy({"domain": "example.test"}, {"cidr": "203.0.113.0/24"}))
    domain, cidr = compiled.rules
    assert domain.ports == frozenset({80, 443}) and domain.protocols == frozenset({T, H})
    assert cidr.ports is None and cidr.protocols == frozenset({T, H, U})


def test_empty_policy_denies_everything() -> None:
    compiled = compile_policy(policy())
    assert not compiled.decide("203.0.113.5", 443, T, "example.test", EXAMPLE).allowed


def test_domain_rule_needs_name_and_resolved_address() -> None:
    compiled = compile_policy(policy({"domain": "example.test"}))
    assert compiled.decide("203.0.113.5", 443, T, "example.test", EXAMPLE).allowed
    assert compiled.decide("203.0.113.5", 80, H, "example.test", EXAMPLE).allowed
    # Another SNI, no SNI, an address the name never resolved to, another port.
    assert not compiled.decide("203.0.113.5", 443, T, "evil.test", EXAMPLE).allowed
    assert not compiled.decide("203.0.113.5", 443, T, None, EXAMPLE).allowed
    assert not compiled.decide("203.0.113.9", 443, T, "example.test", EXAMPLE).allowed
    assert not compiled.decide("203.0.113.5", 8443, T, "example.test", EXAMPLE).allowed
    # Resolving through the gateway is required: without it nothing matches.
    assert not compiled.decide("203.0.113.5", 443, T, "example.test", NOTHING).allowed
    # An unknown protocol has no name to check.
    assert not compiled.decide("203.0.113.5", 443, U, "example.test", EXAMPLE).allowed


def test_wildcard_matches_below_not_apex() -> None:
    compiled = compile_policy(policy({"domain": "*.example.test"}))
    assert compiled.name_allowed("api.example.test")
    assert not compiled.name_allowed("example.test")
    assert not compiled.name_allowed("badexample.test")
    assert compiled.decide("203.0.113.6", 443, T, "api.example.test", EXAMPLE).allowed
    assert not compiled.decide("203.0.113.5", 443, T, "example.test", EXAMPLE).allowed


def test_ssh_and_stratum_must_be_named() -> None:
    open_cidr = compile_policy(policy({"cidr": "203.0.113.0/24"}))
    assert open_cidr.decide("203.0.113.5", 9999, U, None, NOTHING).allowed
    for proto in (S, M):
        assert not open_cidr.decide("203.0.113.5", 22, proto, None, NOTHING).allowed
    named = compile_policy(policy({"cidr": "203.0.113.5/32", "ports": [22], "protocols": ["ssh"]}))
    assert named.decide("203.0.113.5", 22, S, None, NOTHING).allowed
    assert not named.decide("203.0.113.5", 22, U, None, NOTHING).allowed
    # A domain rule naming ssh still can't match: ssh carries no name to check.
    domain_ssh = compile_policy(policy({"domain": "example.test", "protocols": ["ssh"]}))
    assert not domain_ssh.decide("203.0.113.5", 443, S, "example.test", EXAMPLE).allowed


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "169.254.169.254",
     "169.254.1.1", "224.0.0.1", "0.0.0.0", "255.255.255.255", "::1", "fd00::1", "fe80::1",
     "ff02::1", "2001:db8::1", "::ffff:127.0.0.1"],
)
def test_always_denied_even_with_catch_all(address: str) -> None:
    compiled = compile_policy(policy({"cidr": "0.0.0.0/0"}, {"cidr": "::/0"}))
    allowed = compiled.decide(address, 80, H, None, NOTHING).allowed
    if address == "2001:db8::1":
        # A v6 rule names global IPv6; only the special v6 ranges stay closed.
        assert allowed
    else:
        assert not allowed, address
        assert not compiled.address_reachable(address)


def test_cidr_inside_a_denied_range_unlocks_it() -> None:
    compiled = compile_policy(policy({"cidr": "10.1.0.0/16", "ports": [5432]},
                                     {"cidr": "169.254.169.254/32"}))
    assert compiled.decide("10.1.2.3", 5432, U, None, NOTHING).allowed
    assert not compiled.decide("10.1.2.3", 5433, U, None, NOTHING).allowed
    assert not compiled.decide("10.2.0.1", 5432, U, None, NOTHING).allowed
    assert compiled.decide("169.254.169.254", 80, H, None, NOTHING).allowed


def test_ipv6_denied_unless_a_v6_rule_names_it() -> None:
    v4_only = compile_policy(policy({"domain": "example.test"}))
    assert not v4_only.allows_ipv6
    assert not v4_only.decide("2001:db8::5", 443, T, "example.test",
                              resolved({"example.test": ["2001:db8::5"]})).allowed
    v6 = compile_policy(policy({"cidr": "2001:db8::/32"}))
    assert v6.allows_ipv6 and v6.decide("2001:db8::5", 443, T, None, NOTHING).allowed


def test_host_addresses_are_denied() -> None:
    compiled = compile_policy(policy({"cidr": "0.0.0.0/0"}), host_addresses=["203.0.113.1"])
    decision = compiled.decide("203.0.113.1", 22, U, None, NOTHING)
    assert not decision.allowed and "this host" in decision.reason
    assert compiled.decide("203.0.113.2", 22, U, None, NOTHING).allowed


def test_bad_input_is_denied() -> None:
    compiled = compile_policy(policy({"cidr": "0.0.0.0/0"}))
    assert not compiled.decide("not-an-ip", 80, H, None, NOTHING).allowed
    assert not compiled.decide("203.0.113.1", 0, H, None, NOTHING).allowed
    assert not compiled.decide("203.0.113.1", 70000, H, None, NOTHING).allowed
