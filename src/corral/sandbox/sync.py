"""Sandbox: the blocking face of AsyncSandbox. Every method forwards to the async core."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from corral.events import EventSink
from corral.policy import Policy
from corral.sandbox.cgroups import CgroupStats
from corral.sandbox.result import ExecResult
from corral.sandbox.runtime import AsyncSandbox, GatewayLike, OutputCallback

T = TypeVar("T")


class _LoopThread:
    """One event loop in a daemon thread, shared by every blocking Sandbox in the process."""

    _lock = threading.Lock()
    _instance: _LoopThread | None = None

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="corral-loop", daemon=True
        )
        self.thread.start()

    @classmethod
    def get(cls) -> _LoopThread:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            raise RuntimeError("blocking Sandbox called from its own event loop; use AsyncSandbox")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result()


class Sandbox:
    """A blocking sandbox for one episode. Use :meth:`create`; close it, or use ``with``."""

    def __init__(self, inner: AsyncSandbox, portal: _LoopThread) -> None:
        self._inner = inner
        self._portal = portal

    @classmethod
    def create(
        cls,
        policy: Policy | str | None = None,
        *,
        sink: EventSink | None = None,
        episode_id: str | None = None,
        gateway: GatewayLike | None = None,
    ) -> Sandbox:
        portal = _LoopThread.get()
        inner = portal.run(
            AsyncSandbox.create(policy, sink=sink, episode_id=episode_id, gateway=gateway)
        )
        return cls(inner, portal)

    @property
    def id(self) -> str:
        return self._inner.id

    @property
    def policy(self) -> Policy:
        return self._inner.policy

    @property
    def uid(self) -> int:
        return self._inner.uid

    @property
    def init_pid(self) -> int | None:
        return self._inner.init_pid

    @property
    def closed(self) -> bool:
        return self._inner.closed

    @property
    def closed_reason(self) -> str | None:
        return self._inner.closed_reason

    @property
    def async_sandbox(self) -> AsyncSandbox:
        return self._inner

    def exec(
        self,
        cmd: str | Sequence[str],
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | str | None = None,
        step: int | None = None,
        on_output: OutputCallback | None = None,
    ) -> ExecResult:
        return self._portal.run(
            self._inner.exec(
                cmd, timeout=timeout, env=env, cwd=cwd, stdin=stdin, step=step,
                on_output=on_output,
            )
        )

    def write_file(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        self._portal.run(self._inner.write_file(path, data, mode))

    def read_file(self, path: str) -> bytes:
        return self._portal.run(self._inner.read_file(path))

    def upload(self, src: str | Path, dest: str) -> None:
        self._portal.run(self._inner.upload(src, dest))

    def download(self, src: str, dest: str | Path) -> None:
        self._portal.run(self._inner.download(src, dest))

    def pids(self) -> list[int]:
        return self._inner.pids()

    def stats(self) -> CgroupStats:
        return self._inner.stats()

    def freeze(self) -> None:
        self._portal.run(self._inner.freeze())

    def thaw(self) -> None:
        self._portal.run(self._inner.thaw())

    def close(self) -> None:
        self._portal.run(self._inner.close())

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
