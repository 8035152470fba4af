"""A non-blocking socket drained on the event loop, a bounded batch per wakeup."""

from __future__ import annotations

import asyncio
import socket


class SocketReader:
    """Subclasses implement :meth:`_drain`, reading at most a bounded batch per call so a
    flood cannot starve the loop."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._drain)

    def stop(self) -> None:
        if self._loop is not None and self._sock.fileno() != -1:
            self._loop.remove_reader(self._sock.fileno())
        self._loop = None

    def _drain(self) -> None:
        raise NotImplementedError
