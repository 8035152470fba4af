"""The thread that turns kernel process events into table updates and notices.

It is a thread, not an asyncio reader, so that /proc/PID/cmdline is read the
moment an exec is reported even while the event loop is busy: a process that
lives 5 ms is gone before a loop tick that runs detectors comes round.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable

from corral.monitor.proc_connector import (
    DEFAULT_RCVBUF,
    ConnectorOverflow,
    ExecEvent,
    ExitEvent,
    ForkEvent,
    ProcConnector,
    UidEvent,
)
from corral.monitor.process_table import LostNotice, Notice, ProcessTable

# Notices handed over at once; a long burst still reaches the detectors while it lasts.
_BATCH = 64


class ProcessWatcher:
    """Reads the connector in a daemon thread and delivers notices in batches."""

    def __init__(
        self,
        table: ProcessTable,
        deliver: Callable[[list[Notice]], None],
        rcvbuf: int = DEFAULT_RCVBUF,
        nice: int = 0,
    ) -> None:
        self._table = table
        self._deliver = deliver
        self._connector = ProcConnector(rcvbuf)
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="corral-proc-events", daemon=True)
        self.events_seen = 0
        self.overflows = 0
        self._nice = nice
        self.priority_raised = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        self._connector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _run(self) -> None:
        if self._nice:
            # In a burst the reader competes with hundreds of runnable processes
            # for the CPU; at normal priority it falls ~10 ms behind and a
            # sub-millisecond process is gone before its cmdline is read.
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
                self.priority_raised = True
            except PermissionError:
                pass  # unprivileged: still correct, only slower to read short-lived processes
        poller = select.poll()
        poller.register(self._connector.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._wake_r in ready:
                return
            self._drain()

    def _drain(self) -> None:
        # Each datagram is handled as soon as it is read: during a burst, the
        # exec at the back of the queue belongs to a process that may already
        # be gone, so no time is spent reading ahead.
        table = self._table
        notices: list[Notice] = []
        while True:
            try:
                events = self._connector.read()
            except ConnectorOverflow:
                self.overflows += 1
                resynced = table.resync()
                notices.append(LostNotice(1, len(resynced)))
                notices.extend(resynced)
                continue
            if events is None:
                break
            for ev in events:
                self.events_seen += 1
                if isinstance(ev, ExecEvent):
                    notice = table.on_exec(ev)
                    if notice is not None:
                        notices.append(notice)
                elif isinstance(ev, ForkEvent):
                    table.on_fork(ev)
                elif isinstance(ev, ExitEvent):
                    exit_notice = table.on_exit(ev)
                    if exit_notice is not None:
                        notices.append(exit_notice)
                elif isinstance(ev, UidEvent):
                    table.on_uid(ev)
            if len(notices) >= _BATCH:
                self._deliver(notices)
                notices = []
        if notices:
            self._deliver(notices)
