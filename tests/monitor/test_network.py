"""Gateway network signals become alerts tied to the process and step that caused them."""

from __future__ import annotations

import socket

from corral.events import Event, EventKind
from corral.monitor import procfs
from corral.policy import Action
from tests.monitor.helpers import PYTHON, Harness, alive, respond_all, wait_for

# Binds a loopback port and waits; it never connects anywhere.
HOLD_PORT = (
    "import socket, sys, time\n"
    "s = socket.socket()\n"
    "s.bind(('127.0.0.1', int(sys.argv[1])))\n"
    "s.listen()\n"
    "time.sleep(20)\n"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _signal(sb: object, **data: object) -> Event:
    return Event(EventKind.NET_SIGNAL, sb.sandbox_id, sb.episode_id, data=dict(data))  # type: ignore[attr-defined]


async def test_signal_is_traced_to_the_socket_owner_by_port(harness: Harness) -> None:
    sb = await harness.sandbox(respond_all(Action.KILL))
    port = _free_port()
    await harness.step(sb, 1, ["/bin/sleep", "20"])
    pid = await harness.step(sb, 2, [PYTHON, "-c", HOLD_PORT, str(port)])
    await wait_for(lambda: procfs.socket_inode_for_port(pid, port))
    harness.monitor.emit(
        _signal(sb, signal="mining_stratum", src_port=port, dst="pool.sim.test", dst_port=3333)
    )
    await wait_for(lambda: harness.alerts(sb, "net.mining_stratum"))
    alert = harness.alerts(sb, "net.mining_stratum")[0]
    assert alert.pid == pid
    assert alert.step == 2
    assert alert.data["attack"] == "T1496"
    assert "pool.sim.test" in alert.data["explanation"]
    await wait_for(lambda: not alive(pid))


async def test_ssh_signal_with_a_pid_is_a_tunnelling_alert(harness: Harness) -> None:
    sb = await harness.sandbox()
    pid = await harness.step(sb, 7, ["/bin/sleep", "20"])
    await wait_for(lambda: harness.monitor.processes(sb.sandbox_id))
    event = Event(
        EventKind.NET_SIGNAL, sb.sandbox_id, sb.episode_id, pid=pid, data={"signal": "ssh_outbound"}
    )
    harness.monitor.emit(event)
    await wait_for(lambda: harness.alerts(sb, "net.ssh_outbound"))
    alert = harness.alerts(sb, "net.ssh_outbound")[0]
    assert (alert.pid, alert.step) == (pid, 7)
    assert alert.data["attack"] == "T1572"
    assert alert.data["severity"] == "high"


async def test_a_kill_with_nothing_to_aim_at_freezes_the_sandbox(harness: Harness) -> None:
    sb = await harness.sandbox(respond_all(Action.KILL))
    harness.monitor.emit(_signal(sb, signal="dns_tunnel"))
    await wait_for(lambda: harness.of(EventKind.RESPONSE, sb))
    response = harness.of(EventKind.RESPONSE, sb)[0]
    assert response.data["action"] == "freeze"
    assert response.data["escalated_from"] == "kill"
    assert response.data["latency_from"] == "signal"
    assert ("freeze", None) in sb.actions


async def test_unknown_signal_fails_closed_as_high(harness: Harness) -> None:
    sb = await harness.sandbox()
    harness.monitor.emit(_signal(sb, signal="something_new"))
    await wait_for(lambda: harness.alerts(sb))
    assert harness.alerts(sb)[0].data["severity"] == "high"
