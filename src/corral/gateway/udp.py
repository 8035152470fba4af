"""The UDP sink: every non-DNS datagram from a sandbox arrives here (via tproxy, which keeps
its original destination) and is dropped, with an Event saying where it was going."""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Any

from corral.gateway.sockreader import SocketReader

IP_TRANSPARENT = 19
IP_RECVORIGDSTADDR = 20
IPV6_TRANSPARENT = 75
IPV6_RECVORIGDSTADDR = 74

OnDatagram = Callable[[tuple[Any, ...], tuple[str, int], int], None]


_SO_RCVBUFFORCE = 33


def prepare_sink_socket(sock: socket.socket) -> None:
    """Makes ``sock`` able to receive tproxied datagrams and report their destination."""
    # A deep queue, so a burst is reported (in rate-limited form) rather than lost.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 8 << 20)
    if sock.family == socket.AF_INET:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        sock.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR, 1)


def _original_destination(ancdata: list[tuple[int, int, bytes]]) -> tuple[str, int] | None:
    for level, kind, data in ancdata:
        if level == socket.SOL_IP and kind == IP_RECVORIGDSTADDR and len(data) >= 8:
            return socket.inet_ntop(socket.AF_INET, data[4:8]), struct.unpack("!H", data[2:4])[0]
        if level == socket.IPPROTO_IPV6 and kind == IPV6_RECVORIGDSTADDR and len(data) >= 24:
            return (
                socket.inet_ntop(socket.AF_INET6, data[8:24]),
                struct.unpack("!H", data[2:4])[0],
            )
    return None


class UdpSink(SocketReader):
    """Reads and discards datagrams, reporting (source, original destination, size)."""

    def __init__(self, sock: socket.socket, on_datagram: OnDatagram) -> None:
        super().__init__(sock)
        self._on_datagram = on_datagram

    def _drain(self) -> None:
        for _ in range(64):  # bounded per wakeup so a flood can't starve the loop
            try:
                data, anc, _flags, src = self._sock.recvmsg(65535, socket.CMSG_SPACE(28))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            dst = _original_destination(anc)
            if dst is not None:
                self._on_datagram(src, dst, len(data))


__all__ = ["UdpSink", "prepare_sink_socket"]
