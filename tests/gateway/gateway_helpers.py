"""Helpers for gateway tests: a client namespace standing in for a sandbox.

A client program runs in an attachment's namespace as an unprivileged uid
(``ip netns exec`` + ``setpriv``): the same kernel mechanism the sandbox uses.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import pytest

from corral.events import Event, EventKind, MemorySink
from corral.gateway import Attachment
from corral.policy import NetworkPolicy

#: Unprivileged uid with no passwd entry, as inside a sandbox.
SANDBOX_UID = 2_099_000_099  # outside the sandbox uid slots (2_100_000_000 + 40_000)
#: ``nobody``: for clients (ssh) that refuse to run without a passwd entry.
NOBODY_UID = 65534
CLIENT_PYTHON = "/usr/bin/python3"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


@dataclass
class Result:
    rc: int
    out: str
    err: str


@dataclass
class Client:
    """A stand-in sandbox: an attachment plus a way to run programs inside it."""

    attachment: Attachment
    sink: MemorySink
    netns_name: str

    async def run(self, *cmd: str, uid: int = SANDBOX_UID, timeout: float = 60,
                  env: dict[str, str] | None = None) -> Result:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", self.netns_name,
            "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            "env", "-i", "PATH=/usr/bin:/bin", "LANG=C.UTF-8",
            *(f"{k}={v}" for k, v in (env or {}).items()),
            *cmd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        return Result(proc.returncode or 0, out.decode(errors="replace"),
                      err.decode(errors="replace"))

    async def python(self, code: str, *args: str, **kwargs: object) -> Result:
        return await self.run(CLIENT_PYTHON, "-c", code, *args, **kwargs)  # type: ignore[arg-type]

    def events(self, kind: EventKind, **match: object) -> list[Event]:
        return [
            e for e in self.sink.of_kind(kind)
            if all(e.data.get(k) == v for k, v in match.items())
        ]

    async def settle(self, seconds: float = 0.3) -> None:
        """Lets the gateway finish reporting flows the client already gave up on."""
        await asyncio.sleep(seconds)




def gateway_policy(*rules: dict[str, object], **thresholds: object) -> NetworkPolicy:
    return NetworkPolicy.model_validate(
        {"mode": "gateway", "allow": list(rules), "thresholds": thresholds}
    )
