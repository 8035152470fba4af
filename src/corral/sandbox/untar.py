"""Unpacking a tar stream that came out of a sandbox, on the host, as root.

The stream is hostile. tarfile's own ``data`` filter has had path-resolution escapes
(symlink chains past PATH_MAX), so this accepts far less: only directories and regular
files, relative names without ``..``, no compression, bounded size and count. With no
link ever created, no path under ``into`` can lead anywhere else.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path, PurePosixPath

from corral.errors import SandboxError

MAX_MEMBERS = 200_000


def extract_plain(blob: bytes, into: Path, *, max_bytes: int) -> None:
    """Unpack ``blob`` into the empty directory ``into``, which only the caller can write."""
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
            for count, member in enumerate(tar):
                if count >= MAX_MEMBERS:
                    raise SandboxError(f"more than {MAX_MEMBERS} entries")
                parts = PurePosixPath(member.name).parts
                if not parts or member.name.startswith("/") or ".." in parts:
                    raise SandboxError(f"unsafe name {member.name!r}")
                path = into.joinpath(*parts)
                mode = member.mode & 0o755  # never setuid/setgid/sticky, never world-writable
                if member.isdir():
                    path.mkdir(mode=mode | 0o700, parents=True, exist_ok=True)
                elif member.isfile():
                    total += member.size
                    if total > max_bytes:
                        raise SandboxError(f"more than {max_bytes} bytes")
                    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                    _write_new(path, tar, member, mode)
                else:
                    kind = "link" if member.issym() or member.islnk() else "special file"
                    raise SandboxError(f"{member.name!r} is a {kind}; only files and dirs")
    except tarfile.TarError as exc:
        raise SandboxError(f"not a plain tar stream: {exc}") from None
    except OSError as exc:  # e.g. a name seen twice (O_EXCL), or a file where a dir must be
        raise SandboxError(f"cannot unpack: {exc.strerror}: {exc.filename}") from None


def _write_new(path: Path, tar: tarfile.TarFile, member: tarfile.TarInfo, mode: int) -> None:
    source = tar.extractfile(member)
    if source is None:
        raise SandboxError(f"cannot read {member.name!r}")
    # O_EXCL|O_NOFOLLOW: a name seen twice, or anything but a fresh file, is refused.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as out, source:
        while chunk := source.read(1 << 20):
            out.write(chunk)
