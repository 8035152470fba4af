"""The monitor: watches every process of every watched sandbox and answers what it finds.

    kernel proc events --thread--> ProcessTable --notices--> Monitor (asyncio)
                                                               |  guard rules, signatures,
    sandbox EXEC_START/END, gateway NET_SIGNAL --emit()------> |  persistence, CPU, GPU
    inotify on watch_paths ----------------------------------> |
                                                               +-> Responder (kill/freeze/end)
                                                               +-> sink (PROC_*, ALERT, RESPONSE)
                                                               +-> ViolationStore (agent feedback)

Responses never wait; events about a process whose step is not known yet are
held for ``step_grace`` so they name the step the sandbox reports a moment later.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from corral.errors import CorralError, SandboxError
from corral.events import Event, EventKind, EventSink
from corral.monitor import procfs
from corral.monitor.config import MonitorConfig
from corral.monitor.detectors import (
    CpuSaturation,
    ExpectedWorkload,
    gpu_findings,
    guard_failure,
    guard_findings,
    net_signal_finding,
)
from corral.monitor.findings import SEVERITY_ORDER, Finding, Severity
from corral.monitor.gpu import GpuProvider, default_gpu_provider
from corral.monitor.handle import SandboxHandle
from corral.monitor.persistence import PersistenceWatcher, exec_findings
from corral.monitor.process_table import (
    ExecNotice,
    ExitNotice,
    LostNotice,
    Notice,
    ProcessRecord,
    ProcessTable,
)
from corral.monitor.process_watcher import ProcessWatcher
from corral.monitor.responder import ACTION_ORDER, Responder
from corral.monitor.signatures import MinerSignatures, sha256_file
from corral.monitor.violations import Violation, ViolationStore
from corral.monitor.watched import WatchedSandbox
from corral.policy import Action

ArgvChecker = Callable[[list[str]], Any]
"""The guard's engine: ``check(argv)`` gives an object with ``.verdict`` and ``.findings``."""

# Errors an injected guard engine may raise on odd input; anything else is a bug to surface.
_GUARD_ERRORS = (CorralError, ValueError, TypeError, LookupError, AttributeError, RecursionError)


_KEEP_CLOSED = 256


class Monitor:
    """Watches sandboxes; an :class:`EventSink` for the sandbox's and gateway's events.

    Use as ``async with Monitor(sink, check_argv=engine.check) as monitor:``
    then ``await monitor.watch(handle)`` for each sandbox.
    """

    def __init__(
        self,
        sink: EventSink,
        *,
        check_argv: ArgvChecker | None = None,
        config: MonitorConfig | None = None,
        gpu: GpuProvider | None = None,
        signatures: MinerSignatures | None = None,
    ) -> None:
        self.config = config or MonitorConfig()
        self._sink = sink
        self._check_argv = check_argv
        self._gpu = gpu
        self._signatures = signatures or MinerSignatures.builtin()
        self._table = ProcessTable(self.config.recent_exits)
        self._responder = Responder(self._table, self.config.kill_scope)
        self._cpu = CpuSaturation(self.config.cpu_saturation, self.config.cpu_saturation_seconds)
        self._sandboxes: dict[str, WatchedSandbox] = {}
        # Violations of sandboxes that closed, kept (bounded) so a result that raced the
        # close (e.g. an episode ended by a response) can still report what was caught.
        self._closed: OrderedDict[str, ViolationStore] = OrderedDict()
        self._held: dict[int, list[Callable[[], None]]] = {}
        self._hash_cache: dict[tuple[int, int, int, int], str | None] = {}
        self._hash_slots = asyncio.Semaphore(2)
        self._alert_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._watcher: ProcessWatcher | None = None
        self._persistence: PersistenceWatcher | None = None
        self.stats = {"execs": 0, "exits": 0, "alerts": 0, "responses": 0, "lost": 0}

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to process events. Raises SandboxUnavailable if the host cannot."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        if self._gpu is None:
            self._gpu = default_gpu_provider()
        loop = self._loop
        self._watcher = ProcessWatcher(
            self._table,
            lambda batch: loop.call_soon_threadsafe(self._on_notices, batch),
            self.config.rcvbuf_bytes,
            self.config.reader_nice,
        )
        self._watcher.start()
        self._persistence = PersistenceWatcher(self._on_persistence_write)
        loop.add_reader(self._persistence.fd, self._persistence.on_readable)
        self._spawn(self._sample_forever())
        if self._gpu is not None:
            self._spawn(self._gpu_forever())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.stop)
            self._watcher = None
        if self._persistence is not None and self._loop is not None:
            self._loop.remove_reader(self._persistence.fd)
            self._persistence.close()
            self._persistence = None
        if self._gpu is not None:
            self._gpu.close()
        for key in list(self._held):
            self._flush(key)

    async def __aenter__(self) -> Monitor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- sandboxes ---------------------------------------------------------------

    async def watch(self, handle: SandboxHandle, *, expected_workload: Iterable[str] = ()) -> None:
        """Start watching a sandbox; ``expected_workload``: names (globs) allowed to be busy."""
        if handle.sandbox_id in self._sandboxes:
            raise SandboxError(f"sandbox {handle.sandbox_id} is already watched")
        sandbox = WatchedSandbox(
            handle=handle,
            expected=ExpectedWorkload(tuple(expected_workload)),
            violations=ViolationStore(self.config.violations_per_sandbox),
        )
        self._sandboxes[handle.sandbox_id] = sandbox
        adopted = await asyncio.to_thread(self._table.watch_uid, handle.uid, handle.sandbox_id)
        # Processes that existed before the watch are checked as if they had just exec'd.
        now = time.monotonic_ns()
        for record in adopted:
            snap = procfs.snapshot(record.pid)
            record.argv, record.exe = snap.argv, snap.exe
            record.exec_ns = now
            self._on_exec(ExecNotice(record, now, snap.argv, snap.exe, record.comm))
        paths = getattr(handle, "watch_paths", None)
        if paths and self._persistence is not None:
            self._persistence.watch(handle.sandbox_id, list(paths))

    async def unwatch(self, sandbox_id: str) -> None:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None:
            return
        for record in self._table.all_records(sandbox_id):
            self._flush(record.key)
        del self._sandboxes[sandbox_id]
        self._closed[sandbox_id] = sandbox.violations
        while len(self._closed) > _KEEP_CLOSED:
            self._closed.popitem(last=False)
        self._table.unwatch_uid(sandbox.handle.uid, sandbox_id)
        if self._persistence is not None:
            self._persistence.unwatch(sandbox_id)

    def violations_since(
        self, sandbox_id: str, cursor: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        """Violations after ``cursor`` as dicts, and the next cursor. Unknown sandbox: none."""
        sandbox = self._sandboxes.get(sandbox_id)
        store = sandbox.violations if sandbox is not None else self._closed.get(sandbox_id)
        if store is None:
            return [], cursor
        return store.since(cursor)

    def processes(self, sandbox_id: str) -> list[dict[str, Any]]:
        """Every process seen in the sandbox (live and recently exited), oldest first."""
        return [_describe(r) for r in self._table.all_records(sandbox_id)]

    # --- EventSink: what the sandbox and gateway tell us ---------------------------------

    def emit(self, event: Event) -> None:
        """Takes EXEC_START, EXEC_END, NET_SIGNAL, SANDBOX_CLOSED; ignores the rest. Thread-safe.

        Events before :meth:`start` or for unwatched sandboxes are dropped: there
        is nothing yet to attribute them to.
        """
        if self._loop is None:
            return
        if threading.get_ident() != self._loop_thread:
            self._loop.call_soon_threadsafe(self._on_event, event)
        else:
            self._on_event(event)

    def _on_event(self, event: Event) -> None:
        sandbox = self._sandboxes.get(event.sandbox_id)
        if sandbox is None:
            return
        if event.kind == EventKind.EXEC_START and event.step is not None and event.pid:
            sandbox.running_steps[event.step] = event.pid
            changed = self._table.assign_step(event.sandbox_id, event.pid, event.step)
            for record in sorted(changed, key=lambda r: r.key):
                self._flush(record.key)
        elif event.kind == EventKind.EXEC_END and event.step is not None:
            sandbox.running_steps.pop(event.step, None)
        elif event.kind == EventKind.NET_SIGNAL:
            self._on_net_signal(sandbox, event)
        elif event.kind == EventKind.SANDBOX_CLOSED:
            self._spawn(self.unwatch(event.sandbox_id))

    # --- process events ------------------------------------------------------------------

    def _on_notices(self, batch: list[Notice]) -> None:
        for notice in batch:
            if isinstance(notice, ExecNotice):
                self._on_exec(notice)
            elif isinstance(notice, ExitNotice):
                self._on_exit(notice)
            elif isinstance(notice, LostNotice):
                self._on_lost(notice)

    def _on_exec(self, notice: ExecNotice) -> None:
        record = notice.record
        sandbox = self._sandboxes.get(record.sandbox_id)
        if sandbox is None:
            return
        self.stats["execs"] += 1
        argv, exe = notice.argv, notice.exe
        data = {
            "argv": argv,
            "cmdline_available": argv is not None,
            "exe": exe,
            "comm": notice.comm,
            "uid": record.uid,
            "ppid": record.ppid,
            "ancestors": record.ancestry(),
            "lineage": record.lineage,
        }
        findings: list[Finding] = []
        policy = sandbox.handle.policy
        if argv and self._check_argv is not None and policy.guard.enabled:
            try:
                result = self._check_argv(argv)
            except _GUARD_ERRORS as exc:
                findings += guard_failure(policy.guard, argv, exc)
            else:
                data["guard_verdict"] = str(getattr(result, "verdict", "?"))
                findings += guard_findings(result)
        findings += self._signatures.match_exec(argv, exe)
        findings += exec_findings(argv)
        self._publish(record, lambda: self._event(EventKind.PROC_EXEC, record, data, notice.ts_ns))
        if findings:
            self._raise(sandbox, record, findings, notice.ts_ns, argv)
        if self._signatures.hashes and exe is not None:
            self._spawn(self._check_hash(sandbox, record, notice.ts_ns, argv))

    def _on_exit(self, notice: ExitNotice) -> None:
        record = notice.record
        if record.sandbox_id not in self._sandboxes:
            return
        self.stats["exits"] += 1
        status = notice.status
        started = record.started_ns
        data = {
            "argv": record.argv,
            "comm": record.comm,
            "uid": record.uid,
            "duration_ms": None if started is None else round((notice.ts_ns - started) / 1e6, 3),
            "exit_code": None if status is None or status & 0x7F else status >> 8,
            "signal": None if status is None or not status & 0x7F else status & 0x7F,
            "exit_seen": status is not None,
        }
        self._publish(record, lambda: self._event(EventKind.PROC_EXIT, record, data, notice.ts_ns))

    def _on_lost(self, notice: LostNotice) -> None:
        # Lost kernel events are a blind spot for every sandbox, so each is told.
        self.stats["lost"] += notice.overflows
        for sandbox in self._sandboxes.values():
            self._sink.emit(
                Event(
                    kind=EventKind.ALERT,
                    sandbox_id=sandbox.sandbox_id,
                    episode_id=sandbox.handle.episode_id,
                    data={
                        "detector": "monitor",
                        "rule_id": "monitor.events_lost",
                        "category": "monitor",
                        "severity": str(Severity.MEDIUM),
                        "attack": "",
                        "explanation": (
                            f"the kernel dropped process events {notice.overflows} time(s); "
                            f"resynchronised from /proc ({notice.resynced} changes found)"
                        ),
                        "overflows": notice.overflows,
                    },
                )
            )

    async def _check_hash(
        self, sandbox: WatchedSandbox, record: ProcessRecord, ts_ns: int, argv: list[str] | None
    ) -> None:
        path = f"/proc/{record.pid}/exe"
        try:
            st = Path(path).stat()
        except OSError:
            return
        # ctime too: the workload can rewrite a binary in place and put its mtime back, but
        # it cannot set ctime.
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key not in self._hash_cache:
            async with self._hash_slots:
                digest = await asyncio.to_thread(sha256_file, path, self.config.hash_max_bytes)
            if len(self._hash_cache) > 10_000:
                self._hash_cache.clear()
            self._hash_cache[key] = digest
        digest = self._hash_cache[key]
        finding = None if digest is None else self._signatures.match_hash(digest)
        if finding is not None and record.sandbox_id in self._sandboxes:
            self._raise(sandbox, record, [finding], ts_ns, argv)

    # --- periodic samplers -----------------------------------------------------------------

    async def _sample_forever(self) -> None:
        interval = self.config.sample_interval
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for record in self._table.live():
                sandbox = self._sandboxes.get(record.sandbox_id)
                if sandbox is None or not _sample(record, now):
                    continue
                finding = self._cpu.check(record, now, sandbox.expected)
                if finding is not None:
                    self._raise(sandbox, record, [finding], record.program_start_ns, record.argv)

    async def _gpu_forever(self) -> None:
        provider = self._gpu
        if provider is None:
            return
        while True:
            await asyncio.sleep(self.config.gpu_interval)
            self._check_gpu(await asyncio.to_thread(provider.sample))

    def _check_gpu(self, samples: Iterable[Any]) -> None:
        for s in samples:
            record = self._table.adopt_if_watched(s.pid, "gpu")
            sandbox = self._sandboxes.get(record.sandbox_id) if record else None
            if record is None or sandbox is None:
                continue
            gpu = sandbox.handle.policy.gpu
            key = (record.key, s.device)
            if s.sm_util is not None and s.sm_util > gpu.utilization_budget:
                sandbox.gpu_over[key] = over = sandbox.gpu_over.get(key, 0) + 1
            else:
                sandbox.gpu_over.pop(key, None)
                over = 0
            sustained = over >= self.config.gpu_sustain_samples
            findings = gpu_findings(s, gpu, over if sustained else 0)
            if findings:
                self._raise(sandbox, record, findings, record.program_start_ns, record.argv)

    # --- other signals ----------------------------------------------------------------------

    def _on_net_signal(self, sandbox: WatchedSandbox, event: Event) -> None:
        record = self._table.get(event.pid) if event.pid else None
        if record is None and "src_port" in event.data:
            record = self._owner_of_port(sandbox, int(event.data["src_port"]))
        step = record.step if record is not None else event.step
        if step is None:
            step = sandbox.current_step()
        # Latency is measured from when the gateway saw it.
        started = time.monotonic_ns() - int(max(0.0, time.time() - event.time) * 1e9)
        finding = net_signal_finding(event.data)
        argv = record.argv if record else None
        self._raise(sandbox, record, [finding], started, argv, step, since="signal")

    def _owner_of_port(self, sandbox: WatchedSandbox, port: int) -> ProcessRecord | None:
        """The sandbox process holding a socket on local ``port``, found through /proc."""
        live = sorted(self._table.live(sandbox.sandbox_id), key=lambda r: -r.key)
        inodes: set[int] = set()
        namespaces: set[str] = set()
        for record in live:
            # /proc/PID/net/* is the table of that process's network namespace; a
            # sandbox's launcher may still be in the host's, its workload is not.
            ns = procfs.read_netns(record.pid)
            if ns is None or ns in namespaces:
                continue
            namespaces.add(ns)
            inodes |= procfs.socket_inode_for_port(record.pid, port)
        if not inodes:
            return None
        for record in live:
            if procfs.socket_inodes(record.pid) & inodes:
                return record
        return None

    def _on_persistence_write(self, sandbox_id: str, finding: Finding) -> None:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is not None:
            step = sandbox.current_step()
            self._raise(sandbox, None, [finding], time.monotonic_ns(), None, step, since="write")

    # --- alerts and responses -------------------------------------------------------------

    def _raise(
        self,
        sandbox: WatchedSandbox,
        record: ProcessRecord | None,
        findings: list[Finding],
        started_ns: int,
        argv: list[str] | None,
        step: int | None = None,
        since: str = "exec",
    ) -> None:
        """Alert on ``findings`` and respond. ``started_ns``/``since``: what latency counts from."""
        fresh = []
        for finding in findings:
            if record is not None:
                if finding.rule_id in record.fired:
                    continue  # one alert per rule per process; a sustained signal is not news
                record.fired.add(finding.rule_id)
            fresh.append(finding)
        if not fresh:
            return
        policy = sandbox.handle.policy.response
        action = max(
            (Action(getattr(policy, str(f.severity))) for f in fresh),
            key=ACTION_ORDER.__getitem__,
        )
        violations = []
        for finding in fresh:
            alert_id = f"{sandbox.sandbox_id}-a{next(self._alert_ids)}"
            violation = Violation(
                alert_id=alert_id,
                time=time.time(),
                detector=finding.detector,
                rule_id=finding.rule_id,
                category=finding.category,
                severity=str(finding.severity),
                attack=finding.attack,
                explanation=finding.explanation,
                pid=record.pid if record else None,
                step=step,
                argv=argv,
            )
            violations.append(violation)
            sandbox.alerts += 1
            self.stats["alerts"] += 1
            self._publish(record, self._alert_publisher(sandbox, record, finding, violation))
        worst = max(fresh, key=lambda f: SEVERITY_ORDER[f.severity])
        self._spawn(
            self._respond(sandbox, record, step, action, (started_ns, since), violations, worst)
        )

    def _alert_publisher(
        self,
        sandbox: WatchedSandbox,
        record: ProcessRecord | None,
        finding: Finding,
        violation: Violation,
    ) -> Callable[[], Event]:
        def build() -> Event:
            if record is not None:
                violation.step = record.step
            sandbox.violations.add(violation)
            data = {
                "alert_id": violation.alert_id,
                "detector": finding.detector,
                "rule_id": finding.rule_id,
                "category": finding.category,
                "severity": str(finding.severity),
                "attack": finding.attack,
                "explanation": finding.explanation,
                "pid": violation.pid,
                "step": violation.step,
                "argv": violation.argv,
                **({"evidence": finding.evidence} if finding.evidence else {}),
            }
            if record is not None:
                data["ancestors"] = record.ancestry()
            return Event(
                kind=EventKind.ALERT,
                sandbox_id=sandbox.sandbox_id,
                episode_id=sandbox.handle.episode_id,
                step=violation.step,
                pid=violation.pid,
                data=data,
                time=violation.time,
            )

        return build

    async def _respond(
        self,
        sandbox: WatchedSandbox,
        record: ProcessRecord | None,
        step: int | None,
        action: Action,
        started: tuple[int, str],
        violations: list[Violation],
        worst: Finding,
    ) -> None:
        if sandbox.ended:
            for v in violations:
                v.action = "already_ended"
            return
        if record is not None:
            step = record.step
        reason = f"{worst.rule_id}: {worst.explanation}"
        started_ns, since = started
        outcome = await self._responder.respond(sandbox, action, record, step, started_ns, reason)
        for v in violations:
            v.action = str(outcome.action)
        self.stats["responses"] += 1
        data = {
            "action": str(outcome.action),
            "ok": outcome.ok,
            "alert_ids": [v.alert_id for v in violations],
            "rule_id": worst.rule_id,
            "severity": str(worst.severity),
            "latency_ms": outcome.latency_ms,
            "decided_ms": outcome.decided_ms,
            "latency_from": since,
            "targets": outcome.targets,
            **({"error": outcome.error} if outcome.error else {}),
            **({"escalated_from": str(outcome.escalated_from)} if outcome.escalated_from else {}),
        }
        when = time.time()

        def build() -> Event:
            return Event(
                kind=EventKind.RESPONSE,
                sandbox_id=sandbox.sandbox_id,
                episode_id=sandbox.handle.episode_id,
                step=record.step if record is not None else step,
                pid=record.pid if record is not None else None,
                data=data,
                time=when,
            )

        self._publish(record, build)

    # --- emitting, with the step grace ---------------------------------------------------

    def _publish(self, record: ProcessRecord | None, build: Callable[[], Event]) -> None:
        """Emit now if the step is known (or can't be); else hold until it is or grace ends."""
        if record is None or record.step is not None or self.config.step_grace == 0:
            self._sink.emit(build())
            return
        held = self._held.get(record.key)
        if held is None:
            wait = self.config.step_grace - (time.monotonic_ns() - record.program_start_ns) / 1e9
            if wait <= 0:
                self._sink.emit(build())
                return
            held = self._held[record.key] = []
            if self._loop is not None:
                self._loop.call_later(wait, self._flush, record.key)
        held.append(lambda: self._sink.emit(build()))

    def _flush(self, key: int) -> None:
        for emit in self._held.pop(key, ()):
            emit()

    def _event(
        self, kind: EventKind, record: ProcessRecord, data: dict[str, Any], ts_ns: int
    ) -> Event:
        sandbox = self._sandboxes.get(record.sandbox_id)
        wall = time.time() - (time.monotonic_ns() - ts_ns) / 1e9
        return Event(
            kind=kind,
            sandbox_id=record.sandbox_id,
            episode_id=sandbox.handle.episode_id if sandbox else None,
            step=record.step,
            pid=record.pid,
            data=data,
            time=wall,
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _sample(record: ProcessRecord, now: float) -> bool:
    """Update CPU use and RSS from /proc; False if the process is gone or not yet measurable."""
    stat = procfs.read_stat(record.pid)
    if stat is None or (record.start_ticks is not None and stat.start_ticks != record.start_ticks):
        return False
    previous, previous_at = record.cpu_ticks, record.cpu_at
    record.cpu_ticks, record.cpu_at, record.rss_bytes = stat.cpu_ticks, now, stat.rss_bytes
    if previous is None or now <= previous_at:
        return False
    record.cpu_fraction = (stat.cpu_ticks - previous) / procfs.CLOCK_TICKS / (now - previous_at)
    return True


def _describe(record: ProcessRecord) -> dict[str, Any]:
    return {
        "pid": record.pid,
        "step": record.step,
        "argv": record.argv,
        "exe": record.exe,
        "comm": record.comm,
        "ppid": record.ppid,
        "ancestors": record.ancestry(),
        "alive": record.alive,
        "lineage": record.lineage,
        "cpu_cores": round(record.cpu_fraction, 3),
        "rss_bytes": record.rss_bytes,
    }
