"""The transparent TCP listener: every sandbox connection, whatever its destination, lands
here. It reads where the client meant to go (``SO_ORIGINAL_DST``), peeks at the first
bytes, decides, and then either refuses or opens its own connection and relays.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from corral.events import Event, EventKind, EventSink
from corral.gateway.classify import MAX_PEEK, Classification, classify
from corral.gateway.relay import relay
from corral.gateway.rules import Decision
from corral.gateway.session import Session, endpoint
from corral.gateway.signals import Signal, exfil_signal, protocol_signal
from corral.policy import Protocol

_SO_ORIGINAL_DST = 80  # same value for IPv4 (SOL_IP) and IPv6 (IP6T_SO_ORIGINAL_DST)

SessionLookup = Callable[[tuple[Any, ...]], Session | None]
#: Answers one DNS message from a sandbox (message, peer, transport) -> reply or None.
DnsHandler = Callable[[bytes, tuple[Any, ...], str], Awaitable[bytes | None]]
#: DNS over TCP: messages per connection, and how long to wait for each.
_DNS_TCP_MESSAGES = 100
_DNS_TCP_IDLE = 5.0


def original_destination(conn: socket.socket) -> tuple[str, int]:
    """Where the client connected to before nftables redirected it to us."""
    if conn.family == socket.AF_INET:
        raw = conn.getsockopt(socket.SOL_IP, _SO_ORIGINAL_DST, 16)
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), struct.unpack("!H", raw[2:4])[0]
    raw = conn.getsockopt(socket.IPPROTO_IPV6, _SO_ORIGINAL_DST, 28)
    return socket.inet_ntop(socket.AF_INET6, raw[8:24]), struct.unpack("!H", raw[2:4])[0]


async def peek(conn: socket.socket, timeout: float) -> tuple[bytes, Classification]:
    """Reads until the classifier is sure, MAX_PEEK bytes, EOF or ``timeout``."""
    loop = asyncio.get_running_loop()
    buf = bytearray()
    deadline = loop.time() + timeout
    while len(buf) < MAX_PEEK:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(conn, MAX_PEEK - len(buf)), remaining)
        except (TimeoutError, OSError):
            break
        if not chunk:
            break
        buf += chunk
        found = classify(bytes(buf))
        if found is not None:
            return bytes(buf), found
    return bytes(buf), classify(bytes(buf), final=True) or Classification(Protocol.UNKNOWN)


def is_host_address(ip: str) -> bool:
    """Whether ``ip`` is one of this (host) namespace's addresses right now.

    Binding succeeds only to a local address, so this is one cheap syscall.
    """
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((ip, 0))
        except OSError as exc:
            # Only "not a local address" means no; any other failure counts as the host
            # (deny), so an odd error can never open the host's own services.
            return exc.errno != errno.EADDRNOTAVAIL
    return True


def _reset(conn: socket.socket) -> None:
    # Linger 0 makes close() send RST: the client sees a refusal, not a clean end.
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def _header_safe(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 else " " for c in text)[:300]


async def refuse(conn: socket.socket, found: Classification, reason: str) -> None:
    """HTTP gets a 403 saying why; anything else a reset."""
    if found.protocol is not Protocol.HTTP:
        _reset(conn)
        return
    loop = asyncio.get_running_loop()
    body = f"Blocked by Corral: {reason}\n".encode("ascii", "replace")
    head = (
        "HTTP/1.1 403 Forbidden\r\n"
        f"X-Corral-Denied: {_header_safe(reason)}\r\n"
        "Content-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    try:
        await asyncio.wait_for(loop.sock_sendall(conn, head + body), 2.0)
        conn.shutdown(socket.SHUT_WR)
        # Drain what the client still sends so close() doesn't reset the response away.
        deadline = loop.time() + 0.5
        drained = 0
        while drained < 65536 and (left := deadline - loop.time()) > 0:
            chunk = await asyncio.wait_for(loop.sock_recv(conn, 65536), left)
            if not chunk:
                break
            drained += len(chunk)
    except (OSError, TimeoutError):
        pass
    conn.close()


class _Meter:
    """Counts a relayed flow's bytes and raises the exfiltration signal while it happens."""

    def __init__(self, session: Session, peer: tuple[Any, ...], pid: int | None,
                 step: int | None, dst: str, port: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._step = step
        self.up = 0
        self.down = 0
        self.pid = pid
        self._session = session
        self._peer = peer
        self._where = {"dst": dst, "port": port}
        self._fired = False

    def on_up(self, n: int) -> None:
        """Only counts, and hands a signal to the loop (safe to call from any thread)."""
        self.up += n
        if self._fired or self.up < self._session.policy.thresholds.exfil_min_bytes:
            return
        found = exfil_signal(self.up, self.down, self._session.policy.thresholds)
        if found is not None:
            self._fired = True
            found.details.update(self._where)
            # Raised now, not at the end: a long upload must not hide until it is done.
            self._loop.call_soon_threadsafe(self._start_raise, found)

    def _start_raise(self, found: Signal) -> None:
        self._session.track(self._loop.create_task(self._raise(found)))

    async def _raise(self, found: Signal) -> None:
        self.pid = await self._session.raise_signal(
            found, transport="tcp", local=self._peer, pid=self.pid, step=self._step
        )

    def on_down(self, n: int) -> None:
        self.down += n


class TransparentListener:
    """Accepts on one gateway socket and handles each connection in its session."""

    def __init__(
        self,
        sock: socket.socket,
        lookup: SessionLookup,
        fallback: EventSink,
        dns: DnsHandler,
        *,
        peek_timeout: float,
        connect_timeout: float,
    ) -> None:
        self._sock = sock
        self._dns = dns
        self._lookup = lookup
        self._fallback = fallback
        self._peek_timeout = peek_timeout
        self._connect_timeout = connect_timeout

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._sock.setblocking(False)
        while True:
            try:
                conn, peer = await loop.sock_accept(self._sock)
            except OSError:
                # EMFILE and friends: back off instead of spinning; the client retries.
                await asyncio.sleep(0.05)
                continue
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            session = self._lookup(peer)
            if session is None or session.closed or session.at_capacity:
                self._orphan(conn, peer, session)
                continue
            session.track(loop.create_task(self._handle(session, conn, peer)))

    def _orphan(self, conn: socket.socket, peer: tuple[Any, ...], session: Session | None) -> None:
        reason = "unknown source" if session is None else "sandbox flow limit or closed"
        dst: tuple[str, int] | None = None
        with contextlib.suppress(OSError):
            dst = original_destination(conn)
        _reset(conn)
        event_data = {
            "transport": "tcp",
            "src": endpoint(peer),
            "dst": dst[0] if dst else None,
            "port": dst[1] if dst else None,
            "verdict": "deny",
            "reason": reason,
            "phase": "decision",
        }
        if session is None:
            self._fallback.emit(Event(EventKind.NET_CONNECT, "unknown", data=event_data))
        else:
            session.emit(EventKind.NET_CONNECT, event_data)

    async def _handle(self, session: Session, conn: socket.socket, peer: tuple[Any, ...]) -> None:
        started = time.monotonic()
        step = session.step()  # the agent step that opened the flow labels all its events
        upstream: socket.socket | None = None
        try:
            try:
                dst, port = original_destination(conn)
            except OSError as exc:
                _reset(conn)
                session.emit(
                    EventKind.NET_CONNECT,
                    {"transport": "tcp", "verdict": "deny", "phase": "decision",
                     "reason": f"no original destination: {exc}"},
                    step=step,
                )
                return
            base: dict[str, Any] = {"transport": "tcp", "src": endpoint(peer),
                                    "dst": dst, "port": port}

            scan = session.scan.note(dst, port, time.monotonic())
            if scan is not None:
                await session.raise_signal(scan, transport="tcp", local=peer, step=step)
            if port == 53:
                # DNS over TCP is answered here like DNS over UDP, never relayed: all name
                # lookups pass the same policy and the same tunnelling detectors.
                await self._serve_dns(conn, peer)
                return

            first, found = await peek(conn, self._peek_timeout)
            base.update(found.to_data())
            pid: int | None = None
            detail = found.ssh_banner or found.stratum_method
            sig = protocol_signal(found.protocol, dst, port, detail)
            if sig is not None:
                pid = await session.raise_signal(sig, transport="tcp", local=peer, step=step)

            decision = session.policy.decide(
                dst, port, found.protocol, found.server_name, session.bindings.addresses
            )
            if decision.allowed and is_host_address(dst):
                # Addresses the host gained after the gateway started aren't in the policy's
                # list; this host's own services are never a destination.
                decision = Decision(False, f"{dst} is an address of this host")
            base.update(verdict=decision.verdict, reason=decision.reason, rule=decision.rule)
            if not decision.allowed:
                dropped = session.admit_report("tcp")
                if dropped is not None:
                    if pid is None:
                        pid = await session.pid_of("tcp", peer)
                    session.emit(
                        EventKind.NET_CONNECT,
                        {**base, "phase": "decision", "bytes_up": 0, "bytes_down": 0,
                         "duration": round(time.monotonic() - started, 6),
                         "peeked": len(first), "suppressed_before": dropped},
                        pid,
                        step=step,
                    )
                await refuse(conn, found, decision.reason)
                return

            upstream, error = await self._connect(dst, port)
            meter = _Meter(session, peer, pid, step, dst, port)
            cancelled: asyncio.CancelledError | None = None
            if upstream is not None:
                try:
                    await asyncio.get_running_loop().sock_sendall(upstream, first)
                    meter.on_up(len(first))
                    error = await relay(conn, upstream, meter.on_up, meter.on_down)
                except OSError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                except asyncio.CancelledError as exc:
                    # Detach or stop cut the flow: still record how it ended, then go on
                    # being cancelled.
                    error, cancelled = "cut: sandbox detached or gateway stopped", exc
            session.emit(
                EventKind.NET_CONNECT,
                {**base, "phase": "end", "bytes_up": meter.up, "bytes_down": meter.down,
                 "duration": round(time.monotonic() - started, 6), "error": error},
                # Looking every allowed flow's owner up would cost more than the relay
                # itself; it is known when a signal already needed it.
                meter.pid,
                step=step,
            )
            if cancelled is not None:
                raise cancelled
        finally:
            if upstream is not None:
                upstream.close()
            if conn.fileno() != -1:
                _reset(conn) if upstream is None else conn.close()

    async def _serve_dns(self, conn: socket.socket, peer: tuple[Any, ...]) -> None:
        loop = asyncio.get_running_loop()

        async def read_exactly(size: int) -> bytes | None:
            buf = b""
            while len(buf) < size:
                chunk = await asyncio.wait_for(loop.sock_recv(conn, size - len(buf)),
                                               _DNS_TCP_IDLE)
                if not chunk:
                    return None
                buf += chunk
            return buf

        try:
            for _ in range(_DNS_TCP_MESSAGES):
                head = await read_exactly(2)
                message = await read_exactly(int.from_bytes(head, "big")) if head else None
                if not message:
                    break
                reply = await self._dns(message, peer, "tcp")
                if reply is None:
                    break
                await loop.sock_sendall(conn, len(reply).to_bytes(2, "big") + reply)
        except (OSError, TimeoutError):
            pass
        conn.close()

    async def _connect(self, dst: str, port: int) -> tuple[socket.socket | None, str | None]:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in dst else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (dst, port)), self._connect_timeout)
        except (OSError, TimeoutError) as exc:
            sock.close()
            return None, f"upstream connect failed: {type(exc).__name__}: {exc}"
        return sock, None


__all__ = ["TransparentListener", "is_host_address", "original_destination", "peek", "refuse"]
