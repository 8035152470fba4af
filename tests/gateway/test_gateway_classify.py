"""The classifier, fed real and hand-made first bytes (no network)."""

from __future__ import annotations

import json
import ssl

import pytest

from corral.gateway.classify import classify, parse_client_hello_sni
from corral.policy import Protocol


def client_hello(server_name: str | None) -> bytes:
    """The real first flight of Python's TLS client, for ``server_name`` (None: no SNI)."""
    ctx = ssl.create_default_context()
    if server_name is None:
        ctx.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_tls_client_hello_gives_sni() -> None:
    hello = client_hello("Pypi.Sim.Test")
    found = classify(hello)
    assert found is not None and found.protocol is Protocol.TLS
    assert found.server_name == "pypi.sim.test"


def test_tls_without_sni() -> None:
    found = classify(client_hello(None))
    assert found is not None and found.protocol is Protocol.TLS and found.server_name is None


def test_tls_partial_waits_then_is_unknown() -> None:
    hello = client_hello("example.sim.test")
    for cut in (1, 3, 6, 40, len(hello) - 1):
        assert classify(hello[:cut]) is None, cut
    final = classify(hello[:40], final=True)
    assert final is not None and final.protocol is Protocol.UNKNOWN


def test_tls_hello_split_across_records() -> None:
    hello = client_hello("split.sim.test")
    body = hello[5:]
    half = len(body) // 2
    records = b"".join(
        b"\x16\x03\x01" + len(part).to_bytes(2, "big") + part for part in (body[:half], body[half:])
    )
    found = classify(records)
    assert found is not None and found.server_name == "split.sim.test"


def test_malformed_client_hello_is_tls_without_name() -> None:
    bogus = b"\x16\x03\x01\x00\x08" + b"\x01\x00\x00\x04" + b"\xff\xff\xff\xff"
    found = classify(bogus)
    assert found is not None and found.protocol is Protocol.TLS and found.server_name is None
    with pytest.raises(ValueError):
        parse_client_hello_sni(b"\x02\x00\x00\x00")


def test_http_request_head() -> None:
    found = classify(b"POST /upload?x=1 HTTP/1.1\r\nHost: Example.Sim.Test:8080\r\nA: b\r\n\r\n")
    assert found is not None and found.protocol is Protocol.HTTP
    assert (found.server_name, found.http_method, found.http_path) == (
        "example.sim.test", "POST", "/upload?x=1")


def test_http_waits_for_the_whole_head() -> None:
    assert classify(b"GE") is None
    assert classify(b"GET / HTTP/1.1\r\nHost: a.test\r\n") is None
    final = classify(b"GET / HTTP/1.1\r\nHost: a.test\r\n", final=True)
    assert final is not None and final.server_name == "a.test"


def test_http_smuggling_shapes_lose_the_name() -> None:
    two_hosts = classify(b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n")
    mismatch = classify(b"GET http://a.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n")
    absolute = classify(b"GET http://a.test:81/x HTTP/1.1\r\n\r\n")
    assert two_hosts is not None and two_hosts.server_name is None
    assert mismatch is not None and mismatch.server_name is None
    assert absolute is not None and absolute.server_name == "a.test"


def test_ssh_banner() -> None:
    assert classify(b"SS") is None
    found = classify(b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n")
    assert found is not None and found.protocol is Protocol.SSH
    assert found.ssh_banner == "SSH-2.0-OpenSSH_9.2p1 Debian"


@pytest.mark.parametrize(
    "method", ["mining.subscribe", "mining.authorize", "login", "submit", "mining.submit"]
)
def test_stratum(method: str) -> None:
    line = json.dumps({"id": 1, "method": method, "params": []}).encode() + b"\n"
    assert classify(line[:10]) is None
    found = classify(line)
    assert found is not None and found.protocol is Protocol.STRATUM
    assert found.stratum_method == method


def test_other_json_rpc_is_unknown() -> None:
    found = classify(b'{"jsonrpc": "2.0", "method": "eth_call", "id": 1}\n')
    assert found is not None and found.protocol is Protocol.UNKNOWN


@pytest.mark.parametrize("data", [b"\x00\x01binary", b"ping\n", b"hello world"])
def test_unknown(data: bytes) -> None:
    found = classify(data)
    assert found is not None and found.protocol is Protocol.UNKNOWN


def test_silence_is_unknown() -> None:
    assert classify(b"") is None
    found = classify(b"", final=True)
    assert found is not None and found.protocol is Protocol.UNKNOWN


@pytest.mark.parametrize(
    "data",
    [
        b'  \n{"id": 1, "method": "mining.subscribe", "params": []}\n',
        b'[{"id": 1, "method": "login", "params": {}}]\n',
        b'{"id": 1, "method": "mining.authorize", "params": ["w", "x"]} trailing\n',
    ],
)
def test_stratum_cannot_hide_behind_json_variants(data: bytes) -> None:
    found = classify(data)
    assert found is not None and found.protocol is Protocol.STRATUM
