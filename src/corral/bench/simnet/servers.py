"""The simulated hosts' servers: HTTP(S), a package index, SSH, a stratum pool, a TCP/UDP
sink and DNS. All run on the simnet's own event loop; every byte a host receives is counted
(for TLS and SSH by a counting front on the public port, before any decryption)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
from dnslib import QTYPE, RCODE, RR, A, DNSError, DNSRecord

from corral.gateway.netns import socket_in_netns

Count = Callable[[int], None]
Route = Callable[[str, str, dict[str, str], bytes], tuple[int, str, bytes]]

_MAX_HEAD = 64 * 1024
_MAX_BODY = 256 * 1024 * 1024


@dataclass
class HostCounter:
    """Bytes a simulated host received, in total and per port."""

    total: int = 0
    by_port: dict[int, int] = field(default_factory=dict)

    def counter(self, port: int) -> Count:
        def count(n: int) -> None:
            self.total += n
            self.by_port[port] = self.by_port.get(port, 0) + n

        return count


def listening_socket(netns: str, ip: str, port: int, kind: socket.SocketKind) -> socket.socket:
    sock = socket_in_netns(netns, socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((ip, port))
    if kind == socket.SOCK_STREAM:
        sock.listen(128)
    sock.setblocking(False)
    return sock


async def _read_counted(reader: asyncio.StreamReader, count: Count | None, n: int) -> bytes:
    data = await reader.read(n)
    if count is not None:
        count(len(data))
    return data


# --- HTTP -------------------------------------------------------------------------


def static_routes(host_label: str) -> Route:
    def route(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[
        int, str, bytes
    ]:
        if path.startswith("/upload"):
            return 200, "text/plain", f"received {len(body)} bytes\n".encode()
        return 200, "text/plain", f"hello from {host_label} ({method} {path})\n".encode()

    return route


def index_routes(project: str, wheel: Path) -> Route:
    """A PEP 503 simple index serving one wheel."""
    data = wheel.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    normalized = project.lower().replace("_", "-")

    def route(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[
        int, str, bytes
    ]:
        path = path.split("?", 1)[0]
        if path in ("/simple", "/simple/"):
            page = f'<html><body><a href="{normalized}/">{normalized}</a></body></html>\n'
            return 200, "text/html", page.encode()
        if path.rstrip("/") in (f"/simple/{normalized}", f"/simple/{project}"):
            link = f"../../packages/{wheel.name}#sha256={digest}"
            page = f'<html><body><a href="{link}">{wheel.name}</a></body></html>\n'
            return 200, "text/html", page.encode()
        if path == f"/packages/{wheel.name}":
            return 200, "application/octet-stream", data
        return 404, "text/plain", b"not found\n"

    return route


def http_handler(
    route: Route, count: Count | None
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A minimal HTTP/1.1 server (one request per connection) over ``route``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            buf = b""
            while b"\r\n\r\n" not in buf and len(buf) < _MAX_HEAD:
                chunk = await asyncio.wait_for(_read_counted(reader, count, 65536), 15)
                if not chunk:
                    return
                buf += chunk
            head, _, body = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = [*lines[0].split(" "), "", ""][:3]
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = min(int(headers.get("content-length", "0") or 0), _MAX_BODY)
            while len(body) < length:
                chunk = await asyncio.wait_for(_read_counted(reader, count, 1 << 20), 15)
                if not chunk:
                    break
                body += chunk
            status, ctype, payload = route(method, path, headers, body)
            reason = {200: "OK", 404: "Not Found"}.get(status, "Status")
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + (payload if method != "HEAD" else b"")
            )
            await writer.drain()
        except (OSError, TimeoutError, ValueError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    return handle


# --- counting front for TLS and SSH ---------------------------------------------------


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                count: Count | None) -> None:
    try:
        while data := await _read_counted(reader, count, 1 << 16):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        pass


def counting_front(
    netns: str, internal_port: int, count: Count
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """Counts every byte arriving on a public port, then hands it to an internal server."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        inner = await asyncio.to_thread(socket_in_netns, netns, socket.AF_INET,
                                        socket.SOCK_STREAM)
        inner.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(inner, ("127.0.0.1", internal_port))
            in_reader, in_writer = await asyncio.open_connection(sock=inner)
        except OSError:
            inner.close()
            writer.close()
            return
        try:
            await asyncio.gather(_copy(reader, in_writer, count), _copy(in_reader, writer, None))
        finally:
            in_writer.close()
            writer.close()

    return handle


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


async def ssh_server(sock: socket.socket) -> asyncssh.SSHAcceptor:
    """A real SSH server (asyncssh) that accepts nobody: enough to speak the protocol."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    return await asyncssh.listen(
        sock=sock,
        server_host_keys=[key],
        password_auth=False,
        kbdint_auth=False,
        public_key_auth=True,
        authorized_client_keys=[],
    )


# --- stratum pool ---------------------------------------------------------------------


@dataclass
class PoolStats:
    subscribes: int = 0
    authorizes: int = 0
    logins: int = 0
    submits: int = 0


def stratum_handler(
    stats: PoolStats, count: Count
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A fake mining pool: answers subscribe/authorize/login, counts submits."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(10_000):
                line = await asyncio.wait_for(reader.readline(), 30)
                count(len(line))
                if not line:
                    break
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                method, msg_id = msg.get("method"), msg.get("id")
                result: object = True
                if method == "mining.subscribe":
                    stats.subscribes += 1
                    result = [[["mining.notify", "corral-sim"]], "08000002", 4]
                elif method == "mining.authorize":
                    stats.authorizes += 1
                elif method == "login":
                    stats.logins += 1
                    result = {"id": "1", "job": {"job_id": "1", "blob": "00" * 76,
                                                 "target": "b88d0600"}, "status": "OK"}
                elif method in ("submit", "mining.submit"):
                    stats.submits += 1
                reply = {"id": msg_id, "result": result, "error": None}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (OSError, TimeoutError, ValueError):
            pass
        finally:
            writer.close()

    return handle


# --- sink ----------------------------------------------------------------------------


def echo_handler(
    count: Count,
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _copy(reader, writer, count)
        writer.close()

    return handle


class CountingDatagram(asyncio.DatagramProtocol):
    def __init__(self, count: Count) -> None:
        self._count = count

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._count(len(data))


# --- DNS ----------------------------------------------------------------------------


class SimDnsServer(asyncio.DatagramProtocol):
    """Authoritative for the simulated zone: A records only, NXDOMAIN for the rest."""

    def __init__(self, records: dict[str, list[str]], count: Count) -> None:
        self._records = {k.lower().rstrip("."): v for k, v in records.items()}
        self._count = count
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._count(len(data))
        try:
            request = DNSRecord.parse(data)
        except DNSError:
            return
        reply = request.reply()
        name = str(request.q.qname).lower().rstrip(".")
        addresses = self._records.get(name)
        if addresses is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.A:
            for ip in addresses:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(ip), ttl=60))
        if self._transport is not None:
            self._transport.sendto(reply.pack(), addr)


__all__ = [
    "CountingDatagram",
    "HostCounter",
    "PoolStats",
    "SimDnsServer",
    "counting_front",
    "echo_handler",
    "http_handler",
    "index_routes",
    "listening_socket",
    "ssh_server",
    "static_routes",
    "stratum_handler",
    "tls_context",
]
