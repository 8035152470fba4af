"""Builds and finds ``corral-init``, the native supervisor every sandbox runs as its PID 1."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from corral.errors import SandboxUnavailable

LIB_DIR = Path(os.environ.get("CORRAL_LIB_DIR", "/var/lib/corral"))
BIN_DIR = LIB_DIR / "bin"


def _source() -> bytes:
    return resources.files("corral.sandbox").joinpath("native/corral_init.c").read_bytes()


@functools.cache
def init_binary() -> str:
    """Path of the supervisor built from this version's source, compiling it if needed.

    Built statically so it runs the same whatever libraries the sandbox can see; the
    file name carries the source hash, so an upgrade never runs a stale binary.
    """
    source = _source()
    digest = hashlib.sha256(source).hexdigest()[:16]
    target = BIN_DIR / f"corral-init-{digest}"
    if target.exists():
        return str(target)
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SandboxUnavailable("no C compiler to build corral-init (apt-get install gcc)")
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    src = BIN_DIR / f"corral-init-{digest}.c"
    tmp = BIN_DIR / f".corral-init-{digest}.{os.getpid()}"
    src.write_bytes(source)
    cmd = [compiler, "-O2", "-Wall", "-static", "-o", str(tmp), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise SandboxUnavailable(f"building corral-init failed:\n{proc.stderr.strip()}")
    tmp.chmod(0o755)
    tmp.replace(target)  # atomic: concurrent builders can't leave a half-written binary
    return str(target)


@functools.cache
def bwrap_binary() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxUnavailable("bubblewrap is not installed (apt-get install bubblewrap)")
    return path
