"""A minimal real sandbox for the monitor's tests and benchmarks. It contains nothing.

:class:`LocalSandbox` runs processes under their own host uid (``setpriv``) in
their own cgroup v1 freezer and cpuacct groups, and kills and freezes them for
real, so the monitor is exercised against the kernel, not a mock. It has no
namespaces, no filesystem isolation and no seccomp: never run untrusted code in it.
Needs root and cgroup v1 at /sys/fs/cgroup/<controller>.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import tempfile
import time
import uuid
from pathlib import Path

from corral.errors import SandboxClosed, SandboxUnavailable
from corral.monitor import procfs
from corral.policy import Policy

CGROUP_ROOT = Path("/sys/fs/cgroup")

# The simulated miner: a CPU burner bounded to 20 s, given a pool URL in argv
# that nothing ever connects to. The system python, so any uid can run it.
BURNER_CODE = "import time\nt = time.time()\nwhile time.time() - t < 20: pass"
SIMULATED_POOL = "stratum+tcp://pool.sim.test:3333"
SIMULATED_MINER = ["/usr/bin/python3", "-c", BURNER_CODE, SIMULATED_POOL]
# Far above the sandbox's own uid slots (2_100_000_000 + up to 40_000), per process.
_UID_BASE = 2_100_050_000
_uid_counter = itertools.count()

_ENTER = (
    'for c in $CORRAL_CGROUPS; do echo $$ > "$c/cgroup.procs" || exit 125; done; '
    'exec setpriv --reuid="$CORRAL_UID" --regid="$CORRAL_UID" --clear-groups -- "$@"'
)


def fresh_uid() -> int:
    """A host uid no other test process of this machine is using."""
    return _UID_BASE + (os.getpid() % 2000) * 256 + next(_uid_counter) % 256


class LocalSandbox:
    """Processes under one uid and one cgroup; implements the monitor's SandboxHandle."""

    def __init__(
        self,
        policy: Policy | None = None,
        *,
        uid: int | None = None,
        episode_id: str | None = "ep-test",
        with_home: bool = True,
    ) -> None:
        self.sandbox_id = f"local-{uuid.uuid4().hex[:10]}"
        self.episode_id = episode_id
        self.uid = uid if uid is not None else fresh_uid()
        self.policy = policy or Policy()
        self.actions: list[tuple[str, object]] = []
        self.closed_reason: str | None = None
        self.watch_paths: list[str] = []
        self._with_home = with_home
        self._cgroups = {
            c: CGROUP_ROOT / c / f"corral-test-{self.sandbox_id}" for c in ("freezer", "cpuacct")
        }
        self._procs: list[asyncio.subprocess.Process] = []
        self.home: Path | None = None

    async def __aenter__(self) -> LocalSandbox:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        for controller, path in self._cgroups.items():
            if not (CGROUP_ROOT / controller).is_dir():
                raise SandboxUnavailable(f"cgroup v1 controller {controller} is not mounted")
            path.mkdir()
        if self._with_home:
            self.home = Path(tempfile.mkdtemp(prefix="corral-mon-home-"))
            self.home.chmod(0o755)
            os.chown(self.home, self.uid, self.uid)
            self.watch_paths = [str(self.home)]

    # --- running things -----------------------------------------------------------

    async def spawn(self, argv: list[str], *, cwd: str | None = None) -> int:
        """Start ``argv`` as the sandbox uid inside its cgroups; returns its host pid."""
        if self.closed_reason is not None:
            raise SandboxClosed(self.sandbox_id, self.closed_reason)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.home or "/nonexistent"),
            "CORRAL_UID": str(self.uid),
            "CORRAL_CGROUPS": " ".join(str(p) for p in self._cgroups.values()),
        }
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            _ENTER,
            "sh",
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
            cwd=cwd or str(self.home or "/"),
        )
        self._procs.append(proc)
        return proc.pid

    def pids(self) -> list[int]:
        """Every process in the sandbox's cgroup."""
        raw = (self._cgroups["freezer"] / "cgroup.procs").read_text()
        return [int(p) for p in raw.split()]

    # --- SandboxHandle ----------------------------------------------------------------

    async def kill_tree(self, pid: int) -> None:
        self.actions.append(("kill_tree", pid))
        members = set(self.pids())
        if pid not in members:
            return
        children: dict[int, list[int]] = {}
        for p in members:
            stat = procfs.read_stat(p)
            if stat is not None:
                children.setdefault(stat.ppid, []).append(p)
        tree, todo = [], [pid]
        while todo:
            p = todo.pop()
            tree.append(p)
            todo.extend(children.get(p, ()))
        for p in tree:  # top first, so nothing is left to fork new children
            _kill(p)

    async def freeze(self) -> None:
        self.actions.append(("freeze", None))
        await self._set_freezer("FROZEN")

    async def thaw(self) -> None:
        await self._set_freezer("THAWED")

    async def end_episode(self, reason: str) -> None:
        self.actions.append(("end_episode", reason))
        self.closed_reason = reason
        await self._kill_all()

    # --- cleanup ----------------------------------------------------------------------

    async def close(self) -> None:
        """Kill everything, reap, remove the cgroups and home. Safe to call twice."""
        if self._cgroups["freezer"].exists():
            await self._kill_all()
        for proc in self._procs:
            if proc.returncode is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 5)
        for path in self._cgroups.values():
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    await asyncio.sleep(0.05)
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None

    async def _kill_all(self) -> None:
        await self._set_freezer("FROZEN")
        for p in self.pids():
            _kill(p)
        await self._set_freezer("THAWED")
        deadline = time.monotonic() + 5
        while self.pids() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def _set_freezer(self, state: str) -> None:
        path = self._cgroups["freezer"] / "freezer.state"
        path.write_text(state)
        deadline = time.monotonic() + 5
        while path.read_text().strip() != state and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            path.write_text(state)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
