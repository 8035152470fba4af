"""The kernel's process events connector: every fork, exec, uid change and exit, as it happens.

Polling /proc misses a process that lives for 5 ms; the connector (netlink
``NETLINK_CONNECTOR``, group ``CN_IDX_PROC``) is told about each one by the
kernel itself. It needs CAP_NET_ADMIN and only reports pids and ids, so the
reader must look up command lines in /proc quickly, while the process lives.

Wire format (all native-endian), one event per datagram:

    struct nlmsghdr   { u32 len; u16 type; u16 flags; u32 seq; u32 pid; }   16 bytes
    struct cn_msg     { u32 idx; u32 val; u32 seq; u32 ack; u16 len; u16 flags; }  20 bytes
    struct proc_event { u32 what; u32 cpu; u64 timestamp_ns; union event_data; }
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from dataclasses import dataclass
from enum import IntEnum

from corral.errors import SandboxUnavailable

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2

_NLMSG_DONE = 3
_NLMSG_ERROR = 2
_NLMSG_OVERRUN = 4

_NLMSGHDR = struct.Struct("=IHHII")
_CN_MSG = struct.Struct("=IIIIHH")
_EVENT_HEAD = struct.Struct("=IIQ")
_HEAD_LEN = _NLMSGHDR.size + _CN_MSG.size
_FORK = struct.Struct("=iiii")
_EXEC = struct.Struct("=ii")
_ID = struct.Struct("=iiII")
_EXIT = struct.Struct("=iiIIii")

# Room for bursts: each queued event costs the kernel ~1 KiB of skb, so 16 MiB
# absorbs ~16k events while the reader is descheduled.
DEFAULT_RCVBUF = 16 * 1024 * 1024
_SO_RCVBUFFORCE = 33  # linux/socket.h; not exported by Python's socket module


class What(IntEnum):
    """``enum what`` from linux/cn_proc.h."""

    NONE = 0
    FORK = 0x1
    EXEC = 0x2
    UID = 0x4
    GID = 0x40
    SID = 0x80
    PTRACE = 0x100
    COMM = 0x200
    NONZERO_EXIT = 0x20000000
    COREDUMP = 0x40000000
    EXIT = 0x80000000


@dataclass(frozen=True, slots=True)
class ForkEvent:
    ts_ns: int
    parent_pid: int
    parent_tgid: int
    child_pid: int
    child_tgid: int


@dataclass(frozen=True, slots=True)
class ExecEvent:
    ts_ns: int
    pid: int
    tgid: int


@dataclass(frozen=True, slots=True)
class UidEvent:
    ts_ns: int
    pid: int
    tgid: int
    ruid: int
    euid: int


@dataclass(frozen=True, slots=True)
class ExitEvent:
    ts_ns: int
    pid: int
    tgid: int
    exit_code: int  # wait(2) status: code << 8 | terminating signal
    exit_signal: int  # signal sent to the parent (SIGCHLD), not the cause of death
    parent_pid: int
    parent_tgid: int


ProcEvent = ForkEvent | ExecEvent | UidEvent | ExitEvent


class ConnectorOverflow(Exception):
    """The kernel dropped events because the socket buffer was full (ENOBUFS)."""


def parse_datagram(buf: bytes) -> list[ProcEvent]:
    """Decode every proc event in one netlink datagram; others are skipped."""
    events: list[ProcEvent] = []
    offset = 0
    while offset + _HEAD_LEN <= len(buf):
        nl_len, nl_type, _flags, _seq, _pid = _NLMSGHDR.unpack_from(buf, offset)
        if nl_len < _NLMSGHDR.size or offset + nl_len > len(buf):
            break
        if nl_type == _NLMSG_OVERRUN:
            raise ConnectorOverflow("netlink overrun")
        if nl_type == _NLMSG_DONE:
            idx, val, _s, _a, data_len, _f = _CN_MSG.unpack_from(buf, offset + _NLMSGHDR.size)
            start = offset + _HEAD_LEN
            if idx == CN_IDX_PROC and val == CN_VAL_PROC and data_len >= _EVENT_HEAD.size:
                event = _parse_event(buf, start)
                if event is not None:
                    events.append(event)
        offset += (nl_len + 3) & ~3
    return events


def _parse_event(buf: bytes, start: int) -> ProcEvent | None:
    what, _cpu, ts = _EVENT_HEAD.unpack_from(buf, start)
    body = start + _EVENT_HEAD.size
    if what == What.FORK:
        return ForkEvent(ts, *_FORK.unpack_from(buf, body))
    if what == What.EXEC:
        return ExecEvent(ts, *_EXEC.unpack_from(buf, body))
    if what == What.UID:
        return UidEvent(ts, *_ID.unpack_from(buf, body))
    if what == What.EXIT:
        return ExitEvent(ts, *_EXIT.unpack_from(buf, body))
    return None


class ProcConnector:
    """A subscribed connector socket. ``read_batch`` blocks until events arrive or ``timeout``."""

    def __init__(self, rcvbuf: int = DEFAULT_RCVBUF) -> None:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        except OSError as exc:
            raise SandboxUnavailable(f"process events connector unavailable: {exc}") from exc
        self._sock = sock
        try:
            # FORCE ignores rmem_max; we are root. Plain SO_RCVBUF is the fallback.
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind((0, CN_IDX_PROC))
            self._control(PROC_CN_MCAST_LISTEN)
        except OSError as exc:
            sock.close()
            raise SandboxUnavailable(
                f"cannot subscribe to process events (needs CAP_NET_ADMIN): {exc}"
            ) from exc
        sock.setblocking(False)

    def fileno(self) -> int:
        return self._sock.fileno()

    def _control(self, op: int) -> None:
        payload = struct.pack("=I", op)
        cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
        msg = _NLMSGHDR.pack(_NLMSGHDR.size + len(cn), _NLMSG_DONE, 0, 0, os.getpid()) + cn
        self._sock.send(msg)

    def read(self) -> list[ProcEvent] | None:
        """The events of one queued datagram; None when nothing is queued.

        Raises ConnectorOverflow when the kernel dropped events (ENOBUFS): an
        unknown number were lost, and the caller must resynchronise from /proc.
        """
        try:
            data = self._sock.recv(65536)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            raise ConnectorOverflow("process events lost: socket buffer full") from exc
        return parse_datagram(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._control(PROC_CN_MCAST_IGNORE)
        self._sock.close()
