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
