"""The escape suite: each test is one attempt to get out of a real sandbox, and must fail.

Every test asserts on what the attempt would have achieved (a secret read, a file
written, a process signalled, a packet received), not only on an error message.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyseccomp
import pytest

from corral.events import EventKind, MemorySink
from corral.sandbox import KillReason, Sandbox

from .conftest import make_policy, processes_of_uid

SECRET = "corral-escape-canary-5f1c"


def nr(name: str) -> int:
    return pyseccomp.resolve_syscall(pyseccomp.system_arch(), name)


def errno_of_syscall(sb: Sandbox, name: str, *args: int) -> str:
    """Run a raw syscall inside the sandbox and return 'ok' or the errno name."""
    code = (
        "import ctypes, errno\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"r = libc.syscall({nr(name)}, {', '.join(str(a) for a in args) or ''})\n"
        "print('ok' if r >= 0 else errno.errorcode[ctypes.get_errno()])\n"
    )
    r = sb.exec(["python3", "-c", code])
    assert r.exit_code == 0, r.stderr
    return r.stdout.strip()


@pytest.fixture
def host_secret_files() -> Iterator[list[Path]]:
    """Plant canaries where host secrets live, to prove the sandbox cannot see them."""
    paths = [
        Path("/root/.ssh/corral_canary_id_ed25519"),
        Path("/root/.aws/corral_canary_credentials"),
        Path("/home/corral-canary-user/.ssh/id_rsa"),
        Path("/etc/corral-canary-secret"),
    ]
    created_dirs = []
    for p in paths:
        for parent in reversed(p.parents):
            if not parent.exists():
                parent.mkdir()
                created_dirs.append(parent)
        p.write_text(SECRET)
    try:
        yield paths
    finally:
        for p in paths:
            p.unlink(missing_ok=True)
        for d in reversed(created_dirs):
            shutil.rmtree(d, ignore_errors=True)


# --- secrets and host files -----------------------------------------------------


def test_cannot_read_etc_shadow(sandbox: Sandbox) -> None:
    r = sandbox.exec("cat /etc/shadow; ls /etc/shadow")
    assert r.exit_code != 0 and "root:" not in r.stdout


def test_cannot_see_host_root_home_or_ssh_keys(
    sandbox: Sandbox, host_secret_files: list[Path]
) -> None:
    r = sandbox.exec("cat /root/.ssh/* /root/.aws/* 2>&1; ls -a /root 2>&1")
    assert SECRET not in r.stdout
    assert "No such file" in r.stdout


def test_cannot_see_other_users_homes(sandbox: Sandbox, host_secret_files: list[Path]) -> None:
    r = sandbox.exec("ls -a /home; cat /home/*/.ssh/* 2>&1")
    assert "corral-canary-user" not in r.stdout and SECRET not in r.stdout
    assert r.stdout.split()[:3] == [".", "..", "agent"]


def test_etc_is_an_allowlist(sandbox: Sandbox, host_secret_files: list[Path]) -> None:
    r = sandbox.exec("cat /etc/corral-canary-secret /etc/ssh/ssh_host_* /etc/sudoers 2>&1")
    assert SECRET not in r.stdout and "PRIVATE KEY" not in r.stdout


def test_host_environment_is_not_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    with Sandbox.create("default") as sb:
        r = sb.exec("env; cat /proc/self/environ")
    assert SECRET not in r.stdout and "AWS_SECRET" not in r.stdout


def test_cannot_read_supervisor_environ_or_memory(sandbox: Sandbox) -> None:
    r = sandbox.exec("cat /proc/1/environ; head -c 16 /proc/1/mem; ls /proc/1/fd")
    assert r.exit_code != 0
    assert r.stdout == ""
    assert "Permission denied" in r.stderr


def test_cannot_read_host_process_environ(sandbox: Sandbox) -> None:
    # The pytest process runs on the host with a secret in its environment.
    os.environ["CORRAL_CANARY"] = SECRET
    try:
        host_pid = os.getpid()
        r = sandbox.exec(f"cat /proc/{host_pid}/environ; grep -l {SECRET} /proc/*/environ")
    finally:
        del os.environ["CORRAL_CANARY"]
    assert SECRET not in r.stdout


# --- writing outside the workspace -------------------------------------------------


@pytest.mark.parametrize("target", ["/usr/bin/corral-evil", "/etc/evil", "/evil", "/var/evil",
                                    "/home/evil", "/proc/sys/kernel/hostname"])
def test_cannot_write_outside_writable_dirs(sandbox: Sandbox, target: str) -> None:
    r = sandbox.exec(f"echo pwned > {target}")
    assert r.exit_code != 0
    assert not Path(target).exists() or "pwned" not in Path(target).read_text()


def test_workspace_writes_never_reach_the_host(sandbox: Sandbox) -> None:
    # Made up now, so no file on the host (this test's source included) can contain it.
    marker = secrets.token_hex(16)
    r = sandbox.exec(f"echo {marker} > /workspace/marker && echo {marker} > /tmp/marker")
    assert r.exit_code == 0
    grep = subprocess.run(
        ["grep", "-rl", "--", marker, "/tmp", "/var/tmp", "/run/corral"],
        capture_output=True, text=True, check=False,
    )
    assert grep.stdout == ""


# --- host processes -----------------------------------------------------------------


def test_cannot_see_host_processes(sandbox: Sandbox) -> None:
    r = sandbox.exec("ps -eo pid,comm --no-headers")
    names = [line.split()[1] for line in r.stdout.splitlines()]
    assert "pytest" not in " ".join(names) and "python" not in names
    assert len(names) <= 3  # init, the shell, ps


def test_cannot_signal_host_processes() -> None:
    victim = subprocess.Popen(["sleep", "30"])
    try:
        with Sandbox.create("default") as sb:
            r = sb.exec(f"kill -9 {victim.pid}; kill -9 -1; echo done")
        assert victim.poll() is None, "host process was killed from inside the sandbox"
        assert "done" in r.stdout
    finally:
        victim.kill()
        victim.wait()


def test_cannot_kill_the_supervisor(sandbox: Sandbox) -> None:
    sandbox.exec("kill -9 1; kill -TERM 1")
    assert sandbox.exec("echo alive").stdout == "alive\n"


def test_ptrace_is_blocked(sandbox: Sandbox) -> None:
    sandbox.exec("sleep 30 > /dev/null 2>&1 &")
    pid = sandbox.exec("pgrep -n sleep").stdout.strip()
    assert errno_of_syscall(sandbox, "ptrace", 16, int(pid), 0, 0) == "EPERM"  # PTRACE_ATTACH


def test_process_vm_readv_is_blocked(sandbox: Sandbox) -> None:
    assert errno_of_syscall(sandbox, "process_vm_readv", 1, 0, 0, 0, 0, 0) == "EPERM"


# --- privileges, namespaces, kernel surface -------------------------------------------


def test_mount_is_blocked(sandbox: Sandbox) -> None:
    r = sandbox.exec("mount -t tmpfs none /workspace/m 2>&1; mkdir -p /workspace/m; "
                     "mount -t tmpfs none /workspace/m")
    assert r.exit_code != 0
    assert "tmpfs" not in sandbox.exec("grep workspace/m /proc/mounts || true").stdout


def test_new_user_namespace_is_blocked(sandbox: Sandbox) -> None:
    r = sandbox.exec("unshare -r id -u")
    assert r.exit_code != 0 and r.stdout.strip() != "0"
    assert errno_of_syscall(sandbox, "unshare", 0x10000000) == "EPERM"  # CLONE_NEWUSER


def test_clone_into_new_namespaces_is_blocked(sandbox: Sandbox) -> None:
    # CLONE_NEWNET|SIGCHLD: a raw clone() asking for a fresh network namespace.
    assert errno_of_syscall(sandbox, "clone", 0x40000000 | 17, 0, 0, 0, 0) == "EPERM"


def test_no_capabilities_and_no_new_privs(sandbox: Sandbox) -> None:
    status = sandbox.exec("cat /proc/self/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(fields[cap], 16) == 0, cap
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"


def test_setuid_binary_does_not_grant_root(shared_tmp: Path) -> None:
    suid = shared_tmp / "suid-id"
    shutil.copy("/usr/bin/id", suid)
    os.chown(suid, 0, 0)
    suid.chmod(0o4755)
    policy = make_policy(**{"filesystem.read_only": [{"source": str(shared_tmp), "target": "/x"}]})
    with Sandbox.create(policy) as sb:
        r = sb.exec("/x/suid-id -u; /x/suid-id -ru; su -c id root </dev/null")
    assert r.stdout.split()[:2] == ["1000", "1000"]
    assert "uid=0" not in r.stdout


def test_raw_and_packet_sockets_are_refused(sandbox: Sandbox) -> None:
    code = (
        "import socket\n"
        "for fam, typ, proto in ((socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),\n"
        "                        (socket.AF_PACKET, socket.SOCK_RAW, 0x0300)):\n"
        "    try:\n"
        "        socket.socket(fam, typ, proto); print('opened')\n"
        "    except OSError as e:\n"
        "        print('refused', e.errno)\n"
    )
    r = sandbox.exec(["python3", "-c", code])
    assert r.stdout.count("refused") == 2 and "opened" not in r.stdout


def test_only_harmless_devices(sandbox: Sandbox) -> None:
    r = sandbox.exec("find /dev -mindepth 1 -maxdepth 1 \\( -type c -o -type b \\) -printf '%f\\n'")
    assert set(r.stdout.split()) <= {"null", "zero", "full", "random", "urandom", "tty", "ptmx"}
    assert sandbox.exec("mknod /tmp/sda b 8 0").exit_code != 0
    assert sandbox.exec("ls /sys/fs/cgroup /sys/class 2>/dev/null | wc -l").stdout.strip() == "0"


@pytest.mark.parametrize(
    ("syscall", "args"),
    [("bpf", (0, 0, 0)), ("perf_event_open", (0, 0, -1, -1, 0)), ("keyctl", (0, 0)),
     ("io_uring_setup", (8, 0)), ("init_module", (0, 0, 0)), ("kexec_load", (0, 0, 0, 0)),
     ("chroot", (0,)), ("userfaultfd", (0,))],
)
def test_dangerous_syscalls_are_denied(
    sandbox: Sandbox, syscall: str, args: tuple[int, ...]
) -> None:
    assert errno_of_syscall(sandbox, syscall, *args) == "EPERM"


def test_x32_syscall_numbers_cannot_bypass_the_filter(sandbox: Sandbox) -> None:
    # On x86_64 the x32 ABI reuses the native arch with bit 30 set: a filter keyed only on
    # numbers would let "ptrace | 0x40000000" through. libseccomp kills it as a bad arch.
    if os.uname().machine != "x86_64":
        pytest.skip("the x32 ABI exists only on x86_64")
    code = ("import ctypes\nctypes.CDLL(None).syscall(0x40000000 | 101, 16, 1, 0, 0)\n"
            "print('returned')\n")
    r = sandbox.exec(["python3", "-c", code])
    assert r.signal == signal.SIGSYS and "returned" not in r.stdout


def test_supervisor_limits_cannot_be_changed(sandbox: Sandbox) -> None:
    r = sandbox.exec("prlimit --pid 1 --nofile=3:3; prlimit --pid 1 --nofile --noheadings")
    assert "Operation not permitted" in r.stderr
    assert sandbox.exec("echo still-serving").stdout == "still-serving\n"
    # Its own limits stay the workload's business, and no core dumps are ever written.
    assert sandbox.exec("ulimit -n 64 && ulimit -n && ulimit -c").stdout == "64\n0\n"


def test_terminal_injection_is_denied(sandbox: Sandbox) -> None:
    # TIOCSTI on any fd is refused by seccomp before the kernel looks at the fd.
    assert errno_of_syscall(sandbox, "ioctl", 0, 0x5412, 0) == "EPERM"


# --- network --------------------------------------------------------------------------


def test_cannot_reach_a_service_on_host_loopback(sandbox: Sandbox) -> None:
    received: list[bytes] = []
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(3)
    port = server.getsockname()[1]

    def accept() -> None:
        try:
            conn, _ = server.accept()
            received.append(conn.recv(100))
            conn.close()
        except OSError:
            pass

    t = threading.Thread(target=accept)
    t.start()
    r = sandbox.exec(f"echo {SECRET} > /dev/tcp/127.0.0.1/{port}", timeout=5)
    t.join()
    server.close()
    assert r.exit_code != 0
    assert received == []


def test_no_route_off_the_machine(sandbox: Sandbox) -> None:
    # A documentation address: even if this failed open, nothing real would be hit.
    r = sandbox.exec("echo x > /dev/tcp/198.51.100.7/80; ip -o addr 2>/dev/null | wc -l", timeout=5)
    assert "Network is unreachable" in r.stderr
    assert sandbox.exec("cat /proc/net/dev | tail -n +3 | awk '{print $1}'").stdout == "lo:\n"


# --- resource exhaustion ------------------------------------------------------------------


def test_fork_bomb_is_contained() -> None:
    sink = MemorySink()
    policy = make_policy("strict")
    with Sandbox.create(policy, sink=sink) as sb:
        r = sb.exec("bomb() { bomb | bomb & }; bomb; sleep 1", timeout=3)
        # +1: bwrap's outer process shares the cgroup with the sandbox's tasks.
        assert len(sb.pids()) <= policy.resources.pids + 1
        assert "Resource temporarily unavailable" in r.stderr
        uid = sb.uid
    hits = [e for e in sink.of_kind(EventKind.LIMIT_HIT) if e.data["limit"] == "pids"]
    assert hits, "the pids limit was never reported"
    assert processes_of_uid(uid) == []


def test_memory_bomb_is_killed() -> None:
    sink = MemorySink()
    policy = make_policy("default", **{"resources.memory": "64MiB"})
    with Sandbox.create(policy, sink=sink) as sb:
        r = sb.exec(["python3", "-c", "x = bytearray(512 * 1024 * 1024); print('allocated')"])
        assert r.kill_reason == KillReason.MEMORY and r.signal == signal.SIGKILL
        assert "allocated" not in r.stdout
        assert sb.exec("echo alive").stdout == "alive\n"
        assert sb.stats().memory_peak <= 64 * 1024 * 1024
    assert any(e.data.get("limit") == "memory" for e in sink.of_kind(EventKind.LIMIT_HIT))


@pytest.mark.parametrize("where", ["/workspace", "/tmp", "~"])
def test_filling_the_disk_stops_at_the_quota(where: str) -> None:
    sink = MemorySink()
    policy = make_policy("default", **{"resources.disk": "8MiB", "resources.memory": "256MiB"})
    with Sandbox.create(policy, sink=sink) as sb:
        r = sb.exec(f"dd if=/dev/zero of={where}/fill bs=1M count=64")
        assert r.exit_code != 0 and "No space left" in r.stderr
        size = int(sb.exec(f"stat -c %s {where}/fill").stdout)
        assert size <= 8 * 1024 * 1024
    assert any(e.data.get("limit") == "disk" for e in sink.of_kind(EventKind.LIMIT_HIT))


def test_cpu_quota_holds_against_many_busy_processes() -> None:
    policy = make_policy("default", **{"resources.cpus": 0.25})
    with Sandbox.create(policy) as sb:
        before = sb.stats().cpu_seconds
        t0 = time.monotonic()
        sb.exec("for i in 1 2 3 4; do timeout 2 sh -c 'while :; do :; done' & done; wait")
        wall = time.monotonic() - t0
        used = sb.stats().cpu_seconds - before
    # Four spinners on two cores would burn ~4 CPU-seconds unconstrained.
    assert used <= 0.25 * wall * 1.3 + 0.1, f"used {used:.2f}s CPU in {wall:.2f}s"


# --- lifetimes -----------------------------------------------------------------------------


def test_detached_child_does_not_outlive_sandbox_time_limit() -> None:
    sink = MemorySink()
    policy = make_policy("default", **{"resources.sandbox_timeout": 1.5,
                                       "resources.command_timeout": 1})
    sb = Sandbox.create(policy, sink=sink)
    uid = sb.uid
    sb.exec("setsid nohup sleep 1000 > /dev/null 2>&1 & disown; (setsid sleep 999 &)")
    assert len(processes_of_uid(uid)) >= 3
    deadline = time.monotonic() + 10
    while not sb.closed and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert sb.closed_reason == "sandbox_timeout"
        assert processes_of_uid(uid) == []
        kills = [e for e in sink.of_kind(EventKind.KILL) if e.data["scope"] == "sandbox"]
        assert kills and kills[0].data["reason"] == "sandbox_timeout"
    finally:
        sb.close()


def test_detached_child_does_not_outlive_close() -> None:
    sb = Sandbox.create("default")
    uid = sb.uid
    sb.exec("setsid nohup sh -c 'trap \"\" TERM HUP; sleep 1000' > /dev/null 2>&1 &")
    assert any(p for p in processes_of_uid(uid))
    sb.close()
    assert processes_of_uid(uid) == []


def test_command_timeout_catches_signal_ignoring_child() -> None:
    with Sandbox.create("default") as sb:
        r = sb.exec("trap '' TERM INT HUP; sleep 1000", timeout=0.5)
        assert r.kill_reason == KillReason.TIMEOUT
        assert sb.exec("pgrep -c sleep || true").stdout.strip() == "0"
