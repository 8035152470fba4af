"""Benchmark: the egress gateway against a direct connection, measured in the same run.

    /opt/corral/venv/bin/python bench/gateway.py [--bulk-mb 200] [--rounds 3]

Prints one JSON object: connection setup latency (connect, send a line, read the echo)
p50/p95, bulk upload throughput, their ratios, attach time p50 with the namespace
pool warm and cold, and real sandbox create (+ first exec) with the gateway against
without network. Runs as root; everything it creates lives in network namespaces
with addresses from 198.51.100.0/24 and 203.0.113.0/24 only, and is removed at the end.

The same file is also the client and server helper (``--serve``, ``--client``), run by
the system Python inside namespaces; those modes use the standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ECHO_PORT = 5001
BULK_PORT = 5002
SYSTEM_PYTHON = "/usr/bin/python3"
SANDBOX_UID = 2_099_000_099  # outside the sandbox uid slots (2_100_000_000 + 40_000)
#: The direct baseline: a veth pair between two namespaces of their own.
DIRECT_CLIENT, DIRECT_SERVER = "203.0.113.201", "203.0.113.202"


# --- helper modes (standard library only) ------------------------------------------


def serve(ip: str) -> None:
    """Echo one line on ECHO_PORT; count everything on BULK_PORT and report the total."""

    def echo(conn: socket.socket) -> None:
        with conn:
            data = conn.recv(64)
            if data:
                conn.sendall(data)

    def bulk(conn: socket.socket) -> None:
        buf = bytearray(4 << 20)
        total = 0
        with conn:
            while n := conn.recv_into(buf):
                total += n
            conn.sendall(f"{total}\n".encode())

    def accept(port: int, handler: Any) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ip, port))
        sock.listen(512)
        listening.release()
        while True:
            conn, _ = sock.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    listening = threading.Semaphore(0)
    for port, handler in ((ECHO_PORT, echo), (BULK_PORT, bulk)):
        threading.Thread(target=accept, args=(port, handler), daemon=True).start()
    listening.acquire()
    listening.acquire()
    print("ready", flush=True)
    sys.stdin.read()  # runs until the benchmark closes our stdin


def client(ip: str, connections: int, bulk_mb: int) -> None:
    """Prints JSON: per-connection setup latencies, then one bulk upload's time."""
    latencies = []
    for _ in range(connections):
        start = time.perf_counter()
        with socket.create_connection((ip, ECHO_PORT), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(b"ping\n")
            if sock.recv(64) != b"ping\n":
                raise SystemExit("bad echo")
        latencies.append(time.perf_counter() - start)
    chunk = memoryview(bytearray(4 << 20))
    total = bulk_mb * (1 << 20)
    start = time.perf_counter()
    with socket.create_connection((ip, BULK_PORT), timeout=30) as sock:
        sent = 0
        while sent < total:
            n = min(len(chunk), total - sent)
            sock.sendall(chunk[:n])
            sent += n
        sock.shutdown(socket.SHUT_WR)
        reply = sock.makefile().readline()
    elapsed = time.perf_counter() - start
    if int(reply) != total:
        raise SystemExit(f"server got {reply!r}, sent {total}")
    print(json.dumps({"latencies": latencies, "bulk_seconds": elapsed, "bulk_bytes": total}))


# --- the benchmark --------------------------------------------------------------------


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)


async def _start_server(netns: str, ip: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", netns, SYSTEM_PYTHON, __file__, "--serve", ip,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    if proc.stdout is None:
        raise RuntimeError("bench server has no stdout")
    line = await asyncio.wait_for(proc.stdout.readline(), 10)
    if line.strip() != b"ready":
        raise RuntimeError("bench server did not start")
    return proc


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def _run_client(netns: str, ip: str, connections: int, bulk_mb: int) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", netns,
        "setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups",
        SYSTEM_PYTHON, __file__, "--client", ip, str(connections), str(bulk_mb),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 300)
    finally:
        await _stop(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"bench client failed: {err.decode()[-500:]}")
    return json.loads(out)


def _direct_pair(token: str) -> tuple[str, str, list[str]]:
    from pyroute2 import IPRoute

    from corral.gateway.netns import create_netns, run_on_thread

    made: list[str] = []
    client_ns = create_netns(f"crl-bd-{token}-c")
    made.append(client_ns)
    server_ns = create_netns(f"crl-bd-{token}-s")
    made.append(server_ns)

    def link() -> None:
        with IPRoute() as ipr:
            ipr.link("add", ifname="eth0", kind="veth",
                     peer={"ifname": "peer0", "net_ns_fd": server_ns})
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            eth = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=eth, address=DIRECT_CLIENT, prefixlen=30)
            ipr.link("set", index=eth, state="up")

    def peer() -> None:
        with IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            eth = ipr.link_lookup(ifname="peer0")[0]
            ipr.addr("add", index=eth, address=DIRECT_SERVER, prefixlen=30)
            ipr.link("set", index=eth, state="up")

    run_on_thread(link, netns=client_ns)
    run_on_thread(peer, netns=server_ns)
    return client_ns, server_ns, made


async def _attach_times(gateway_cls: Any, policy: Any, *, pool: int, rounds: int) -> list[float]:
    from corral.events import NullSink

    times = []
    async with gateway_cls(pool_size=pool, name_prefix="crl-ba") as gateway:
        for i in range(rounds):
            await gateway.fill_pool()
            start = time.perf_counter()
            attachment = await gateway.attach(f"bench-{i}", None, policy, NullSink(), lambda: None)
            times.append(time.perf_counter() - start)
            await attachment.close()
    return times


async def _sandbox_create_times(samples: int) -> dict[str, Any]:
    """Real sandbox create + first exec + close, network mode none against gateway (pool warm),
    interleaved so machine noise hits both alike."""
    from corral.gateway import Gateway
    from corral.policy import load_policy
    from corral.sandbox import AsyncSandbox

    without = load_policy("default")
    with_net = load_policy("networked")
    plain, gated = [], []
    async with Gateway(pool_size=4, name_prefix="crl-bs") as gateway:
        for policy in (without, with_net):  # warm-up: caches, supervisor binary, pool
            sb = await AsyncSandbox.create(policy, gateway=gateway)
            await sb.close()
        for _ in range(samples):
            for policy, out in ((without, plain), (with_net, gated)):
                await gateway.fill_pool()
                start = time.perf_counter()
                sb = await AsyncSandbox.create(policy, gateway=gateway)
                await sb.exec(["/bin/true"])
                out.append(time.perf_counter() - start)
                await sb.close()
    return {
        "samples": samples,
        "without_network_p50_ms": _ms(plain, 0.5),
        "with_gateway_p50_ms": _ms(gated, 0.5),
        "ratio_p50": round(statistics.median(gated) / statistics.median(plain), 2),
    }


async def bench(connections: int, bulk_mb: int, rounds: int, attach_rounds: int
                ) -> dict[str, Any]:
    from corral.bench.simnet import SimNet
    from corral.events import NullSink
    from corral.gateway import Gateway
    from corral.gateway.netns import remove_netns
    from corral.policy import NetworkPolicy

    token = secrets.token_hex(3)
    procs: list[asyncio.subprocess.Process] = []
    made: list[str] = []
    direct: list[dict[str, Any]] = []
    via: list[dict[str, Any]] = []
    try:
        client_ns, server_ns, made = await asyncio.to_thread(_direct_pair, token)
        procs.append(await _start_server(Path(server_ns).name, DIRECT_SERVER))
        async with SimNet(prefix="crlbn") as net:
            sink = net.hosts["sink"]
            procs.append(await _start_server(sink.netns_name, sink.ip))
            policy = NetworkPolicy.model_validate({"mode": "gateway", "allow": [
                {"cidr": f"{sink.ip}/32", "ports": [ECHO_PORT, BULK_PORT]}]})
            async with Gateway(resolver=net.resolver(), pool_size=1,
                               name_prefix="crl-bg") as gateway:
                attachment = await gateway.attach("bench", None, policy, NullSink(), lambda: None)
                try:
                    # Interleaved rounds, so load from anything else on the machine hits
                    # both sides alike; medians are reported.
                    for _ in range(rounds):
                        direct.append(await _run_client(Path(client_ns).name, DIRECT_SERVER,
                                                         connections, bulk_mb))
                        via.append(await _run_client(Path(attachment.netns_path).name,
                                                     sink.ip, connections, bulk_mb))
                finally:
                    await attachment.close()
        warm = await _attach_times(Gateway, policy, pool=2, rounds=attach_rounds)
        cold = await _attach_times(Gateway, policy, pool=0, rounds=attach_rounds)
        create = await _sandbox_create_times(attach_rounds)
    finally:
        for proc in procs:
            await _stop(proc)
        for path in made:
            remove_netns(path)

    def mbps(runs: list[dict[str, Any]]) -> float:
        return round(statistics.median(r["bulk_bytes"] / r["bulk_seconds"] / 1e6 for r in runs), 1)

    d_lat = [x for r in direct for x in r["latencies"]]
    g_lat = [x for r in via for x in r["latencies"]]
    results: dict[str, Any] = {
        "connection_setup_ms": {
            "what": "connect + one-line request + echo reply, per connection",
            "connections": len(d_lat),
            "direct": {"p50": _ms(d_lat, 0.5), "p95": _ms(d_lat, 0.95)},
            "gateway": {"p50": _ms(g_lat, 0.5), "p95": _ms(g_lat, 0.95)},
            "added_p50": round(_ms(g_lat, 0.5) - _ms(d_lat, 0.5), 3),
            "ratio_p50": round(statistics.median(g_lat) / statistics.median(d_lat), 2),
        },
        "bulk_upload_MBps": {
            "what": f"median of {rounds} uploads of {bulk_mb} MiB each",
            "direct": mbps(direct),
            "gateway": mbps(via),
            "ratio": round(mbps(via) / mbps(direct), 3),
        },
        "attach_ms": {
            "rounds": attach_rounds,
            "warm_p50": _ms(warm, 0.5),
            "cold_p50": _ms(cold, 0.5),
        },
        "sandbox_create_plus_first_exec": create,
    }
    results["targets"] = {
        "bulk_ratio_at_least": 0.5,
        "added_setup_p50_ms_at_most": 2.0,
        "create_with_network_ratio_at_most": 2.0,
        "met": results["bulk_upload_MBps"]["ratio"] >= 0.5
        and results["connection_setup_ms"]["added_p50"] <= 2.0
        and create["ratio_p50"] <= 2.0,
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", metavar="IP")
    parser.add_argument("--client", nargs=3, metavar=("IP", "CONNECTIONS", "BULK_MB"))
    parser.add_argument("--bulk-mb", type=int, default=200)
    parser.add_argument("--connections", type=int, default=100, help="per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--attach-rounds", type=int, default=30)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
    elif args.client:
        ip, connections, bulk_mb = args.client
        client(ip, int(connections), int(bulk_mb))
    else:
        report = asyncio.run(
            bench(args.connections, args.bulk_mb, args.rounds, args.attach_rounds)
        )
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
