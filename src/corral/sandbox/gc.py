"""Cleaning up after owners that died without closing their sandboxes (SIGKILL, OOM, crash)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from corral.sandbox.cgroups import CgroupManager
from corral.sandbox.state import StateDir

# A slot claimed moments ago may belong to a sandbox whose record is still being written.
_ORPHAN_GRACE_S = 60.0


@dataclass(slots=True)
class GcReport:
    sandboxes: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    processes_killed: int = 0

    @property
    def empty(self) -> bool:
        return not (self.sandboxes or self.cgroups or self.slots or self.processes_killed)


def collect(state: StateDir | None = None, cgroups: CgroupManager | None = None) -> GcReport:
    """Remove every sandbox whose owner is gone: processes, cgroups, uid slots and records."""
    state = state or StateDir()
    cgroups = cgroups or CgroupManager()
    report = GcReport()
    live_cgroups: set[str] = set()
    live_ids: set[str] = set()
    for record in state.records():
        if record.owner_alive():
            live_cgroups.add(record.cgroup)
            live_ids.add(record.sandbox_id)
            continue
        cg = cgroups.open(record.cgroup)
        report.processes_killed += len(cg.pids())
        cg.kill_all()
        cg.remove()
        state.release_slot(record.slot)
        state.remove(record.sandbox_id)
        report.sandboxes.append(record.sandbox_id)
        report.slots.append(record.slot)
    for name in sorted(cgroups.names() - live_cgroups):
        if state.has_record(name):
            continue  # created after the scan above (cgroup name == sandbox id)
        cg = cgroups.open(name)
        report.processes_killed += len(cg.pids())
        cg.kill_all()
        cg.remove()
        report.cgroups.append(name)
    now = time.time()
    for slot in state.slots():
        owner = state.slot_owner(slot)
        if owner in live_ids or slot in report.slots:
            continue
        path = state.uids / str(slot)
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:
            continue
        if age > _ORPHAN_GRACE_S:
            state.release_slot(slot)
            report.slots.append(slot)
    return report
