"""Reads packets nftables logs to an NFLOG group: every sandbox packet that is neither TCP
nor UDP (ICMP, SCTP, raw IP...) and heads for another host is dropped there and reported
here, so the drop is an Event like every other refusal.

The netlink protocol is small enough to speak directly: bind the group, ask for the
first bytes of each packet, parse the IP header.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from corral.gateway.sockreader import SocketReader

NETLINK_NETFILTER = 12
_NFNL_SUBSYS_ULOG = 4
_NFULNL_MSG_PACKET = 0
_NFULNL_MSG_CONFIG = 1
_NFULA_CFG_CMD = 1
_NFULA_CFG_MODE = 2
_NFULA_CFG_TIMEOUT = 4
_NFULA_CFG_QTHRESH = 5
_NFULNL_CFG_CMD_BIND = 1
_NFULNL_COPY_PACKET = 2
_NFULA_IFINDEX_INDEV = 4
_NFULA_PAYLOAD = 9
_NLM_F_REQUEST = 1
_NLM_F_ACK = 4
_NLMSG_ERROR = 2
#: Bytes of each packet copied to us: enough for an IPv6 header and a little more.
_COPY_RANGE = 64

_PROTOCOL_NAMES = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp",
                   58: "ipv6-icmp", 132: "sctp"}


@dataclass(frozen=True, slots=True)
class LoggedPacket:
    src: str
    dst: str
    protocol: str
    size: int
    in_ifindex: int | None


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _config_message(group: int, seq: int, attrs: bytes) -> bytes:
    kind = (_NFNL_SUBSYS_ULOG << 8) | _NFULNL_MSG_CONFIG
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, group) + attrs
    return struct.pack("=IHHII", 16 + len(body), kind, _NLM_F_REQUEST | _NLM_F_ACK, seq, 0) + body


def bind_messages(group: int) -> list[bytes]:
    """Netlink requests that bind ``group`` and ask for packet copies."""
    return [
        _config_message(group, 1, _attr(_NFULA_CFG_CMD, struct.pack("B", _NFULNL_CFG_CMD_BIND))),
        _config_message(
            group, 2, _attr(_NFULA_CFG_MODE, struct.pack("!IBB", _COPY_RANGE,
                                                           _NFULNL_COPY_PACKET, 0))
        ),
        # Deliver each packet at once instead of batching up to a second (the default).
        _config_message(group, 3, _attr(_NFULA_CFG_QTHRESH, struct.pack("!I", 1))),
        _config_message(group, 4, _attr(_NFULA_CFG_TIMEOUT, struct.pack("!I", 1))),
    ]


def parse_ip(payload: bytes) -> tuple[str, str, str] | None:
    """(src, dst, protocol) of an IPv4 or IPv6 packet's first bytes."""
    if len(payload) >= 20 and payload[0] >> 4 == 4:
        proto = payload[9]
        src, dst = payload[12:16], payload[16:20]
        family = socket.AF_INET
    elif len(payload) >= 40 and payload[0] >> 4 == 6:
        proto = payload[6]
        src, dst = payload[8:24], payload[24:40]
        family = socket.AF_INET6
    else:
        return None
    return (
        socket.inet_ntop(family, src),
        socket.inet_ntop(family, dst),
        _PROTOCOL_NAMES.get(proto, str(proto)),
    )


def parse_messages(data: bytes) -> tuple[list[LoggedPacket], int | None]:
    """Packets in one netlink datagram, and the first error code an ACK carried (if any)."""
    packets: list[LoggedPacket] = []
    error: int | None = None
    pos = 0
    while pos + 16 <= len(data):
        length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, pos)
        if length < 16 or pos + length > len(data):
            break
        body = data[pos + 16 : pos + length]
        pos += (length + 3) & ~3
        if kind == _NLMSG_ERROR and len(body) >= 4:
            code = struct.unpack_from("=i", body)[0]
            if code != 0 and error is None:
                error = -code
            continue
        if kind != (_NFNL_SUBSYS_ULOG << 8) | _NFULNL_MSG_PACKET:
            continue
        attrs, indev, payload = body[4:], None, b""
        apos = 0
        while apos + 4 <= len(attrs):
            alen, akind = struct.unpack_from("=HH", attrs, apos)
            if alen < 4:
                break
            value = attrs[apos + 4 : apos + alen]
            akind &= 0x7FFF
            if akind == _NFULA_IFINDEX_INDEV and len(value) >= 4:
                indev = struct.unpack("!I", value[:4])[0]
            elif akind == _NFULA_PAYLOAD:
                payload = value
            apos += (alen + 3) & ~3
        parsed = parse_ip(payload)
        if parsed is not None:
            size = len(payload)
            if payload[0] >> 4 == 4 and len(payload) >= 4:
                size = struct.unpack_from("!H", payload, 2)[0]
            elif len(payload) >= 6:
                size = 40 + struct.unpack_from("!H", payload, 4)[0]
            packets.append(LoggedPacket(*parsed, size, indev))
    return packets, error


def open_nflog(group: int) -> socket.socket:
    """Blocking, call inside the gateway namespace: a socket bound to ``group``."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        sock.bind((0, 0))
        sock.settimeout(2)
        for message in bind_messages(group):
            sock.send(message)
            _, error = parse_messages(sock.recv(65536))
            if error:
                raise OSError(error, f"NFLOG group {group}: {errno.errorcode.get(error)}")
    except OSError:
        sock.close()
        raise
    return sock


class NflogReader(SocketReader):
    """Hands every packet logged to the group to ``on_packet`` (on the event loop)."""

    def __init__(self, sock: socket.socket, on_packet: Callable[[LoggedPacket], None]) -> None:
        super().__init__(sock)
        self._on_packet = on_packet

    def _drain(self) -> None:
        for _ in range(64):  # bounded per wakeup
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ENOBUFS after a burst: some were lost, carry on
                continue
            for packet in parse_messages(data)[0]:
                self._on_packet(packet)


__all__ = ["LoggedPacket", "NflogReader", "bind_messages", "open_nflog", "parse_ip",
           "parse_messages"]
