"""What a live sandbox leaves on the host, written down so a crashed owner can be cleaned up.

Layout under ``/run/corral`` (tmpfs, so a reboot clears it too)::

    sandboxes/<id>.json   owner pid + start time, uid slot, cgroup name
    uids/<slot>           claim on host uid BASE_UID + slot (content: sandbox id)
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Container
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from corral.errors import SandboxError

RUN_DIR = Path(os.environ.get("CORRAL_RUN_DIR", "/run/corral"))
# Host uids for sandboxes: far above any real account, below 2**31 for tools that use signed ids.
BASE_UID = 2_100_000_000
MAX_SLOTS = 40_000


def processes_with_uid(uids: Container[int]) -> list[int]:
    """Host pids whose real or effective uid is in ``uids`` (a sandbox's, or the range)."""
    found = []
    for proc in psutil.process_iter(["uids"]):
        ids = proc.info["uids"]
        if ids is not None and (ids.real in uids or ids.effective in uids):
            found.append(proc.pid)
    return found


def process_start_time(pid: int) -> int | None:
    """Kernel start time of a pid (clock ticks), to tell a live owner from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


@dataclass(slots=True)
class SandboxRecord:
    sandbox_id: str
    owner_pid: int
    owner_start: int
    slot: int
    cgroup: str
    created: float

    @property
    def uid(self) -> int:
        return BASE_UID + self.slot

    def owner_alive(self) -> bool:
        return process_start_time(self.owner_pid) == self.owner_start


class StateDir:
    def __init__(self, root: Path = RUN_DIR) -> None:
        self.root = root
        self.sandboxes = root / "sandboxes"
        self.uids = root / "uids"
        for d in (self.sandboxes, self.uids):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)

    def claim_slot(self, sandbox_id: str, hint: int = 0) -> int:
        """Reserve a free uid slot atomically (O_EXCL), starting the scan at ``hint``."""
        for i in range(MAX_SLOTS):
            slot = (hint + i) % MAX_SLOTS
            try:
                fd = os.open(self.uids / str(slot), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(sandbox_id)
            return slot
        raise SandboxError(f"all {MAX_SLOTS} sandbox uid slots are in use")

    def release_slot(self, slot: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.uids / str(slot)).unlink()

    def slot_owner(self, slot: int) -> str | None:
        try:
            return (self.uids / str(slot)).read_text()
        except OSError:
            return None

    def slots(self) -> list[int]:
        return [int(p.name) for p in self.uids.iterdir() if p.name.isdigit()]

    def write(self, record: SandboxRecord) -> None:
        path = self.sandboxes / f"{record.sandbox_id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record)))
        tmp.replace(path)

    def remove(self, sandbox_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.sandboxes / f"{sandbox_id}.json").unlink()

    def has_record(self, sandbox_id: str) -> bool:
        return (self.sandboxes / f"{sandbox_id}.json").exists()

    def records(self) -> list[SandboxRecord]:
        out = []
        for path in self.sandboxes.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, TypeError):
                out.append(SandboxRecord(**json.loads(path.read_text())))
        return out
