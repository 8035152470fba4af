"""Signal detectors and the pid mapping parsers (no network)."""

from __future__ import annotations

import secrets

from corral.gateway.pidmap import socket_inode
from corral.gateway.signals import (
    ScanDetector,
    dns_signals,
    exfil_signal,
    protocol_signal,
    shannon_entropy,
)
from corral.policy import DetectorThresholds, Protocol

TH = DetectorThresholds()


def names(found):
    return {s.signal for s in found}


def test_pool_and_tunnel_service_names() -> None:
    assert names(dns_signals("pool.minexmr.sim.test", TH)) == {"mining_pool_dns"}
    assert names(dns_signals("xmr.supportxmr.com", TH)) == {"mining_pool_dns"}
    assert names(dns_signals("abc123.ngrok-free.app", TH)) == {"tunnel_service_dns"}
    assert names(dns_signals("pypi.org", TH)) == set()
    assert names(dns_signals("files.pythonhosted.org", TH)) == set()


def test_high_entropy_subdomains() -> None:
    tunnel = f"{secrets.token_hex(30)}.{secrets.token_hex(8)}.t.example.test"
    found = dns_signals(tunnel, TH)
    assert names(found) == {"dns_tunnel"} and found[0].details["entropy"] >= TH.dns_label_entropy
    # Long but repetitive, and short random: not flagged.
    assert names(dns_signals("a" * 50 + ".example.test", TH)) == set()
    assert names(dns_signals(f"{secrets.token_hex(6)}.example.test", TH)) == set()
    assert shannon_entropy("") == 0 and round(shannon_entropy("ab"), 3) == 1.0


def test_protocol_signals() -> None:
    ssh = protocol_signal(Protocol.SSH, "203.0.113.22", 443, "SSH-2.0-x")
    mining = protocol_signal(Protocol.STRATUM, "203.0.113.33", 3333, "login")
    assert ssh.signal == "ssh_outbound" and ssh.severity == "high"
    assert mining.signal == "mining_stratum" and mining.severity == "critical"
    assert protocol_signal(Protocol.TLS, "203.0.113.1", 443, None) is None


def test_exfiltration_ratio() -> None:
    assert exfil_signal(10 * 1024**2, 1000, TH) is not None
    assert exfil_signal(10 * 1024**2, 5 * 1024**2, TH) is None
    assert exfil_signal(1000, 0, TH) is None


def test_scan_fires_once_per_window() -> None:
    scan = ScanDetector(DetectorThresholds(scan_distinct_targets=5, scan_window=10))
    fired = [scan.note("203.0.113.9", port, now=float(port)) for port in range(1, 8)]
    assert [f is not None for f in fired] == [False] * 4 + [True, False, False]
    # Same target over and over is not a scan.
    calm = ScanDetector(DetectorThresholds(scan_distinct_targets=5, scan_window=10))
    assert all(calm.note("203.0.113.9", 443, now=i / 10) is None for i in range(50))
    # Targets older than the window fall out.
    slow = ScanDetector(DetectorThresholds(scan_distinct_targets=3, scan_window=1))
    assert all(slow.note("203.0.113.9", p, now=p * 2.0) is None for p in range(10))


PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0601FEA9:D9A8 0A6433C6:01BB 01 00000000:00000000 00:00000000 00000000 2100000099 0 7777 1
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0 0 4242 1
"""
PROC_NET_TCP6 = (
    "  sl  local_address remote_address st tx rx tr retr uid timeout inode\n"
    "   0: 726F7CFD010061720000000002000000:8CA0 00000000000000000000000000000000:0000"
    " 01 0:0 0:0 0 2100000099 0 9999 1\n"
)


def test_proc_net_parsing() -> None:
    assert socket_inode(PROC_NET_TCP, "169.254.1.6", 0xD9A8) == 7777
    assert socket_inode(PROC_NET_TCP, "127.0.0.1", 8080) == 4242
    assert socket_inode(PROC_NET_TCP, "127.0.0.1", 8081) is None
    assert socket_inode("header only\n", "127.0.0.1", 1) is None
    assert socket_inode(PROC_NET_TCP6, "fd7c:6f72:7261:1::2", 0x8CA0) == 9999


def test_denial_reports_are_rate_limited() -> None:
    from corral.gateway.session import _Limiter

    now = [100.0]
    limiter = _Limiter(3, clock=lambda: now[0])
    assert [limiter.admit() for _ in range(5)] == [0, 0, 0, None, None]
    now[0] += 1.5
    assert limiter.admit() == 2  # the next report says how many were dropped
    assert limiter.admit() == 0


def test_nflog_messages_parse() -> None:
    import socket
    import struct

    from corral.gateway.nflog import bind_messages, parse_ip, parse_messages

    ip4 = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0]) + socket.inet_aton(
        "169.254.1.2") + socket.inet_aton("203.0.113.99") + bytes(8)
    assert parse_ip(ip4) == ("169.254.1.2", "203.0.113.99", "icmp")
    assert parse_ip(b"\x00" * 10) is None

    def attr(kind: int, payload: bytes) -> bytes:
        length = 4 + len(payload)
        return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)

    body = struct.pack("!BBH", 2, 0, 1) + attr(4, struct.pack("!I", 7)) + attr(9, ip4)
    message = struct.pack("=IHHII", 16 + len(body), 4 << 8, 0, 0, 0) + body
    (packet,), error = parse_messages(message + message[:10])
    assert error is None and packet.in_ifindex == 7 and packet.size == 28
    assert packet.dst == "203.0.113.99" and packet.protocol == "icmp"
    nack = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -1) + bytes(16)
    assert parse_messages(nack) == ([], 1)
    assert all(m[4:6] == struct.pack("=H", (4 << 8) | 1) for m in bind_messages(1))


PROC_NET_UDP_WILDCARD = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:A1B2 00000000:0000 07 00000000:00000000 00:00000000 00000000 1000 0 5151 2
"""
# A dual-stack socket sending to an IPv4 address: ::ffff:169.254.1.6 in /proc/net/tcp6.
PROC_NET_TCP6_MAPPED = (
    "  sl  local_address remote_address st tx rx tr retr uid timeout inode\n"
    "   0: 0000000000000000FFFF00000601FEA9:D9A9 00000000000000000000000000000000:0000"
    " 01 0:0 0:0 0 1000 0 6262 1\n"
)


def test_unconnected_and_dual_stack_sockets_are_found() -> None:
    # An unconnected UDP sender is listed bound to the unspecified address.
    assert socket_inode(PROC_NET_UDP_WILDCARD, "169.254.1.6", 0xA1B2) == 5151
    assert socket_inode(PROC_NET_UDP_WILDCARD, "169.254.1.6", 0xA1B3) is None
    assert socket_inode(PROC_NET_TCP6_MAPPED, "169.254.1.6", 0xD9A9) == 6262
