"""What the monitor needs from a sandbox: who its processes are and how to stop them."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from corral.policy import Policy


@runtime_checkable
class SandboxHandle(Protocol):
    """Implemented by the sandbox. All three actions must be safe to call more than once.

    Optional attributes the monitor reads with ``getattr``:

    * ``watch_paths: list[str]`` host paths of the sandbox's home/workspace
      directories, watched for persistence writes.
    """

    sandbox_id: str
    episode_id: str | None
    uid: int  # host uid of all its processes
    policy: Policy

    async def kill_tree(self, pid: int) -> None:
        """Kill a process and its descendants (SIGKILL); a pid already gone is not an error."""
        ...

    async def freeze(self) -> None:
        """Stop every process of the sandbox in place (cgroup freezer), for inspection."""
        ...

    async def end_episode(self, reason: str) -> None:
        """Kill everything and close the sandbox; later use raises SandboxClosed."""
        ...
