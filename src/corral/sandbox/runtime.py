"""AsyncSandbox: one isolated Linux sandbox that lives for a whole episode.

The host side of the sandbox. It prepares the uid, cgroup and bwrap argv, starts
``corral-init launch`` (which joins the cgroup, drops privileges and execs bwrap),
then speaks the framed protocol to ``corral-init serve``, the sandbox's PID 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import secrets
import signal
import socket
import stat
import struct
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from corral.errors import GatewayError, SandboxClosed, SandboxError, SandboxUnavailable
from corral.events import Event, EventKind, EventSink, NullSink
from corral.policy import NetworkPolicy, Policy, load_policy
from corral.sandbox import protocol as wire
from corral.sandbox.bwrap import (
    SANDBOX_GID,
    SANDBOX_HOME,
    SANDBOX_HOSTNAME,
    SANDBOX_UID,
    SANDBOX_USER,
    BwrapParams,
    DataFile,
    build_argv,
)
from corral.sandbox.cgroups import Cgroup, CgroupLimits, CgroupStats, read_small
from corral.sandbox.host import Host, host
from corral.sandbox.result import ExecResult, KillReason
from corral.sandbox.seccomp import filter_fd
from corral.sandbox.state import BASE_UID, SandboxRecord, process_start_time
from corral.sandbox.untar import extract_plain

OutputCallback = Callable[[int, bytes], None]
"""Called with (stream, chunk) as output arrives; stream 1 is stdout, 2 is stderr."""

_READY_TIMEOUT = 30.0
_UNRESPONSIVE_GRACE = 5.0
_FILE_CAP = 256 << 20  # held in the owner's memory: keep it bounded
_CRED_SPACE = socket.CMSG_SPACE(struct.calcsize("iII"))


class NetworkAttachment(Protocol):
    netns_path: str
    resolv_conf: str
    hosts: str

    async def close(self) -> None: ...


class GatewayLike(Protocol):
    async def attach(
        self,
        sandbox_id: str,
        episode_id: str | None,
        policy: NetworkPolicy,
        sink: EventSink,
        step: Callable[[], int | None],
    ) -> NetworkAttachment: ...


@dataclass(slots=True)
class _Job:
    job_id: int
    step: int | None
    internal: bool
    on_output: OutputCallback | None
    started: float
    timeout: float
    future: asyncio.Future[wire.ExitFrame | None]
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    ns_pid: int | None = None
    host_pid: int | None = None
    announced: bool = False


def _base_env(workspace: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": SANDBOX_HOME,
        "USER": SANDBOX_USER,
        "LOGNAME": SANDBOX_USER,
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "TMPDIR": "/tmp",
        "PWD": workspace,
        "CORRAL_SANDBOX": "1",
    }


def _passwd() -> str:
    return (
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"{SANDBOX_USER}:x:{SANDBOX_UID}:{SANDBOX_GID}:Corral agent:{SANDBOX_HOME}:/bin/bash\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )


def _group() -> str:
    return f"root:x:0:\n{SANDBOX_USER}:x:{SANDBOX_GID}:\nnogroup:x:65534:\n"


def _pipe_with(data: bytes) -> int:
    """A read fd that yields ``data`` then EOF (contents must fit the pipe buffer)."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, data)
    finally:
        os.close(write_end)
    return read_end


def _unreachable_by_others(path: Path) -> str | None:
    """Why an unprivileged uid can't read ``path``, or None if it can.

    bwrap resolves bind sources as the sandbox's own uid: the sandbox only ever sees
    what any unprivileged user of the host could read.
    """
    try:
        st = path.stat()
    except OSError as exc:
        return exc.strerror or "cannot be read"
    for parent in path.resolve().parents:
        if not parent.stat().st_mode & stat.S_IXOTH:
            return f"{parent} is not searchable by other users (chmod o+x to share it)"
    need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(st.st_mode) else 0)
    if st.st_mode & need != need:
        return "not readable by other users (chmod o+r, and o+x for a directory)"
    return None


_NVIDIA_SHARED = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")


def _gpu_device_nodes(indices: Sequence[int], dev: Path = Path("/dev")) -> tuple[str, ...]:
    """Device nodes for the granted NVIDIA GPUs; a granted GPU that is missing is an error."""
    if not indices:
        return ()
    nodes = []
    for i in indices:
        node = dev / f"nvidia{i}"
        if not node.exists():
            raise SandboxUnavailable(f"gpu.devices: {node} does not exist on this host")
        nodes.append(str(node))
    shared = [str(dev / Path(p).name) for p in _NVIDIA_SHARED if (dev / Path(p).name).exists()]
    return (*nodes, *shared)


def _ns_pid(host_pid: int) -> int | None:
    for line in read_small(f"/proc/{host_pid}/status").splitlines():
        if line.startswith(b"NSpid:"):
            fields = line.split()
            return int(fields[-1]) if len(fields) > 2 else None
    return None


def _host_pid_of(init_pid: int | None, cgroup: Cgroup, ns_pid: int) -> int | None:
    """Map a pid seen inside the sandbox to its host pid.

    The supervisor forks every command, so the answer is almost always among its
    newest children; the cgroup's member list is the slow, complete fallback.
    """
    if init_pid is not None:
        children = read_small(f"/proc/{init_pid}/task/{init_pid}/children").split()
        for raw in reversed(children):
            if _ns_pid(int(raw)) == ns_pid:
                return int(raw)
    for pid in cgroup.pids():
        if _ns_pid(pid) == ns_pid:
            return pid
    return None


class AsyncSandbox:
    """An isolated sandbox for one episode. Create it with :meth:`create`."""

    def __init__(
        self,
        *,
        sandbox_id: str,
        policy: Policy,
        sink: EventSink,
        episode_id: str | None,
        host_: Host,
        record: SandboxRecord,
        cgroup: Cgroup,
    ) -> None:
        self.id = sandbox_id
        self.policy = policy
        self.sink = sink
        self.episode_id = episode_id
        self.uid = record.uid
        self._host = host_
        self._record = record
        self._cgroup = cgroup
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background_tasks: set[asyncio.Future[None]] = set()
        # Pipe transports own the pipes' fds: they must be closed through the loop, or a
        # reused fd number stays silently unregistered in the selector.
        self._transports: list[asyncio.BaseTransport] = []
        self._jobs: dict[int, _Job] = {}
        self._next_job = 1
        self._next_step = 0
        self._current_step: int | None = None
        self._closed_reason: KillReason | str | None = None
        self._close_done: asyncio.Event | None = None
        self._timeout_handle: asyncio.TimerHandle | None = None
        self._attachment: NetworkAttachment | None = None
        self._stderr_tail = bytearray()
        self._ready: asyncio.Future[None] | None = None
        self._last_oom_kills = 0
        self._last_refused_forks = 0
        self._reports: socket.socket | None = None
        # Signals to the supervisor go through a pidfd: its pid number may be reused once
        # it has died, a pidfd never points at another process.
        self._init_pidfd: int | None = None
        self.init_pid: int | None = None
        self.created_at = time.time()

    # --- lifecycle ------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        policy: Policy | str | None = None,
        *,
        sink: EventSink | None = None,
        episode_id: str | None = None,
        gateway: GatewayLike | None = None,
    ) -> AsyncSandbox:
        """Start a sandbox and wait until its supervisor answers.

        ``policy`` is a Policy, a profile name or a policy file; None means ``default``.
        Raises SandboxError (or a subclass) and leaves nothing behind on failure.
        """
        if not isinstance(policy, Policy):
            policy = load_policy(policy)
        h = host()
        sandbox_id = "sb-" + secrets.token_hex(5)
        slot = h.state.claim_slot(sandbox_id, hint=secrets.randbelow(40_000))
        owner = os.getpid()
        record = SandboxRecord(
            sandbox_id=sandbox_id,
            owner_pid=owner,
            owner_start=process_start_time(owner) or 0,
            slot=slot,
            cgroup=sandbox_id,
            created=time.time(),
        )
        try:
            h.state.write(record)
            res = policy.resources
            cgroup = h.cgroups.create(
                sandbox_id, CgroupLimits(cpus=res.cpus, memory=res.memory, pids=res.pids)
            )
        except BaseException:
            h.state.remove(sandbox_id)
            h.state.release_slot(slot)
            raise
        sandbox = cls(
            sandbox_id=sandbox_id,
            policy=policy,
            sink=sink or NullSink(),
            episode_id=episode_id,
            host_=h,
            record=record,
            cgroup=cgroup,
        )
        try:
            await sandbox._start(gateway)
        except BaseException:
            await sandbox._release("create failed")
            raise
        return sandbox

    async def _start(self, gateway: GatewayLike | None) -> None:
        t0 = time.perf_counter()
        policy = self.policy
        resolv = "# no network\n"
        hosts = f"127.0.0.1 localhost {SANDBOX_HOSTNAME}\n::1 localhost\n"
        netns: str | None = None
        if policy.network.mode == "gateway":
            if gateway is None:
                # Fail closed: a sandbox that should be behind the gateway never starts without it.
                raise GatewayError("network mode 'gateway' needs a running gateway; none given")
            self._attachment = await gateway.attach(
                self.id, self.episode_id, policy.network, self.sink, lambda: self._current_step
            )
            netns, resolv = self._attachment.netns_path, self._attachment.resolv_conf
            # Our own name resolves locally, never as a (denied, reported) DNS query.
            hosts = self._attachment.hosts + f"127.0.1.1\t{SANDBOX_HOSTNAME}\n"
        for bind in policy.filesystem.read_only:
            problem = _unreachable_by_others(Path(bind.source))
            if problem:
                raise SandboxError(f"filesystem.read_only: {bind.source}: {problem}")
        gpu_devices = _gpu_device_nodes(policy.gpu.devices)
        hidden = tuple(
            (p, Path(p).is_dir()) for p in policy.filesystem.hidden if Path(p).exists()
        )
        files = {
            "/etc/passwd": _passwd(),
            "/etc/group": _group(),
            "/etc/hostname": SANDBOX_HOSTNAME + "\n",
            "/etc/hosts": hosts,
            "/etc/resolv.conf": resolv,
        }
        fds: list[int] = []
        try:
            data_files = []
            for dest, text in files.items():
                fd = _pipe_with(text.encode())
                fds.append(fd)
                data_files.append(DataFile(dest, fd))
            seccomp = filter_fd()
            fds.append(seccomp)
            info_read, info_write = os.pipe()
            fds.append(info_write)
            self._reports, report_child = socket.socketpair(
                socket.AF_UNIX, socket.SOCK_DGRAM
            )
            self._reports.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self._reports.setblocking(False)
            fds.append(report_child.detach())
            params = BwrapParams(
                bwrap=self._host.bwrap,
                init_binary=self._host.init,
                policy=policy,
                seccomp_fd=seccomp,
                info_fd=info_write,
                data_files=tuple(data_files),
                joined_netns=netns is not None,
                etc_view=self._host.etc_view,
                report_fd=fds[-1],
                gpu_devices=gpu_devices,
                hidden=hidden,
            )
            launch = [self._host.init, "launch", "--uid", str(self.uid), "--gid", str(self.uid)]
            for procs in self._cgroup.procs_files:
                launch += ["--cgroup", procs]
            if netns is not None:
                launch += ["--netns", netns]
            argv = [*launch, "--", *build_argv(params)]
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=fds,
                start_new_session=True,  # a terminal's Ctrl-C goes to the owner, which cleans up
                env={"PATH": "/usr/bin:/bin"},
            )
        finally:
            for fd in fds:
                os.close(fd)
        loop = asyncio.get_running_loop()
        loop.add_reader(self._reports.fileno(), self._on_reports)
        self._reader = asyncio.StreamReader(limit=2**20)
        read_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(self._reader), self._proc.stdout
        )
        self._transports.append(read_transport)
        transport, proto = await loop.connect_write_pipe(
            lambda: asyncio.streams.FlowControlMixin(), self._proc.stdin
        )
        self._transports.append(transport)
        self._writer = asyncio.StreamWriter(transport, proto, None, loop)
        self._ready = loop.create_future()
        self._close_done = asyncio.Event()
        self._tasks.append(asyncio.create_task(self._read_frames()))
        self._tasks.append(asyncio.create_task(self._read_stderr()))
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), _READY_TIMEOUT)
        except (TimeoutError, SandboxError) as exc:
            await asyncio.sleep(0.05)  # let bwrap's last words reach the stderr tail
            detail = self._stderr_tail.decode(errors="replace").strip()
            raise SandboxError(
                f"sandbox {self.id} failed to start: {detail or exc or 'no answer'}"
            ) from None
        self.init_pid = await loop.run_in_executor(None, _read_child_pid, info_read)
        # No oom_score_adj for the supervisor: a root-set -1000 would be inherited by every
        # command it forks and make the whole sandbox immune to the OOM killer.
        if self.init_pid:
            with contextlib.suppress(OSError):
                self._init_pidfd = os.pidfd_open(self.init_pid)
        if policy.filesystem.workspace:
            await self.upload(policy.filesystem.workspace, policy.filesystem.workspace_path)
        self._timeout_handle = loop.call_later(
            policy.resources.sandbox_timeout,
            lambda: self._background(self._terminate(KillReason.SANDBOX_TIMEOUT)),
        )
        self._emit(
            EventKind.SANDBOX_CREATED,
            pid=self.init_pid,
            data={
                "uid": self.uid,
                "policy": policy.name,
                "cgroup_version": self._cgroup.version,
                "network": policy.network.mode,
                "create_ms": round((time.perf_counter() - t0) * 1000, 3),
            },
        )

    async def close(self) -> None:
        """Kill every process in the sandbox and remove everything it created. Idempotent."""
        await self._release(KillReason.CLOSED)

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def sandbox_id(self) -> str:
        return self.id

    @property
    def watch_paths(self) -> list[str]:
        """Host-visible paths of the sandbox's writable dirs (through its init's root)."""
        if self.init_pid is None:
            return []
        dirs = (self.policy.filesystem.workspace_path, SANDBOX_HOME)
        return [f"/proc/{self.init_pid}/root{d}" for d in dirs]

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    @property
    def closed_reason(self) -> str | None:
        return None if self._closed_reason is None else str(self._closed_reason)

    async def _terminate(self, reason: KillReason) -> None:
        if self.closed:
            return
        limit = {
            KillReason.SANDBOX_TIMEOUT: ("sandbox_timeout", self.policy.resources.sandbox_timeout),
        }.get(reason)
        if limit:
            self._emit(EventKind.LIMIT_HIT, data={"limit": limit[0], "value": limit[1]})
        self._emit(EventKind.KILL, data={"reason": str(reason), "scope": "sandbox"})
        await self._release(reason)

    async def _release(self, reason: KillReason | str) -> None:
        if self._closed_reason is not None:
            if self._close_done is not None:
                await self._close_done.wait()
            return
        self._closed_reason = reason
        try:
            await self._teardown(reason)
        finally:
            # Whatever failed, later close() calls must not wait forever.
            if self._close_done is not None:
                self._close_done.set()

    async def _teardown(self, reason: KillReason | str) -> None:
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        stats = await asyncio.to_thread(self._teardown_processes)
        for job in list(self._jobs.values()):
            if not job.future.done():
                job.future.set_result(None)
        if self._reports is not None:
            asyncio.get_running_loop().remove_reader(self._reports.fileno())
            self._reports.close()
        for transport in self._transports:
            transport.close()  # unregisters from the selector before the fd is closed
        if self._proc is not None:
            for stream in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
                if stream is not None:
                    stream.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._attachment is not None:
            await self._attachment.close()
        await asyncio.to_thread(self._teardown_host_state)
        if self._proc is not None:
            self._emit(
                EventKind.SANDBOX_CLOSED,
                data={
                    "reason": str(reason),
                    "cpu_seconds": round(stats.cpu_seconds, 6),
                    "memory_peak": stats.memory_peak,
                    "oom_kills": stats.oom_kills,
                    "lifetime_s": round(time.time() - self.created_at, 3),
                },
            )

    def _teardown_processes(self) -> CgroupStats:
        stats = self._cgroup.stats()
        if self._init_pidfd is not None:
            # Killing the pid namespace's init makes the kernel kill everything in it, and
            # lets bwrap reap init before it exits itself, so no zombie is left for host
            # pid 1 to collect.
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._init_pidfd, signal.SIGKILL)
            os.close(self._init_pidfd)
            self._init_pidfd = None
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
        self._cgroup.kill_all()  # anything left (init never started, or a wedged bwrap)
        if self._proc is not None:
            self._proc.wait(timeout=10)
        return stats

    def _teardown_host_state(self) -> None:
        self._cgroup.remove()
        self._host.state.release_slot(self._record.slot)
        self._host.state.remove(self.id)

    # --- protocol -------------------------------------------------------------

    async def _read_frames(self) -> None:
        reader = self._reader
        if reader is None:
            return
        try:
            while True:
                head = await reader.readexactly(wire.HEAD_SIZE)
                length, kind = wire.unpack_head(head)
                body = await reader.readexactly(length - 1)
                self._on_frame(kind, body)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        # The supervisor is gone: the sandbox can no longer run anything.
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(SandboxError("supervisor exited before it was ready"))
        if not self.closed:
            self._background(self._terminate(KillReason.UNRESPONSIVE))

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        # Keep a reference: the loop holds tasks only weakly.
        task = asyncio.ensure_future(coro)
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)

    def _on_frame(self, kind: int, body: bytes) -> None:
        if kind == wire.RSP_READY:
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
            return
        if kind == wire.RSP_OUT:
            (job_id,) = wire.decode_u32s(body, 1)
            job = self._jobs.get(job_id)
            if job is None:
                return
            stream, chunk = body[4], body[5:]
            (job.stdout if stream == 1 else job.stderr).extend(chunk)
            if job.on_output is not None:
                job.on_output(stream, chunk)
            return
        if kind == wire.RSP_STARTED:
            job_id, ns_pid = wire.decode_u32s(body, 2)
            job = self._jobs.get(job_id)
            if job is None:
                return
            job.ns_pid = ns_pid
            return
        if kind == wire.RSP_EXIT:
            frame = wire.decode_exit(body)
            job = self._jobs.get(frame.job_id)
            if job is not None and not job.future.done():
                if not job.announced:
                    self._on_reports()  # its report may be waiting behind this frame
                if not job.announced and job.ns_pid is not None:
                    # Its report was lost (full socket buffer): find it the slow way, if
                    # it is still there, so the start is recorded before the end.
                    job.host_pid = _host_pid_of(self.init_pid, self._cgroup, job.ns_pid)
                    self._announce(job)
                job.future.set_result(frame)

    def _on_reports(self) -> None:
        """Each command's process sends its job id with SCM_CREDENTIALS before it execs;
        the kernel rewrites the pid into our namespace, so no /proc race is possible."""
        if self._reports is None:
            return
        while True:
            try:
                data, ancdata, _, _ = self._reports.recvmsg(4, _CRED_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(data) != 4:
                continue
            job = self._jobs.get(int.from_bytes(data, "little"))
            if job is None or job.announced:
                continue
            for level, kind, cred in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    job.host_pid = struct.unpack("iII", cred[:12])[0]
            self._announce(job)

    def _announce(self, job: _Job) -> None:
        job.announced = True
        if not job.internal:
            self._emit(EventKind.EXEC_START, step=job.step, pid=job.host_pid,
                       data={"ns_pid": job.ns_pid, "job": job.job_id})

    async def _read_stderr(self) -> None:
        if self._proc is None or self._proc.stderr is None:
            return
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        stderr = self._proc.stderr
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), stderr
        )
        self._transports.append(transport)
        while chunk := await reader.read(4096):
            self._stderr_tail.extend(chunk)
            del self._stderr_tail[:-8192]

    # --- commands -------------------------------------------------------------

    async def exec(
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
        """Run a command and wait for it. A string runs under ``bash -c``; a list runs as argv.

        Background processes it starts keep running, under the sandbox's limits,
        until the sandbox closes. ``step`` labels the action in events (default: next).
        """
        if step is None:
            step = self._next_step
        self._next_step = max(self._next_step, step + 1)
        frame, job, out, err = await self._run(
            cmd, timeout=timeout, env=env, cwd=cwd, stdin=stdin, step=step,
            on_output=on_output, internal=False,
        )
        return self._result(frame, job, out, err)

    async def _run(
        self,
        cmd: str | Sequence[str],
        *,
        timeout: float | None,
        env: Mapping[str, str] | None,
        cwd: str | None,
        stdin: bytes | str | None,
        step: int | None,
        on_output: OutputCallback | None,
        internal: bool,
        output_cap: int | None = None,
    ) -> tuple[wire.ExitFrame | None, _Job, bytes, bytes]:
        if self.closed:
            raise SandboxClosed(self.id, str(self._closed_reason))
        argv = ["/bin/bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        if not argv or not argv[0]:
            raise SandboxError("empty command")
        if any("\0" in a for a in argv):
            raise SandboxError("command arguments must not contain NUL bytes")
        limit = self.policy.resources.command_timeout if timeout is None else timeout
        if not 0 < limit <= 7 * 24 * 3600:
            raise SandboxError(f"timeout must be positive and at most 7 days, got {limit}")
        merged = _base_env(cwd or self.policy.filesystem.workspace_path)
        for key, value in (env or {}).items():
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise SandboxError(f"invalid environment variable name or value: {key!r}")
            merged[key] = value
        data = stdin.encode() if isinstance(stdin, str) else (stdin or b"")
        if len(data) > wire.MAX_STDIN:
            raise SandboxError(f"stdin is larger than {wire.MAX_STDIN} bytes")
        loop = asyncio.get_running_loop()
        job = _Job(
            job_id=self._next_job,
            step=step,
            internal=internal,
            on_output=on_output,
            started=time.monotonic(),
            timeout=limit,
            future=loop.create_future(),
        )
        self._next_job += 1
        self._jobs[job.job_id] = job
        if not internal:
            self._current_step = step
        frame_bytes = wire.encode_exec(
            job.job_id,
            argv,
            [f"{k}={v}" for k, v in merged.items()],
            cwd or self.policy.filesystem.workspace_path,
            timeout_ms=max(1, int(limit * 1000)),
            output_cap=output_cap or self.policy.resources.output_cap,
            stdin=data,
        )
        try:
            if self._writer is None:
                raise SandboxClosed(self.id, "not started")
            self._writer.write(frame_bytes)
            await self._writer.drain()
            try:
                # The supervisor enforces the timeout; this is the backstop if it can't.
                frame = await asyncio.wait_for(
                    asyncio.shield(job.future), limit + _UNRESPONSIVE_GRACE
                )
            except TimeoutError:
                await self._terminate(KillReason.UNRESPONSIVE)
                frame = None
        except (ConnectionError, RuntimeError) as exc:
            if not self.closed:
                raise SandboxError(f"sandbox {self.id} channel failed: {exc}") from exc
            frame = None
        finally:
            self._jobs.pop(job.job_id, None)
        return frame, job, bytes(job.stdout), bytes(job.stderr)

    def _result(
        self, frame: wire.ExitFrame | None, job: _Job, out: bytes, err: bytes
    ) -> ExecResult:
        duration = time.monotonic() - job.started
        if frame is None:
            # The sandbox ended under the command: report it as killed by the sandbox.
            reason = self._closed_reason
            kill = reason if isinstance(reason, KillReason) else KillReason.CLOSED
            result = ExecResult(
                exit_code=128 + signal.SIGKILL, stdout=out.decode(errors="replace"),
                stderr=err.decode(errors="replace"), duration=duration, kill_reason=kill,
                signal=signal.SIGKILL, step=job.step, pid=job.host_pid,
            )
            self._emit_end(result, job)
            return result
        status = frame.wait_status
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + (sig or 0)
        oom_kills, refused_forks = self._cgroup.counters()
        kill: KillReason | None = None
        if frame.flags & wire.FLAG_TIMED_OUT:
            kill = KillReason.TIMEOUT
            self._emit(EventKind.LIMIT_HIT, step=job.step, pid=job.host_pid,
                       data={"limit": "command_timeout", "value": job.timeout,
                             "elapsed": round(time.monotonic() - job.started, 3)})
        elif sig == signal.SIGKILL and oom_kills > self._last_oom_kills:
            kill = KillReason.MEMORY
            self._emit(EventKind.LIMIT_HIT, step=job.step, pid=job.host_pid,
                       data={"limit": "memory", "value": self.policy.resources.memory})
        if kill is not None:
            self._emit(EventKind.KILL, step=job.step, pid=job.host_pid,
                       data={"reason": str(kill), "scope": "command"})
        if refused_forks > self._last_refused_forks:
            self._emit(EventKind.LIMIT_HIT, step=job.step, pid=job.host_pid,
                       data={"limit": "pids", "value": self.policy.resources.pids,
                             "refused_forks": refused_forks - self._last_refused_forks})
        truncated = bool(frame.flags & wire.FLAG_TRUNCATED)
        if truncated:
            self._emit(EventKind.LIMIT_HIT, step=job.step, pid=job.host_pid,
                       data={"limit": "output_cap", "value": self.policy.resources.output_cap,
                             "bytes": frame.out_total + frame.err_total})
        self._check_disk(job)
        self._last_oom_kills, self._last_refused_forks = oom_kills, refused_forks
        result = ExecResult(
            exit_code=code,
            stdout=out.decode(errors="replace"),
            stderr=err.decode(errors="replace"),
            duration=duration,
            truncated=truncated,
            kill_reason=kill,
            signal=sig,
            cpu_time=(frame.utime_us + frame.stime_us) / 1e6,
            max_rss=frame.maxrss_kb * 1024,
            step=job.step,
            pid=job.host_pid,
        )
        self._emit_end(result, job)
        return result

    def _emit_end(self, result: ExecResult, job: _Job) -> None:
        if job.internal:
            return
        self._emit(
            EventKind.EXEC_END, step=job.step, pid=job.host_pid,
            data={
                "exit_code": result.exit_code,
                "duration": round(result.duration, 6),
                "cpu_time": result.cpu_time,
                "max_rss": result.max_rss,
                "truncated": result.truncated,
                "kill_reason": None if result.kill_reason is None else str(result.kill_reason),
            },
        )

    def _check_disk(self, job: _Job) -> None:
        if self.init_pid is None:
            return
        quota = self.policy.resources.disk
        for path in (self.policy.filesystem.workspace_path, "/tmp", SANDBOX_HOME):
            try:
                st = os.statvfs(f"/proc/{self.init_pid}/root{path}")
            except OSError:
                continue
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            if st.f_bavail == 0:
                self._emit(EventKind.LIMIT_HIT, step=job.step, pid=job.host_pid,
                           data={"limit": "disk", "path": path, "value": quota, "used": used})

    # --- files ----------------------------------------------------------------

    async def _internal(
        self, argv: Sequence[str], *, stdin: bytes = b"", cap: int = 64 * 1024
    ) -> bytes:
        frame, _, out, err = await self._run(
            argv, timeout=self.policy.resources.command_timeout, env=None, cwd="/",
            stdin=stdin, step=None, on_output=None, internal=True, output_cap=cap,
        )
        if frame is None:
            raise SandboxClosed(self.id, str(self._closed_reason))
        if frame.flags & wire.FLAG_TRUNCATED:
            raise SandboxError(f"{argv[0]} output exceeded {cap} bytes")
        if not (os.WIFEXITED(frame.wait_status) and os.WEXITSTATUS(frame.wait_status) == 0):
            message = err.decode(errors="replace").strip() or f"status {frame.wait_status}"
            raise SandboxError(message)
        return out

    async def write_file(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        """Write a file inside the sandbox (as the sandbox user), creating parent dirs."""
        payload = data.encode() if isinstance(data, str) else data
        script = 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1" && chmod "$2" -- "$1"'
        try:
            await self._internal(
                ["/bin/sh", "-c", script, "sh", path, f"{mode:o}"], stdin=payload
            )
        except SandboxClosed:
            raise
        except SandboxError as exc:
            raise SandboxError(f"cannot write {path} in sandbox {self.id}: {exc}") from None

    async def read_file(self, path: str) -> bytes:
        """Read a file inside the sandbox. Runs as the sandbox user, so it sees what it sees."""
        try:
            return await self._internal(["/bin/cat", "--", path], cap=_FILE_CAP)
        except SandboxClosed:
            raise
        except SandboxError as exc:
            raise SandboxError(f"cannot read {path} in sandbox {self.id}: {exc}") from None

    async def upload(self, src: str | Path, dest: str) -> None:
        """Copy a host file or directory to ``dest`` inside the sandbox."""
        source = Path(src)
        if not source.exists():
            raise SandboxError(f"cannot upload {source}: no such file or directory")
        target = PurePosixPath(dest)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            if source.is_dir():
                tar.add(source, arcname=".")
                extract_dir = str(target)
            else:
                tar.add(source, arcname=target.name)
                extract_dir = str(target.parent)
        script = 'mkdir -p -- "$1" && tar -x --no-same-owner --no-same-permissions -C "$1" -f -'
        try:
            await self._internal(["/bin/sh", "-c", script, "sh", extract_dir], stdin=buf.getvalue())
        except SandboxClosed:
            raise
        except SandboxError as exc:
            raise SandboxError(f"cannot upload to {dest} in sandbox {self.id}: {exc}") from None

    async def download(self, src: str, dest: str | Path) -> None:
        """Copy a file or directory from the sandbox to ``dest`` on the host.

        Only regular files and directories come out (see :mod:`untar`): a link, device or
        odd name anywhere in the tree refuses the whole download, whatever the sandbox
        wrote or injected into the stream.
        """
        source = PurePosixPath(src)
        try:
            blob = await self._internal(
                ["/bin/tar", "-c", "-C", str(source.parent), "--", source.name], cap=_FILE_CAP
            )
        except SandboxClosed:
            raise
        except SandboxError as exc:
            raise SandboxError(f"cannot download {src} from sandbox {self.id}: {exc}") from None
        target = Path(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            try:
                await asyncio.to_thread(extract_plain, blob, Path(tmp), max_bytes=_FILE_CAP)
            except SandboxError as exc:
                raise SandboxError(f"refusing to download {src}: {exc}") from None
            extracted = Path(tmp) / source.name
            if target.exists() and target.is_dir() and extracted.is_dir():
                for child in extracted.iterdir():
                    child.replace(target / child.name)
            else:
                extracted.replace(target)

    # --- control (used by the monitor's responses) ----------------------------------

    def pids(self) -> list[int]:
        """Host pids of every process in the sandbox."""
        return self._cgroup.pids()

    async def kill_tree(self, pid: int) -> None:
        """SIGKILL a sandbox process and all its descendants; never touches other processes."""
        members = set(self._cgroup.pids())
        if pid not in members:
            return
        children: dict[int, list[int]] = {}
        for member in members:
            try:
                ppid = int(Path(f"/proc/{member}/stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(member)
        todo = [pid]
        while todo:
            current = todo.pop()
            _kill_if_member(current, self._cgroup)
            todo.extend(children.get(current, []))

    async def freeze(self) -> None:
        """Stop every process in the sandbox where it stands (cgroup freezer)."""
        await asyncio.to_thread(self._cgroup.freeze)

    async def thaw(self) -> None:
        await asyncio.to_thread(self._cgroup.thaw)

    async def end_episode(self, reason: str) -> None:
        """Kill everything and close the sandbox because a response demanded it."""
        if self.closed:
            return
        self._emit(EventKind.KILL, data={"reason": reason, "scope": "episode"})
        await self._release(KillReason.MONITOR)

    def stats(self) -> CgroupStats:
        return self._cgroup.stats()

    # --- events ---------------------------------------------------------------

    def _emit(
        self,
        kind: EventKind,
        *,
        step: int | None = None,
        pid: int | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        self.sink.emit(
            Event(
                kind=kind,
                sandbox_id=self.id,
                episode_id=self.episode_id,
                step=step,
                pid=pid,
                data=data or {},
            )
        )


def _kill_if_member(pid: int, cgroup: Cgroup) -> None:
    """SIGKILL ``pid`` only if it is still this sandbox's: pin it with a pidfd first, then
    check membership, so a pid reused by a host process in between is never signalled."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return  # already gone
    try:
        if pid in cgroup.pids():
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


def _read_child_pid(fd: int) -> int | None:
    """bwrap writes ``{"child-pid": N}`` to --info-fd once the sandbox's PID 1 exists."""
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read(4096)
    try:
        pid = json.loads(raw.decode()).get("child-pid")
    except (ValueError, UnicodeDecodeError):
        return None
    return int(pid) if isinstance(pid, int) and pid > 0 else None


__all__ = ["BASE_UID", "AsyncSandbox", "GatewayLike", "NetworkAttachment", "OutputCallback"]
