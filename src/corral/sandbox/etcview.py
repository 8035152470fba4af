"""A prepared copy of the /etc allowlist, bound into every sandbox with one mount.

Binding thirty host paths one by one costs bwrap more than the rest of its setup;
one read-only bind of a prepared directory costs one mount. Only world-readable
entries are copied, so nothing a host user could not read ever lands here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
from pathlib import Path

from corral.sandbox.bwrap import ETC_ALLOWLIST

# Mount points for files the sandbox gets its own version of (bwrap --ro-bind-data).
PLACEHOLDERS = ("passwd", "group", "hostname", "hosts", "resolv.conf")


def _walk(path: Path) -> list[Path]:
    if path.is_dir() and not path.is_symlink():
        return [path, *sorted(p for p in path.rglob("*"))]
    return [path]


def _fingerprint(etc: Path) -> str:
    h = hashlib.sha256()
    for name in ETC_ALLOWLIST:
        for p in _walk(etc / name):
            with contextlib.suppress(OSError):
                st = p.lstat()
                h.update(f"{p}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _readable_by_others(p: Path) -> bool:
    st = p.lstat()
    if stat.S_ISLNK(st.st_mode):
        return True
    need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(st.st_mode) else 0)
    return st.st_mode & need == need


def _copy(src: Path, dst: Path) -> None:
    if not _readable_by_others(src):
        return
    if src.is_symlink():
        dst.symlink_to(src.readlink())
    elif src.is_dir():
        dst.mkdir(mode=0o755)
        for child in sorted(src.iterdir()):
            _copy(child, dst / child.name)
    elif src.is_file():
        shutil.copy2(src, dst)


def etc_view(root: Path, etc: Path = Path("/etc")) -> Path:
    """Return a directory to bind at /etc inside sandboxes, building it if the host changed."""
    target = root / _fingerprint(etc)
    if target.exists():
        return target
    root.mkdir(parents=True, exist_ok=True, mode=0o755)
    tmp = root / f".build-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o755)
    for name in ETC_ALLOWLIST:
        src = etc / name
        if src.exists() or src.is_symlink():
            _copy(src, tmp / name)
    for name in PLACEHOLDERS:
        (tmp / name).touch(mode=0o644)
    try:
        tmp.rename(target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process built the same view first
    return target
