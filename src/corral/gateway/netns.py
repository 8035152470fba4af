"""Network namespaces: create, enter from a thread, and remove.

Namespaces are named bind mounts under /run/netns, the same convention as
``ip netns``, so the sandbox launcher (and ``ip netns exec``) can open them by path.
``setns`` only moves the calling thread, so every "do this inside namespace X"
runs on a short-lived thread of its own and the event loop's thread never moves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

NETNS_DIR = Path("/run/netns")

_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096
_MNT_DETACH = 2

T = TypeVar("T")


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def netns_path(name: str) -> str:
    return str(NETNS_DIR / name)


def setns_current_thread(path: str) -> None:
    """Moves the calling thread into the network namespace at ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc().setns(fd, _CLONE_NEWNET), f"setns {path}")
    finally:
        os.close(fd)


def run_on_thread(fn: Callable[[], T], *, netns: str | None = None) -> T:
    """Runs ``fn`` on a fresh thread, inside ``netns`` (a path) if given, and returns its result.

    Blocking: call it through ``asyncio.to_thread`` from async code.
    """
    box: dict[str, object] = {}

    def body() -> None:
        try:
            if netns is not None:
                setns_current_thread(netns)
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=body, name="corral-netns", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def create_netns(name: str) -> str:
    """Creates an empty network namespace pinned at /run/netns/<name>; returns its path.

    Raises FileExistsError if the name is taken (never reuses someone else's namespace).
    """
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    path = NETNS_DIR / name
    # O_EXCL: a name collision must fail instead of joining an existing namespace.
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)

    def make() -> None:
        libc = _libc()
        _check(libc.unshare(_CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        source = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
        _check(libc.mount(source, str(path).encode(), b"none", _MS_BIND, None), "bind netns")

    try:
        run_on_thread(make)
    except OSError:
        path.unlink(missing_ok=True)
        raise
    return str(path)


def remove_netns(path: str) -> None:
    """Unpins a namespace; the kernel frees it once no process is left inside. Idempotent."""
    ret = _libc().umount2(path.encode(), _MNT_DETACH)
    if ret != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        _check(ret, f"umount {path}")
    Path(path).unlink(missing_ok=True)


def netns_inode(path: str) -> int:
    return Path(path).stat().st_ino


def write_sysctl(key: str, value: str) -> None:
    """Writes a sysctl of the calling thread's network namespace (net.* keys are per netns)."""
    Path("/proc/sys", *key.split(".")).write_text(value)


def socket_in_netns(
    path: str, family: socket.AddressFamily, kind: socket.SocketKind
) -> socket.socket:
    """A socket that belongs to the namespace at ``path`` (a socket keeps its namespace)."""
    return run_on_thread(lambda: socket.socket(family, kind), netns=path)


__all__ = [
    "NETNS_DIR",
    "create_netns",
    "netns_inode",
    "netns_path",
    "remove_netns",
    "run_on_thread",
    "setns_current_thread",
    "socket_in_netns",
    "write_sysctl",
]
