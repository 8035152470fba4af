"""Per-sandbox cgroups on cgroup v1 (one hierarchy per controller) and v2 (unified).

Each sandbox gets ``corral/<sandbox id>`` under every controller it needs. The
launcher writes its own pid into ``procs_files`` before it starts bwrap, so
nothing in the sandbox ever runs outside its limits.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from corral.errors import SandboxError, SandboxUnavailable

CGROUP_PARENT = "corral"
_V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "freezer")
_CFS_PERIOD_US = 100_000


@dataclass(frozen=True, slots=True)
class CgroupLimits:
    cpus: float
    memory: int
    pids: int


@dataclass(frozen=True, slots=True)
class CgroupStats:
    cpu_seconds: float
    memory_peak: int
    oom_kills: int
    pids_max_hits: int


def _write(path: Path, value: str) -> None:
    with path.open("w") as fh:
        fh.write(value)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _keyed(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def read_small(path: str) -> bytes:
    """One small /proc or cgroupfs read without pathlib's overhead (on every exec's path).
    Empty if it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.read(fd, 65536)
    except OSError:
        return b""
    finally:
        os.close(fd)


def _keyed_fast(path: str) -> dict[str, int]:
    return _keyed(read_small(path).decode())


def _cgroup_mounts() -> tuple[str | None, dict[str, Path]]:
    """(v2 mount point or None, v1 controller -> mount point) from mountinfo."""
    v2: str | None = None
    v1: dict[str, Path] = {}
    with Path("/proc/self/mountinfo").open() as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(rfields) < 3:
                continue
            fstype, options = rfields[0], rfields[2].split(",")
            if fstype == "cgroup2" and v2 is None:
                v2 = fields[4]
            elif fstype == "cgroup":
                for opt in options:
                    if opt in _V1_CONTROLLERS:
                        v1.setdefault(opt, Path(fields[4]))
    return v2, v1


class Cgroup:
    """One sandbox's cgroup directories, with limits, stats, freeze and kill."""

    def __init__(self, version: int, dirs: dict[str, Path]) -> None:
        self.version = version
        # v1: controller -> directory; v2: {"unified": directory}
        self.dirs = dirs

    @property
    def paths(self) -> list[str]:
        return sorted({str(p) for p in self.dirs.values()})

    @property
    def procs_files(self) -> list[str]:
        return [str(Path(p) / "cgroup.procs") for p in self.paths]

    def _dir(self, controller: str) -> Path:
        return self.dirs["unified"] if self.version == 2 else self.dirs[controller]

    def apply(self, limits: CgroupLimits) -> None:
        quota = max(1000, int(limits.cpus * _CFS_PERIOD_US))
        if self.version == 2:
            d = self.dirs["unified"]
            _write(d / "cpu.max", f"{quota} {_CFS_PERIOD_US}")
            _write(d / "memory.max", str(limits.memory))
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", "0")
            _write(d / "pids.max", str(limits.pids))
            return
        _write(self.dirs["cpu"] / "cpu.cfs_period_us", str(_CFS_PERIOD_US))
        _write(self.dirs["cpu"] / "cpu.cfs_quota_us", str(quota))
        mem = self.dirs["memory"]
        _write(mem / "memory.limit_in_bytes", str(limits.memory))
        # Without swap accounting the limit could be dodged by swapping out.
        if (mem / "memory.memsw.limit_in_bytes").exists():
            _write(mem / "memory.memsw.limit_in_bytes", str(limits.memory))
        _write(self.dirs["pids"] / "pids.max", str(limits.pids))

    def pids(self) -> list[int]:
        text = _read(Path(self._dir("pids")) / "cgroup.procs")
        return [int(x) for x in text.split()]

    def counters(self) -> tuple[int, int]:
        """(OOM kills, refused forks) so far: cheap enough to read after every command."""
        if self.version == 2:
            d = self.dirs["unified"]
            events, pids = d / "memory.events", d / "pids.events"
        else:
            events = self.dirs["memory"] / "memory.oom_control"
            pids = self.dirs["pids"] / "pids.events"
        return _keyed_fast(str(events)).get("oom_kill", 0), _keyed_fast(str(pids)).get("max", 0)

    def stats(self) -> CgroupStats:
        if self.version == 2:
            d = self.dirs["unified"]
            cpu = _keyed(_read(d / "cpu.stat")).get("usage_usec", 0) / 1e6
            peak_text = _read(d / "memory.peak").strip()
            peak = int(peak_text) if peak_text.isdigit() else 0
            oom = _keyed(_read(d / "memory.events")).get("oom_kill", 0)
            pids_hits = _keyed(_read(d / "pids.events")).get("max", 0)
            return CgroupStats(cpu, peak, oom, pids_hits)
        usage = _read(self.dirs["cpuacct"] / "cpuacct.usage").strip()
        peak = _read(self.dirs["memory"] / "memory.max_usage_in_bytes").strip()
        oom = _keyed(_read(self.dirs["memory"] / "memory.oom_control")).get("oom_kill", 0)
        pids_hits = _keyed(_read(self.dirs["pids"] / "pids.events")).get("max", 0)
        return CgroupStats(
            int(usage) / 1e9 if usage.isdigit() else 0.0,
            int(peak) if peak.isdigit() else 0,
            oom,
            pids_hits,
        )

    def freeze(self) -> None:
        if self.version == 2:
            _write(self.dirs["unified"] / "cgroup.freeze", "1")
        else:
            _write(self.dirs["freezer"] / "freezer.state", "FROZEN")

    def thaw(self) -> None:
        if self.version == 2:
            _write(self.dirs["unified"] / "cgroup.freeze", "0")
        else:
            _write(self.dirs["freezer"] / "freezer.state", "THAWED")

    def kill_all(self, timeout: float = 5.0) -> None:
        """SIGKILL every process, including ones forked mid-kill, and wait until none is left."""
        unified = self.dirs.get("unified")
        if unified is not None and (unified / "cgroup.kill").exists():
            with contextlib.suppress(FileNotFoundError):
                _write(unified / "cgroup.kill", "1")
        else:
            # Frozen tasks can't fork, so one pass over cgroup.procs catches everyone.
            with contextlib.suppress(FileNotFoundError):
                self.freeze()
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(FileNotFoundError):
                self.thaw()
        deadline = time.monotonic() + timeout
        while self.pids():
            if time.monotonic() > deadline:
                raise SandboxError(f"processes survived SIGKILL in cgroup {self.paths[0]}")
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)

    def remove(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for path in self.paths:
            while True:
                try:
                    Path(path).rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    # EBUSY while the last tasks are still being reaped.
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise SandboxError(f"cannot remove cgroup {path}: {exc}") from exc
                    time.sleep(0.005)


class CgroupManager:
    """Creates and finds sandbox cgroups on whichever cgroup version the host runs."""

    def __init__(self) -> None:
        v2_mount, v1 = _cgroup_mounts()
        v2_controllers = ""
        if v2_mount:
            v2_controllers = _read(Path(v2_mount) / "cgroup.controllers")
        needed_v2 = {"cpu", "memory", "pids"}
        if v2_mount and needed_v2 <= set(v2_controllers.split()):
            self.version = 2
            self.roots = {"unified": Path(v2_mount) / CGROUP_PARENT}
            self._enable_v2(Path(v2_mount))
        elif all(c in v1 for c in _V1_CONTROLLERS):
            self.version = 1
            self.roots = {c: v1[c] / CGROUP_PARENT for c in _V1_CONTROLLERS}
            for root in self.roots.values():
                root.mkdir(exist_ok=True)
        else:
            missing = [c for c in _V1_CONTROLLERS if c not in v1]
            raise SandboxUnavailable(
                "no usable cgroups: need cgroup v2 with cpu, memory and pids controllers, "
                f"or cgroup v1 with {', '.join(_V1_CONTROLLERS)} (missing: {', '.join(missing)})"
            )

    def _enable_v2(self, mount: Path) -> None:
        root = self.roots["unified"]
        root.mkdir(exist_ok=True)
        for d in (mount, root):
            enabled = set(_read(d / "cgroup.subtree_control").split())
            for ctrl in ("cpu", "memory", "pids"):
                if ctrl not in enabled:
                    try:
                        _write(d / "cgroup.subtree_control", f"+{ctrl}")
                    except OSError as exc:
                        raise SandboxUnavailable(
                            f"cannot enable the {ctrl} controller in {d}: {exc}"
                        ) from exc

    def create(self, name: str, limits: CgroupLimits) -> Cgroup:
        dirs = {key: root / name for key, root in self.roots.items()}
        cg = Cgroup(self.version, dirs)
        try:
            for d in {str(p) for p in dirs.values()}:
                Path(d).mkdir()
            cg.apply(limits)
        except OSError as exc:
            with contextlib.suppress(SandboxError):
                cg.remove(timeout=0.5)
            raise SandboxError(f"cannot create cgroup {name}: {exc}") from exc
        return cg

    def open(self, name: str) -> Cgroup:
        return Cgroup(self.version, {key: root / name for key, root in self.roots.items()})

    def names(self) -> set[str]:
        """Every sandbox cgroup that exists under any controller."""
        found: set[str] = set()
        for root in self.roots.values():
            with contextlib.suppress(FileNotFoundError):
                found.update(p.name for p in root.iterdir() if p.is_dir())
        return found
