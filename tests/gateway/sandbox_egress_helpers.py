"""Helpers for the egress tests that run in real sandboxes behind a real gateway.

``Witness`` is the sandbox's event sink. Whenever an event names a pid, it reads what
/proc says about that pid at that very moment (name, ancestry, cgroup), so a test can
prove the pid the gateway reported is the sandbox process that opened the flow, not
merely some number. The gateway emits its verdicts while the flow's owner still holds
the socket, so the process is alive when the event is emitted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from corral.bench.simnet import SimNet
from corral.events import Event, EventKind, MemorySink
from corral.sandbox.result import ExecResult
from corral.sandbox.runtime import AsyncSandbox

#: Where the simnet CA is bound (read-only) inside every sandbox.
CA_IN_SANDBOX = "/opt/corral-test/simnet-ca.pem"
EPISODE = "episode-egress"
NET_KINDS = (EventKind.NET_CONNECT, EventKind.NET_DNS, EventKind.NET_SIGNAL)


@dataclass(frozen=True)
class ProcInfo:
    """A process as /proc showed it when an event named it."""

    comm: str
    ancestry: tuple[int, ...]  # the pid itself, its parent, grandparent... up to pid 1
    cgroup: str


def read_proc(pid: int) -> ProcInfo | None:
    """``None`` when the process is already gone, or exited and not yet reaped: the kernel
    moves an exiting task to the root cgroup, so a zombie no longer shows its sandbox."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    except (OSError, IndexError):
        return None
    if state in ("Z", "X"):
        return None
    chain = [pid]
    current = pid
    while current > 1 and len(chain) < 64:
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
        except OSError:
            break
        current = int(stat.rpartition(")")[2].split()[1])
        chain.append(current)
    return ProcInfo(comm, tuple(chain), cgroup)


class Witness:
    """A MemorySink that also records /proc facts about the pid each network event names,
    at the moment it is emitted."""

    def __init__(self) -> None:
        self.sink = MemorySink()
        # Keyed by id(event): the sink keeps every event alive, so ids stay unique.
        self._procs: dict[int, ProcInfo | None] = {}
        self.sink.subscribe(self._note)

    def _note(self, event: Event) -> None:
        if event.pid is not None and event.kind in NET_KINDS:
            self._procs[id(event)] = read_proc(event.pid)

    def proc(self, event: Event) -> ProcInfo | None:
        return self._procs.get(id(event))


@dataclass
class Box:
    """A real sandbox under test, with what it emitted."""

    sandbox: AsyncSandbox
    witness: Witness
    results: dict[int, ExecResult] = field(default_factory=dict)

    async def run(self, cmd: str | Sequence[str], *, step: int, timeout: float = 30,
                  stdin: str | None = None) -> ExecResult:
        result = await self.sandbox.exec(cmd, timeout=timeout, step=step, stdin=stdin)
        self.results[step] = result
        return result

    def events(self, kind: EventKind, *, step: int | None = None, **match: object) -> list[Event]:
        return [
            e for e in self.witness.sink.of_kind(kind)
            if (step is None or e.step == step)
            and all(e.data.get(k) == v for k, v in match.items())
        ]

    def net_events(self, step: int) -> list[Event]:
        return [e for e in self.witness.sink.events if e.kind in NET_KINDS and e.step == step]

    async def wait_for(self, what: Callable[[], list[Event]], *, count: int = 1,
                       timeout: float = 5.0) -> list[Event]:
        """Polls until ``what()`` gives at least ``count`` events (the gateway reports
        a flow a moment after the client gave up on it); returns them."""
        deadline = asyncio.get_running_loop().time() + timeout
        found = what()
        while len(found) < count and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            found = what()
        assert len(found) >= count, (count, found, self.witness.sink.events)
        return found

    def assert_attributed(self, events: list[Event], step: int) -> None:
        """Each event names this sandbox, the episode and the step that caused it; and no
        network event at all is labelled with a step that never ran."""
        assert events
        for e in events:
            assert e.sandbox_id == self.sandbox.id, e
            assert e.episode_id == EPISODE, e
            assert e.step == step, e
        for e in self.witness.sink.events:
            if e.kind in NET_KINDS:
                assert e.step in self.results, e

    async def settle(self, seconds: float = 0.2) -> None:
        """Leaves time for anything still in flight (a late report, a byte a wrongly
        relayed flow would deliver) before asserting that nothing happened."""
        await asyncio.sleep(seconds)

    def assert_pid(self, event: Event, step: int, comm: str, *, exact: bool = True) -> None:
        """The event's pid is the sandbox process ``comm`` that ran in ``step``: the very
        process exec started (``exact``), or one of its descendants."""
        assert event.pid is not None, event
        info = self.witness.proc(event)
        assert info is not None, f"pid {event.pid} was gone when {event} was emitted"
        assert f"/{self.sandbox.id}" in info.cgroup, (info, self.sandbox.id)
        assert info.comm == comm, (info, event)
        started = self.results[step].pid
        assert started is not None
        if exact:
            assert event.pid == started, (event, started)
        else:
            assert started in info.ancestry, (info, started)

    def assert_pid_if_found(self, event: Event, step: int, comm: str, *,
                            exact: bool = True) -> None:
        """For reports made after the client may already have exited (a DNS answer goes
        out before the report, a scanner's probe is closed at once): no pid is acceptable,
        a wrong one never. A process already gone can only be checked by identity with the
        one exec started (``exact``); a gone descendant can't be checked at all."""
        if event.pid is None:
            return
        if self.witness.proc(event) is not None:
            self.assert_pid(event, step, comm, exact=exact)
        elif exact:
            assert event.pid == self.results[step].pid, (event, self.results[step])


def counters(simnet: SimNet, host: str) -> dict[int, int]:
    """A copy of one simulated host's received bytes by port."""
    return dict(simnet.hosts[host].counter.by_port)


__all__ = ["CA_IN_SANDBOX", "EPISODE", "Box", "ProcInfo", "Witness", "counters", "read_proc"]
