"""Maps a sandbox socket (its local address) to the host pid that owns it.

The gateway sees only the source address of a connection. Inside the sandbox's
namespace that address names one socket inode (``/proc/PID/net/tcp*``, read
through any process in that namespace), and the inode names the process holding
it (``/proc/PID/fd/* -> socket:[inode]``). Only processes whose ``ns/net`` is the
sandbox's namespace are scanned, so the answer is always a sandbox process.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

_PROC = Path("/proc")


def pids_in_netns(netns_inode: int, *, proc: Path = _PROC) -> list[int]:
    pids: list[int] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "ns" / "net").stat().st_ino == netns_inode:
                pids.append(int(entry.name))
        except OSError:  # the process exited or is not ours to look at
            continue
    return pids


def _hex_address(text: str) -> tuple[str, int]:
    """Decodes ``0100007F:1F90`` (as in /proc/net/tcp) into ("127.0.0.1", 8080)."""
    addr_hex, port_hex = text.split(":")
    raw = bytes.fromhex(addr_hex)
    # The kernel prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words)), int(port_hex, 16)


def socket_inode(table: str, local_ip: str, local_port: int) -> int | None:
    """The inode of the socket bound to ``local_ip:local_port`` in a /proc/net/{tcp,udp}* text.

    An exact match wins; otherwise a socket bound to the unspecified address on that port
    (an unconnected UDP sender is listed as ``0.0.0.0:port`` or ``[::]:port``).
    """
    ip = ipaddress.ip_address(local_ip)
    exact = (str(ip), local_port)
    wildcards = {("0.0.0.0", local_port), ("::", local_port)}
    if ip.version == 4:
        exact_mapped = (str(ipaddress.IPv6Address(f"::ffff:{ip}")), local_port)
    else:
        exact_mapped = exact
    fallback: int | None = None
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[9] == "0":
            continue
        try:
            address = _hex_address(fields[1])
        except ValueError:
            continue
        if address in (exact, exact_mapped):
            return int(fields[9])
        if address in wildcards and fallback is None:
            fallback = int(fields[9])
    return fallback


def pid_of_socket(pids: list[int], inode: int, *, proc: Path = _PROC) -> int | None:
    target = f"socket:[{inode}]"
    for pid in pids:
        fd_dir = proc / str(pid) / "fd"
        try:
            for fd in fd_dir.iterdir():
                try:
                    if str(fd.readlink()) == target:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


def _still_inside(pids: list[int], netns_inode: int) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if (_PROC / str(pid) / "ns" / "net").stat().st_ino == netns_inode:
                alive.append(pid)
        except OSError:
            continue
    return alive


class PidFinder:
    """Finds socket owners in one namespace, remembering its processes between lookups
    (scanning every /proc entry is the expensive part; a sandbox's set changes slowly)."""

    def __init__(self, netns_inode: int) -> None:
        self._inode = netns_inode
        self._pids: list[int] = []

    def find(self, transport: str, local_ip: str, local_port: int) -> int | None:
        cached = _still_inside(self._pids, self._inode)
        if cached:
            pid = find_pid(self._inode, transport, local_ip, local_port, pids=cached)
            if pid is not None:
                return pid
        self._pids = pids_in_netns(self._inode)
        return find_pid(self._inode, transport, local_ip, local_port, pids=self._pids)


def find_pid(
    netns_inode: int,
    transport: str,
    local_ip: str,
    local_port: int,
    *,
    pids: list[int] | None = None,
) -> int | None:
    """Host pid of the sandbox process owning the socket, or None if it is gone.

    ``pids``: processes known to be in the namespace (default: scan /proc for them).
    """
    if pids is None:
        pids = pids_in_netns(netns_inode)
    if not pids:
        return None
    version = ipaddress.ip_address(local_ip).version
    # An IPv4 flow may come from a dual-stack IPv6 socket (listed as ::ffff:a.b.c.d).
    tables = [transport + "6"] if version == 6 else [transport, transport + "6"]
    for pid in pids:
        for table_name in tables:
            try:
                table = (_PROC / str(pid) / "net" / table_name).read_text()
            except OSError:
                break  # this pid is gone: any other in the namespace shows the same tables
            inode = socket_inode(table, local_ip, local_port)
            if inode is not None:
                return pid_of_socket(pids, inode)
        else:
            return None
    return None


__all__ = ["PidFinder", "find_pid", "pid_of_socket", "pids_in_netns", "socket_inode"]
