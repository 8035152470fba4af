"""Reading one process from /proc, tolerating that it may vanish at any moment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = "/proc"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The few /proc/PID/stat fields the monitor uses."""

    comm: str
    state: str
    ppid: int
    cpu_ticks: int  # utime + stime
    start_ticks: int  # since boot; with the pid, identifies the process across pid reuse
    rss_bytes: int


@dataclass(frozen=True, slots=True)
class ProcSnapshot:
    """What /proc told us about a process at one instant. ``argv`` None: unreadable or zombie."""

    pid: int
    argv: list[str] | None
    exe: str | None
    stat: ProcStat | None
    ruid: int | None
    euid: int | None


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return None


def parse_stat(raw: str) -> ProcStat | None:
    # comm is in parentheses and may itself contain spaces or ')'.
    open_at = raw.find("(")
    close_at = raw.rfind(")")
    if open_at < 0 or close_at < open_at:
        return None
    fields = raw[close_at + 2 :].split()
    if len(fields) < 22:
        return None
    return ProcStat(
        comm=raw[open_at + 1 : close_at],
        state=fields[0],
        ppid=int(fields[1]),
        cpu_ticks=int(fields[11]) + int(fields[12]),
        start_ticks=int(fields[19]),
        rss_bytes=int(fields[21]) * PAGE_SIZE,
    )


def read_stat(pid: int) -> ProcStat | None:
    raw = _read_bytes(f"{PROC}/{pid}/stat")
    return None if raw is None else parse_stat(raw.decode("utf-8", "replace"))


def is_running(pid: int, start_ticks: int | None = None) -> bool:
    """True if ``pid`` exists, is not a zombie, and (if given) started at ``start_ticks``."""
    stat = read_stat(pid)
    if stat is None or stat.state in ("Z", "X"):
        return False
    return start_ticks is None or stat.start_ticks == start_ticks


def read_uids(pid: int) -> tuple[int, int] | None:
    """(real uid, effective uid) of a process, or None if it is gone."""
    raw = _read_bytes(f"{PROC}/{pid}/status")
    if raw is None:
        return None
    for line in raw.split(b"\n"):
        if line.startswith(b"Uid:"):
            parts = line.split()
            return int(parts[1]), int(parts[2])
    return None


def read_argv(pid: int) -> list[str] | None:
    raw = _read_bytes(f"{PROC}/{pid}/cmdline")
    if not raw:
        return None  # gone, or a zombie whose memory is already released
    return [a.decode("utf-8", "surrogateescape") for a in raw.rstrip(b"\0").split(b"\0")]


def read_exe(pid: int) -> str | None:
    try:
        return str(Path(f"{PROC}/{pid}/exe").readlink())
    except OSError:
        return None


def read_netns(pid: int) -> str | None:
    """Identity of the network namespace a process is in, e.g. ``net:[4026531840]``."""
    try:
        return str(Path(f"{PROC}/{pid}/ns/net").readlink())
    except OSError:
        return None


def snapshot(pid: int, *, uids: bool = True) -> ProcSnapshot:
    """Everything at once, cmdline first because it is the first thing lost at exit.

    ``uids=False`` skips /proc/PID/status when the caller knows them already.
    """
    argv = read_argv(pid)
    exe = read_exe(pid)
    stat = read_stat(pid)
    ids = read_uids(pid) if uids else None
    return ProcSnapshot(
        pid=pid,
        argv=argv,
        exe=exe,
        stat=stat,
        ruid=None if ids is None else ids[0],
        euid=None if ids is None else ids[1],
    )


def pids_by_uid(uids: set[int] | frozenset[int]) -> dict[int, int]:
    """pid -> uid for every live process whose real or effective uid is in ``uids``."""
    found: dict[int, int] = {}
    if not uids:
        return found
    try:
        entries = [e.name for e in Path(PROC).iterdir()]
    except OSError:
        return found
    for name in entries:
        if not name.isdigit():
            continue
        pid = int(name)
        got = read_uids(pid)
        if got is None:
            continue
        if got[0] in uids:
            found[pid] = got[0]
        elif got[1] in uids:
            found[pid] = got[1]
    return found


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets a process holds open."""
    inodes: set[int] = set()
    try:
        links = list(Path(f"{PROC}/{pid}/fd").iterdir())
    except OSError:
        return inodes
    for link in links:
        try:
            target = str(link.readlink())
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def socket_inode_for_port(pid: int, port: int) -> set[int]:
    """Inodes of sockets bound to local ``port`` in the network namespace of ``pid``."""
    found: set[int] = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        raw = _read_bytes(f"{PROC}/{pid}/net/{table}")
        if raw is None:
            continue
        for line in raw.decode("ascii", "replace").splitlines()[1:]:
            cols = line.split()
            if len(cols) < 10:
                continue
            local = cols[1]
            try:
                local_port = int(local.rsplit(":", 1)[1], 16)
            except (IndexError, ValueError):
                continue
            if local_port == port and cols[9] != "0":
                found.add(int(cols[9]))
    return found
