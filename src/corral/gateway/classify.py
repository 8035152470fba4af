"""Names the protocol of a TCP connection from the first bytes the client sends.

Pure functions over bytes: no sockets, so every branch is unit-tested. The
classifier returns ``None`` while it needs more bytes; the listener stops
feeding it at a byte or time limit and then asks for a final answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from corral.policy import Protocol

#: Most a client must send before we decide; a ClientHello or request head fits easily.
MAX_PEEK = 16 * 1024

_HTTP_METHODS = (
    b"GET",
    b"POST",
    b"PUT",
    b"HEAD",
    b"DELETE",
    b"OPTIONS",
    b"PATCH",
    b"CONNECT",
    b"TRACE",
)
#: JSON-RPC methods that only mining clients send (stratum v1, xmrig's "login" dialect).
STRATUM_METHODS = frozenset(
    {
        "mining.subscribe",
        "mining.authorize",
        "mining.submit",
        "mining.extranonce.subscribe",
        "mining.configure",
        "login",
        "submit",
        "getjob",
        "keepalived",
        "eth_submitLogin",
        "eth_submitWork",
        "eth_getWork",
    }
)


@dataclass(frozen=True, slots=True)
class Classification:
    """What a connection's first bytes say. ``server_name`` is the SNI or HTTP Host."""

    protocol: Protocol
    server_name: str | None = None
    http_method: str | None = None
    http_path: str | None = None
    ssh_banner: str | None = None
    stratum_method: str | None = None
    detail: str | None = None

    def to_data(self) -> dict[str, str]:
        out: dict[str, str] = {"protocol": str(self.protocol)}
        for key in (
            "server_name",
            "http_method",
            "http_path",
            "ssh_banner",
            "stratum_method",
            "detail",
        ):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


UNKNOWN = Classification(Protocol.UNKNOWN)


def classify(data: bytes, *, final: bool = False) -> Classification | None:
    """Classifies ``data``; ``None`` means "send more" (never returned when ``final``)."""
    if not data:
        return UNKNOWN if final else None
    for attempt in (_tls, _ssh, _http, _stratum):
        result = attempt(data, final)
        if result is not _NOT_THIS:
            if result is None and final:
                return Classification(Protocol.UNKNOWN, detail="truncated")
            return result  # type: ignore[return-value]
    return UNKNOWN


class _NotThis:
    pass


_NOT_THIS = _NotThis()
_Result = Classification | None | _NotThis


# --- TLS ----------------------------------------------------------------------


def _tls(data: bytes, final: bool) -> _Result:
    # Record: type 22 (handshake), version 3.x; then a ClientHello (handshake type 1).
    if data[0] != 0x16:
        return _NOT_THIS
    if len(data) < 6:
        return None if data[1:2] in (b"", b"\x03") else _NOT_THIS
    if data[1] != 0x03 or data[5] != 0x01:
        return _NOT_THIS
    hello = _handshake_bytes(data)
    if hello is None:
        return None
    try:
        sni = parse_client_hello_sni(hello)
    except ValueError as exc:
        return Classification(Protocol.TLS, detail=f"malformed ClientHello: {exc}")
    return Classification(Protocol.TLS, server_name=sni)


def _handshake_bytes(data: bytes) -> bytes | None:
    """Reassembles the first handshake message from consecutive records, or None if short."""
    body = bytearray()
    pos = 0
    while pos + 5 <= len(data) and data[pos] == 0x16:
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        body += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(body) >= 4:
            need = 4 + int.from_bytes(body[1:4], "big")
            if len(body) >= need:
                return bytes(body[:need])
    return None


def parse_client_hello_sni(hello: bytes) -> str | None:
    """The server_name of a ClientHello handshake message (type byte included), or None."""
    if len(hello) < 4 or hello[0] != 0x01:
        raise ValueError("not a ClientHello")
    end = 4 + int.from_bytes(hello[1:4], "big")
    buf = memoryview(hello)[:end]
    pos = 4 + 2 + 32  # version, random
    pos = _skip_vector(buf, pos, 1)  # session id
    pos = _skip_vector(buf, pos, 2)  # cipher suites
    pos = _skip_vector(buf, pos, 1)  # compression methods
    if pos == len(buf):
        return None  # no extensions at all
    ext_end = pos + 2 + _uint(buf, pos, 2)
    if ext_end > len(buf):
        raise ValueError("extensions overrun")
    pos += 2
    while pos + 4 <= ext_end:
        ext_type = _uint(buf, pos, 2)
        ext_len = _uint(buf, pos + 2, 2)
        pos += 4
        if pos + ext_len > ext_end:
            raise ValueError("extension overruns")
        if ext_type == 0:
            return _server_name(buf[pos : pos + ext_len])
        pos += ext_len
    return None


def _server_name(ext: memoryview) -> str | None:
    list_len = _uint(ext, 0, 2)
    pos, end = 2, min(2 + list_len, len(ext))
    while pos + 3 <= end:
        name_type = ext[pos]
        name_len = _uint(ext, pos + 1, 2)
        name = bytes(ext[pos + 3 : pos + 3 + name_len])
        if len(name) != name_len:
            raise ValueError("server name overruns")
        if name_type == 0:
            try:
                return name.decode("ascii").lower().rstrip(".")
            except UnicodeDecodeError:
                raise ValueError("server name is not ASCII") from None
        pos += 3 + name_len
    return None


def _uint(buf: memoryview, pos: int, size: int) -> int:
    if pos + size > len(buf):
        raise ValueError("truncated")
    return int.from_bytes(buf[pos : pos + size], "big")


def _skip_vector(buf: memoryview, pos: int, size: int) -> int:
    end = pos + size + _uint(buf, pos, size)
    if end > len(buf):
        raise ValueError("vector overruns")
    return end


# --- SSH ----------------------------------------------------------------------


def _ssh(data: bytes, final: bool) -> _Result:
    # Both sides send "SSH-2.0-..." first (RFC 4253 4.2), so the client's banner is enough.
    if not b"SSH-".startswith(data[:4]):
        return _NOT_THIS
    if len(data) < 4:
        return None
    line = data.split(b"\n", 1)[0][:255]
    if b"\n" not in data and len(data) < 255 and not final:
        return None
    return Classification(Protocol.SSH, ssh_banner=line.rstrip(b"\r").decode("ascii", "replace"))


# --- HTTP ---------------------------------------------------------------------


def _http(data: bytes, final: bool) -> _Result:
    space = data.find(b" ", 0, 9)
    if space == -1:
        if len(data) < 8 and any(m.startswith(data) for m in _HTTP_METHODS):
            return None
        return _NOT_THIS
    if data[:space] not in _HTTP_METHODS:
        return _NOT_THIS
    end = data.find(b"\r\n\r\n")
    if end == -1:
        if len(data) < MAX_PEEK and not final:
            return None
        end = len(data)
    lines = data[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return Classification(Protocol.UNKNOWN, detail="malformed HTTP request line")
    method, target, _ = parts
    hosts = [
        value.strip()
        for name, sep, value in (line.partition(":") for line in lines[1:])
        if sep and name.strip().lower() == "host"
    ]
    if method == "CONNECT":
        # A tunnel to the request target: its bytes would never be seen again. No name is
        # vouched for, so no domain rule can match it.
        return Classification(Protocol.HTTP, http_method=method, http_path=target[:512],
                              detail="CONNECT tunnel")
    absolute_host = _absolute_form_host(target)
    absolute_host = absolute_host.rstrip(".") if absolute_host else None
    if len(hosts) > 1:
        return Classification(Protocol.HTTP, http_method=method, http_path=target[:512],
                              detail="several Host headers")
    host = _strip_port(hosts[0]).lower().rstrip(".") if hosts else absolute_host
    if hosts and absolute_host is not None and absolute_host != host:
        # A request line naming one host and a Host header naming another is a smuggling try.
        return Classification(Protocol.HTTP, http_method=method, http_path=target[:512],
                              detail="request target and Host disagree")
    return Classification(
        Protocol.HTTP,
        server_name=host.lower().rstrip(".") if host else None,
        http_method=method,
        http_path=target[:512],
    )


def _absolute_form_host(target: str) -> str | None:
    for scheme in ("http://", "https://"):
        if target.lower().startswith(scheme):
            authority = target[len(scheme) :].split("/", 1)[0]
            return _strip_port(authority.rsplit("@", 1)[-1]).lower()
    return None


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


# --- stratum --------------------------------------------------------------------


_METHOD_FIELD = re.compile(rb'"method"\s*:\s*"([A-Za-z0-9_.]{1,64})"')


def _stratum(data: bytes, final: bool) -> _Result:
    # Stratum is newline-delimited JSON-RPC; the first message names the method. Leading
    # whitespace and batches ([{...}]) are valid JSON-RPC too, so they can't hide it.
    body = data.lstrip()
    if not body:
        return None if not final and len(data) < 64 else _NOT_THIS
    if body[:1] not in (b"{", b"["):
        return _NOT_THIS
    newline = body.find(b"\n")
    if newline == -1 and len(data) < MAX_PEEK and not final:
        return None
    line = body[: newline if newline != -1 else len(body)]
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):  # deeply nested junk must not escape the peek
        message = None
    messages = message if isinstance(message, list) else [message]
    methods = [m.get("method") for m in messages if isinstance(m, dict)]
    if message is None:
        # Not valid JSON, but a server might still accept it: look for the method field.
        methods = [found.decode() for found in _METHOD_FIELD.findall(line)]
    for method in methods:
        if isinstance(method, str) and (method in STRATUM_METHODS or method.startswith("mining.")):
            return Classification(Protocol.STRATUM, stratum_method=method[:64])
    return Classification(Protocol.UNKNOWN, detail="json-rpc" if methods else "json-like")


__all__ = ["MAX_PEEK", "STRATUM_METHODS", "UNKNOWN", "Classification", "classify",
           "parse_client_hello_sni"]
