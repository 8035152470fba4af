"""The framed wire format between the host and ``corral-init serve`` (see corral_init.c)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

REQ_EXEC = ord("E")
REQ_KILL = ord("K")
RSP_READY = ord("R")
RSP_STARTED = ord("S")
RSP_OUT = ord("O")
RSP_EXIT = ord("X")

FLAG_TRUNCATED = 1
FLAG_TIMED_OUT = 2
FLAG_SPAWN_FAILED = 4

MAX_STDIN = 512 * 1024 * 1024

_HEAD = struct.Struct("<IB")
_EXEC_HEAD = struct.Struct("<IIQII")
_EXIT = struct.Struct("<IiBQQQQQ")


def _str(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def encode_exec(
    job_id: int,
    argv: Sequence[str],
    env: Sequence[str],
    cwd: str,
    *,
    timeout_ms: int,
    output_cap: int,
    stdin: bytes = b"",
) -> bytes:
    parts = [_EXEC_HEAD.pack(job_id, timeout_ms, output_cap, len(argv), len(env))]
    parts.append(_str(cwd.encode()))
    parts.extend(_str(a.encode()) for a in argv)
    parts.extend(_str(e.encode()) for e in env)
    parts.append(_str(stdin))
    body = b"".join(parts)
    return _HEAD.pack(len(body) + 1, REQ_EXEC) + body


def encode_kill(job_id: int, sig: int) -> bytes:
    return _HEAD.pack(9, REQ_KILL) + struct.pack("<II", job_id, sig)


@dataclass(frozen=True, slots=True)
class ExitFrame:
    job_id: int
    wait_status: int
    flags: int
    utime_us: int
    stime_us: int
    maxrss_kb: int
    out_total: int
    err_total: int


def decode_exit(body: bytes) -> ExitFrame:
    return ExitFrame(*_EXIT.unpack(body[: _EXIT.size]))


def decode_u32s(body: bytes, count: int) -> tuple[int, ...]:
    return struct.unpack_from(f"<{count}I", body)


HEAD_SIZE = _HEAD.size
unpack_head = _HEAD.unpack
