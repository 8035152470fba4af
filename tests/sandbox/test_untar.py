"""Host-side unpacking of sandbox tar streams: only plain files and directories, ever."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from corral.errors import SandboxError
from corral.sandbox.untar import extract_plain


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None], fmt: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **kw: object) -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    for k, v in kw.items():
        setattr(info, k, v)
    return info, data if kind == tarfile.REGTYPE else None


def test_files_and_directories_come_out(tmp_path: Path) -> None:
    blob = tar_of(entry("d", tarfile.DIRTYPE, mode=0o755), entry("d/a.txt", data=b"hi"),
                  entry("d/run.sh", data=b"#!/bin/sh\n", mode=0o4755))
    extract_plain(blob, tmp_path, max_bytes=1 << 20)
    assert (tmp_path / "d" / "a.txt").read_bytes() == b"hi"
    assert (tmp_path / "d" / "run.sh").stat().st_mode & 0o7777 == 0o755  # setuid dropped


@pytest.mark.parametrize("bad", [
    entry("escape", tarfile.SYMTYPE, linkname="/etc"),
    entry("rel", tarfile.SYMTYPE, linkname="sibling"),
    entry("hard", tarfile.LNKTYPE, linkname="/etc/shadow"),
    entry("dev", tarfile.CHRTYPE),
    entry("fifo", tarfile.FIFOTYPE),
    entry("../up.txt", data=b"x"),
    entry("/abs.txt", data=b"x"),
])
def test_links_devices_and_escaping_names_refuse_the_whole_stream(
    tmp_path: Path, bad: tuple
) -> None:
    blob = tar_of(entry("ok.txt", data=b"fine"), bad)
    with pytest.raises(SandboxError):
        extract_plain(blob, tmp_path, max_bytes=1 << 20)
    assert not any(p.is_symlink() for p in tmp_path.rglob("*"))


def test_symlink_chain_past_path_max_is_refused(tmp_path: Path) -> None:
    # The shape of the 2025 tarfile filter escapes: long directory chains plus symlinks.
    members = []
    path = ""
    for i in range(16):
        path = f"{path}/{'d' * 247}{i}".lstrip("/")
        members.append(entry(path, tarfile.DIRTYPE))
        members.append(entry(f"l{i}", tarfile.SYMTYPE, linkname=path))
    members.append(entry("escape", tarfile.SYMTYPE, linkname=f"{path}/../../outside"))
    members.append(entry("escape/pwned", data=b"x"))
    with pytest.raises(SandboxError, match="link"):
        extract_plain(tar_of(*members), tmp_path / "into", max_bytes=1 << 20)
    assert not (tmp_path / "outside").exists()


def test_compressed_streams_and_size_bombs_are_refused(tmp_path: Path) -> None:
    plain = tar_of(entry("big", data=b"\0" * (2 << 20)))
    with pytest.raises(SandboxError, match="not a plain tar"):
        extract_plain(gzip.compress(plain), tmp_path, max_bytes=64 << 20)
    with pytest.raises(SandboxError, match="more than"):
        extract_plain(plain, tmp_path, max_bytes=1 << 20)


def test_a_name_twice_is_refused(tmp_path: Path) -> None:
    blob = tar_of(entry("a", data=b"1"), entry("a", data=b"2"))
    with pytest.raises(SandboxError, match="File exists"):
        extract_plain(blob, tmp_path, max_bytes=1 << 20)
