"""Per-process host setup shared by every sandbox: binaries, cgroups, state, the start sweep."""

from __future__ import annotations

import functools
import os
import resource
from dataclasses import dataclass

from corral.errors import SandboxUnavailable
from corral.sandbox import gc
from corral.sandbox.cgroups import CgroupManager
from corral.sandbox.etcview import etc_view
from corral.sandbox.initbin import LIB_DIR, bwrap_binary, init_binary
from corral.sandbox.seccomp import filter_bytes
from corral.sandbox.state import StateDir


@dataclass(frozen=True, slots=True)
class Host:
    init: str
    bwrap: str
    cgroups: CgroupManager
    state: StateDir
    etc_view: str


@functools.cache
def host() -> Host:
    """Checks the host once per process, then sweeps leftovers of owners that died."""
    if os.geteuid() != 0:
        raise SandboxUnavailable(
            "Corral must run as root: it creates cgroups and drops each sandbox to its own uid"
        )
    filter_bytes()  # fail now, not at the first sandbox, if libseccomp is missing
    h = Host(
        init_binary(), bwrap_binary(), CgroupManager(), StateDir(), str(etc_view(LIB_DIR / "etc"))
    )
    # Each sandbox holds a handful of pipes; hundreds at once need more than 1024 fds.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gc.collect(h.state, h.cgroups)
    return h
