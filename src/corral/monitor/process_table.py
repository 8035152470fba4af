"""Every process of every watched sandbox: its lineage, its step, what it ran.

Lineage comes from fork events, not from the current ppid: a process that
daemonizes is re-parented to init, but it still belongs to the step whose
process forked it, and its ancestors stay on record.

The table is written by the connector thread and read by the asyncio loop, so
every method takes the one lock; none does slow work while holding it except
the /proc reads an exec needs, which must happen before the process is gone.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from corral.monitor import procfs
from corral.monitor.proc_connector import ExecEvent, ExitEvent, ForkEvent, UidEvent

# How far back the parent chain goes; deeper chains are cut, not followed.
ANCESTOR_LIMIT = 16
# An EXEC_START naming a pid we have not seen yet waits this long for it.
PENDING_STEP_TTL = 10.0


@dataclass(slots=True)
class ProcessRecord:
    """One process (one pid lifetime) inside a watched sandbox."""

    key: int
    pid: int
    sandbox_id: str
    uid: int
    ppid: int | None
    ancestors: tuple[tuple[int, str], ...]  # (pid, name) of the fork parents, nearest first
    ancestor_keys: tuple[int, ...]  # the same, as record keys, for descendant lookups
    step: int | None
    lineage: str  # how we learnt of it: fork, uid, exec, gpu or scan (at watch, after lost events)
    fork_ns: int | None = None
    exec_ns: int | None = None
    argv: list[str] | None = None
    exe: str | None = None
    comm: str | None = None
    start_ticks: int | None = None
    execs: int = 0
    exit_ns: int | None = None
    exit_status: int | None = None
    # written by the sampler only
    cpu_ticks: int | None = None
    cpu_at: float = 0.0
    cpu_fraction: float = 0.0
    rss_bytes: int = 0
    saturated_since: float | None = None
    fired: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        if self.argv:
            return PurePosixPath(self.argv[0]).name or self.argv[0]
        return self.comm or "?"

    @property
    def alive(self) -> bool:
        return self.exit_ns is None

    @property
    def started_ns(self) -> int | None:
        return self.fork_ns if self.fork_ns is not None else self.exec_ns

    @property
    def program_start_ns(self) -> int:
        """When it began running what it runs now: its last exec, else its fork, else now."""
        return self.exec_ns or self.started_ns or time.monotonic_ns()

    def ancestry(self) -> list[dict[str, object]]:
        """The parent chain, nearest first, as recorded at fork."""
        return [{"pid": pid, "name": name} for pid, name in self.ancestors]


@dataclass(frozen=True, slots=True)
class ExecNotice:
    record: ProcessRecord
    ts_ns: int
    argv: list[str] | None
    exe: str | None
    comm: str | None


@dataclass(frozen=True, slots=True)
class ExitNotice:
    record: ProcessRecord
    ts_ns: int
    status: int | None  # wait(2) status; None when the exit itself was lost


@dataclass(frozen=True, slots=True)
class LostNotice:
    overflows: int
    resynced: int  # notices the resync produced in their place


Notice = ExecNotice | ExitNotice | LostNotice


class ProcessTable:
    def __init__(self, recent_limit: int = 4096) -> None:
        self.lock = threading.RLock()
        self._keys = itertools.count(1)
        self._uid_sandbox: dict[int, str] = {}
        self._live: dict[int, ProcessRecord] = {}
        self._recent: OrderedDict[int, ProcessRecord] = OrderedDict()
        self._recent_limit = recent_limit
        self._pending_steps: dict[int, tuple[str, int, float]] = {}

    # --- sandboxes -----------------------------------------------------------

    def watch_uid(self, uid: int, sandbox_id: str) -> list[ProcessRecord]:
        """Start tracking ``uid``; adopts the processes it already has."""
        with self.lock:
            self._uid_sandbox[uid] = sandbox_id
        adopted = []
        for pid, _uid in sorted(procfs.pids_by_uid({uid}).items()):
            record = self._adopt(pid, uid, "scan", None)
            if record is not None:
                adopted.append(record)
        return adopted

    def unwatch_uid(self, uid: int, sandbox_id: str | None = None) -> None:
        """Stop watching ``uid``; with ``sandbox_id``, only if the uid still maps to it (a
        freed uid slot may already belong to a newer sandbox)."""
        with self.lock:
            current = self._uid_sandbox.get(uid)
            if current is None or (sandbox_id is not None and current != sandbox_id):
                return
            del self._uid_sandbox[uid]
            sandbox_id = current
            for pid in [p for p, r in self._live.items() if r.sandbox_id == sandbox_id]:
                del self._live[pid]
            for key in [k for k, r in self._recent.items() if r.sandbox_id == sandbox_id]:
                del self._recent[key]

    @property
    def watched_uids(self) -> frozenset[int]:
        with self.lock:
            return frozenset(self._uid_sandbox)

    # --- kernel events -------------------------------------------------------

    def on_fork(self, ev: ForkEvent) -> None:
        if ev.child_pid != ev.child_tgid:
            return  # a new thread, not a new process
        with self.lock:
            parent = self._live.get(ev.parent_tgid)
            if parent is None:
                return
            record = self._new(
                pid=ev.child_tgid,
                sandbox_id=parent.sandbox_id,
                uid=parent.uid,
                parent=parent,
                lineage="fork",
            )
            record.fork_ns = ev.ts_ns
            # Until it execs, a forked child runs its parent's program.
            record.argv, record.exe, record.comm = parent.argv, parent.exe, parent.comm

    def on_exec(self, ev: ExecEvent) -> ExecNotice | None:
        with self.lock:
            record = self._live.get(ev.tgid)
            known = record is not None
        if not known:
            record = self.adopt_if_watched(ev.tgid, "exec")
            if record is None:
                return None
        snap = procfs.snapshot(ev.tgid, uids=False)
        with self.lock:
            record.exec_ns = ev.ts_ns
            record.execs += 1
            record.argv = snap.argv
            record.exe = snap.exe
            # What the fork copied from the parent is stale now; unknown is better.
            record.comm = snap.stat.comm if snap.stat is not None else None
            if snap.stat is not None:
                record.start_ticks = snap.stat.start_ticks
            return ExecNotice(record, ev.ts_ns, snap.argv, snap.exe, record.comm)

    def adopt_if_watched(self, pid: int, lineage: str) -> ProcessRecord | None:
        """Track ``pid`` if it runs as a watched uid (a process whose fork we did not see)."""
        with self.lock:
            record = self._live.get(pid)
            if record is not None:
                return record
        uids = procfs.read_uids(pid)
        watched = self.watched_uids
        if uids is None or not (uids[0] in watched or uids[1] in watched):
            return None
        uid = uids[0] if uids[0] in watched else uids[1]
        return self._adopt(pid, uid, lineage, None)

    def on_uid(self, ev: UidEvent) -> None:
        if ev.pid != ev.tgid:
            return
        with self.lock:
            if ev.tgid in self._live:
                return
            uid = ev.ruid if ev.ruid in self._uid_sandbox else ev.euid
            if uid not in self._uid_sandbox:
                return
        # Entry point of a sandbox: a root helper switching to the sandbox's uid.
        record = self._adopt(ev.tgid, uid, "uid", ev.ts_ns)
        if record is not None and record.fork_ns is None:
            record.fork_ns = ev.ts_ns

    def on_exit(self, ev: ExitEvent) -> ExitNotice | None:
        if ev.pid != ev.tgid:
            return None
        with self.lock:
            record = self._live.pop(ev.tgid, None)
            if record is None:
                return None
            record.exit_ns = ev.ts_ns
            record.exit_status = ev.exit_code
            if record.comm is None:
                stat = procfs.read_stat(ev.tgid)  # a zombie still has its comm
                if stat is not None:
                    record.comm = stat.comm
            self._remember(record)
            return ExitNotice(record, ev.ts_ns, ev.exit_code)

    def resync(self) -> list[Notice]:
        """After lost events, rebuild from /proc so that nothing harmful slipped by.

        Unseen processes are adopted and every live process whose command line or
        executable changed is treated as having exec'd (its exec event may be among the
        lost ones); records of processes that are gone are closed.
        """
        found = procfs.pids_by_uid(self.watched_uids)
        now_ns = time.monotonic_ns()
        notices: list[Notice] = []
        for pid, uid in sorted(found.items()):
            with self.lock:
                record = self._live.get(pid)
            if record is None:
                record = self._adopt(pid, uid, "scan", None)
                if record is None:
                    continue
            snap = procfs.snapshot(pid)
            with self.lock:
                # The executable too: "exec -a <same argv> ./miner" keeps the command line.
                changed = snap.argv != record.argv or (
                    snap.exe is not None and record.exe is not None and snap.exe != record.exe
                )
                if snap.argv is not None and changed:
                    record.argv, record.exe, record.exec_ns = snap.argv, snap.exe, now_ns
                    record.execs += 1
                    notices.append(ExecNotice(record, now_ns, snap.argv, snap.exe, record.comm))
        with self.lock:
            for pid in [p for p in self._live if p not in found]:
                record = self._live[pid]
                stat = procfs.read_stat(pid)
                if stat is not None and stat.start_ticks == record.start_ticks:
                    continue  # still alive; its uid just is not the sandbox's any more
                del self._live[pid]
                record.exit_ns = now_ns
                self._remember(record)
                notices.append(ExitNotice(record, now_ns, None))
        return notices

    # --- steps ---------------------------------------------------------------

    def assign_step(self, sandbox_id: str, pid: int, step: int) -> list[ProcessRecord]:
        """Mark ``pid`` as the top of ``step``; its descendants without a step inherit it."""
        with self.lock:
            top = self._live.get(pid) or self._recent_by_pid(pid)
            if top is None or top.sandbox_id != sandbox_id:
                self._pending_steps[pid] = (sandbox_id, step, time.monotonic() + PENDING_STEP_TTL)
                return []
            changed = [top] if top.step != step else []
            top.step = step
            for record in [*self._live.values(), *self._recent.values()]:
                if top.key in record.ancestor_keys and record.step is None:
                    record.step = step
                    changed.append(record)
            return changed

    def step_members(self, sandbox_id: str, step: int) -> list[ProcessRecord]:
        with self.lock:
            return [r for r in self._live.values() if r.sandbox_id == sandbox_id and r.step == step]

    def descendants(self, record: ProcessRecord) -> list[ProcessRecord]:
        with self.lock:
            return [r for r in self._live.values() if record.key in r.ancestor_keys]

    # --- queries -------------------------------------------------------------

    def live(self, sandbox_id: str | None = None) -> list[ProcessRecord]:
        with self.lock:
            return [
                r for r in self._live.values() if sandbox_id is None or r.sandbox_id == sandbox_id
            ]

    def get(self, pid: int) -> ProcessRecord | None:
        with self.lock:
            return self._live.get(pid)

    def all_records(self, sandbox_id: str) -> list[ProcessRecord]:
        with self.lock:
            recs = [*self._recent.values(), *self._live.values()]
            return sorted((r for r in recs if r.sandbox_id == sandbox_id), key=lambda r: r.key)

    # --- internals -----------------------------------------------------------

    def _adopt(self, pid: int, uid: int, lineage: str, ts_ns: int | None) -> ProcessRecord | None:
        stat = procfs.read_stat(pid)
        with self.lock:
            sandbox_id = self._uid_sandbox.get(uid)
            if sandbox_id is None:
                return None
            existing = self._live.get(pid)
            if existing is not None:
                return existing
            ppid = stat.ppid if stat is not None else None
            parent = self._live.get(ppid) if ppid is not None else None
            record = self._new(pid, sandbox_id, uid, parent, lineage, ppid=ppid)
            if stat is not None:
                record.comm = stat.comm
                record.start_ticks = stat.start_ticks
            if parent is None and ppid is not None:
                # The host-side parent (the sandbox's launcher) ends the chain.
                pstat = procfs.read_stat(ppid)
                record.ancestors = ((ppid, pstat.comm if pstat else "?"),)
            if ts_ns is not None:
                record.fork_ns = ts_ns
            return record

    def _new(
        self,
        pid: int,
        sandbox_id: str,
        uid: int,
        parent: ProcessRecord | None,
        lineage: str,
        ppid: int | None = None,
    ) -> ProcessRecord:
        if parent is not None:
            ancestors = ((parent.pid, parent.name), *parent.ancestors)[:ANCESTOR_LIMIT]
            ancestor_keys = (parent.key, *parent.ancestor_keys)[:ANCESTOR_LIMIT]
            step = parent.step
            ppid = parent.pid
        else:
            ancestors, ancestor_keys, step = (), (), None
        record = ProcessRecord(
            key=next(self._keys),
            pid=pid,
            sandbox_id=sandbox_id,
            uid=uid,
            ppid=ppid,
            ancestors=ancestors,
            ancestor_keys=ancestor_keys,
            step=step,
            lineage=lineage,
        )
        pending = self._pending_steps.pop(pid, None)
        if pending is not None and pending[0] == sandbox_id and pending[2] > time.monotonic():
            record.step = pending[1]
        self._live[pid] = record
        return record

    def _remember(self, record: ProcessRecord) -> None:
        self._recent[record.key] = record
        while len(self._recent) > self._recent_limit:
            self._recent.popitem(last=False)
        if len(self._pending_steps) > 1024:
            now = time.monotonic()
            for pid in [p for p, v in self._pending_steps.items() if v[2] < now]:
                del self._pending_steps[pid]

    def _recent_by_pid(self, pid: int) -> ProcessRecord | None:
        for record in reversed(self._recent.values()):
            if record.pid == pid:
                return record
        return None
