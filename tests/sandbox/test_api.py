"""The Sandbox API: execs, files, persistence, events, limits reported in results."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from corral.errors import GatewayError, SandboxClosed, SandboxError
from corral.events import EventKind, MemorySink
from corral.sandbox import AsyncSandbox, KillReason, Sandbox

from .conftest import make_policy, processes_of_uid


def test_exec_returns_output_exit_code_and_usage(sandbox: Sandbox) -> None:
    r = sandbox.exec("echo out; echo err >&2; exit 3")
    assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n", "err\n")
    assert r.kill_reason is None and not r.truncated
    assert r.duration > 0 and r.cpu_time > 0 and r.max_rss > 0


def test_argv_exec_is_not_shell_interpreted(sandbox: Sandbox) -> None:
    r = sandbox.exec(["/bin/echo", "$HOME", "a;b"])
    assert r.stdout == "$HOME a;b\n"


def test_missing_program_is_127(sandbox: Sandbox) -> None:
    r = sandbox.exec(["no-such-program-xyz"])
    assert r.exit_code == 127
    assert "no-such-program-xyz" in r.stderr


def test_signal_exit_follows_shell_convention(sandbox: Sandbox) -> None:
    r = sandbox.exec("kill -TERM $$")
    assert r.exit_code == 128 + 15 and r.signal == 15


def test_env_cwd_and_stdin(sandbox: Sandbox) -> None:
    sandbox.exec("mkdir -p /workspace/sub")
    r = sandbox.exec("echo $GREETING; pwd; cat", env={"GREETING": "hi"}, cwd="/workspace/sub",
                     stdin="from stdin")
    assert r.stdout == "hi\n/workspace/sub\nfrom stdin"


def test_large_stdin_round_trips(sandbox: Sandbox) -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB, more than any pipe buffer
    r = sandbox.exec("sha256sum", stdin=payload)
    import hashlib

    assert r.stdout.split()[0] == hashlib.sha256(payload).hexdigest()


def test_files_persist_between_execs(sandbox: Sandbox) -> None:
    sandbox.exec("echo one > /workspace/f && echo two > /tmp/g && echo three > ~/h")
    r = sandbox.exec("cat /workspace/f /tmp/g ~/h")
    assert r.stdout == "one\ntwo\nthree\n"


def test_background_process_survives_between_execs(sandbox: Sandbox) -> None:
    sandbox.exec("nohup sh -c 'while true; do date +%s%N >> /tmp/ticks; sleep 0.05; done' "
                 ">/dev/null 2>&1 &")
    first = sandbox.exec("sleep 0.3; wc -l < /tmp/ticks").stdout
    second = sandbox.exec("sleep 0.3; wc -l < /tmp/ticks").stdout
    assert int(second) > int(first) > 0


def test_write_read_binary_file(sandbox: Sandbox) -> None:
    blob = bytes(range(256)) * 100
    sandbox.write_file("/workspace/deep/dir/blob.bin", blob, mode=0o600)
    assert sandbox.read_file("/workspace/deep/dir/blob.bin") == blob
    assert sandbox.exec("stat -c %a /workspace/deep/dir/blob.bin").stdout.strip() == "600"


def test_read_missing_file_is_a_clear_error(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxError, match=r"cannot read /workspace/nope"):
        sandbox.read_file("/workspace/nope")


def test_write_outside_workspace_is_refused_by_the_sandbox(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxError, match="cannot write /usr/evil"):
        sandbox.write_file("/usr/evil", "x")


def test_upload_and_download_directory(sandbox: Sandbox, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "a.py").write_text("print('a')\n")
    (src / "README").write_text("readme\n")
    sandbox.upload(src, "/workspace/project")
    assert sandbox.exec("cat /workspace/project/pkg/a.py").stdout == "print('a')\n"
    sandbox.exec("echo built > /workspace/project/out.txt")
    dest = tmp_path / "back"
    sandbox.download("/workspace/project", dest)
    assert (dest / "out.txt").read_text() == "built\n"
    assert (dest / "pkg" / "a.py").read_text() == "print('a')\n"


def test_upload_single_file(sandbox: Sandbox, tmp_path: Path) -> None:
    f = tmp_path / "x.txt"
    f.write_text("hello")
    sandbox.upload(f, "/workspace/renamed.txt")
    assert sandbox.read_file("/workspace/renamed.txt") == b"hello"


def test_download_refuses_symlink_to_host_path(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.exec("mkdir /workspace/d && ln -s /etc/shadow /workspace/d/link")
    with pytest.raises(SandboxError, match="refusing to download"):
        sandbox.download("/workspace/d", tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_workspace_seeded_from_policy(tmp_path: Path) -> None:
    # Seeding is done by the owner (root), so the source need not be world-readable.
    tmp_path.chmod(0o700)
    (tmp_path / "main.py").write_text("print(6 * 7)\n")
    policy = make_policy(**{"filesystem.workspace": str(tmp_path)})
    with Sandbox.create(policy) as sb:
        assert sb.exec("python3 main.py").stdout == "42\n"


def test_output_cap_truncates_and_flags(sink: MemorySink) -> None:
    policy = make_policy(**{"resources.output_cap": "4KiB"})
    with Sandbox.create(policy, sink=sink) as sb:
        r = sb.exec("head -c 100000 /dev/zero | tr '\\0' a")
    assert r.truncated and len(r.stdout) == 4096
    hits = [e for e in sink.of_kind(EventKind.LIMIT_HIT) if e.data["limit"] == "output_cap"]
    assert hits and hits[0].data["bytes"] == 100000


def test_command_timeout_kills_whole_tree(sink: MemorySink) -> None:
    with Sandbox.create("default", sink=sink) as sb:
        r = sb.exec("sleep 100 & sleep 100", timeout=0.5)
        assert r.kill_reason == KillReason.TIMEOUT and r.exit_code == 137
        # The background sleep was in the command's process group: gone too.
        assert sb.exec("pgrep -c sleep || true").stdout.strip() == "0"
    kinds = [e.kind for e in sink.events]
    assert EventKind.LIMIT_HIT in kinds and EventKind.KILL in kinds


def test_events_carry_sandbox_episode_step_and_pid(sink: MemorySink) -> None:
    with Sandbox.create("default", sink=sink, episode_id="ep-7") as sb:
        sb.exec("true")
        sb.exec("true", step=5)
        sb.exec("true")
        sid = sb.id
    kinds = [e.kind for e in sink.events]
    assert kinds[0] == EventKind.SANDBOX_CREATED and kinds[-1] == EventKind.SANDBOX_CLOSED
    starts = sink.of_kind(EventKind.EXEC_START)
    assert [e.step for e in starts] == [0, 5, 6]
    assert all(e.sandbox_id == sid and e.episode_id == "ep-7" for e in sink.events)
    assert all(e.pid and e.pid > 1 for e in starts)
    ends = sink.of_kind(EventKind.EXEC_END)
    assert [e.data["exit_code"] for e in ends] == [0, 0, 0]


def test_exec_after_close_raises() -> None:
    sb = Sandbox.create("default")
    sb.close()
    sb.close()  # idempotent
    with pytest.raises(SandboxClosed):
        sb.exec("true")


def test_gateway_mode_without_gateway_fails_closed() -> None:
    with pytest.raises(GatewayError):
        Sandbox.create("networked")


def test_bad_read_only_bind_is_clear_error() -> None:
    policy = make_policy(**{"filesystem.read_only": [{"source": "/nonexistent/corral"}]})
    with pytest.raises(SandboxError, match="/nonexistent/corral: No such file"):
        Sandbox.create(policy)


def test_unshared_bind_source_is_a_clear_error(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    policy = make_policy(**{"filesystem.read_only": [{"source": str(private)}]})
    with pytest.raises(SandboxError, match=r"not (readable|searchable) by other users"):
        Sandbox.create(policy)


def test_hidden_paths_are_masked(shared_tmp: Path) -> None:
    tmp_path = shared_tmp
    (tmp_path / "secret.txt").write_text("s3cret")
    (tmp_path / "public.txt").write_text("ok")
    policy = make_policy(**{
        "filesystem.read_only": [{"source": str(tmp_path), "target": "/data"}],
        "filesystem.hidden": [],
    })
    with Sandbox.create(policy) as sb:
        assert sb.exec("cat /data/secret.txt").stdout == "s3cret"
    hide = make_policy(**{
        "filesystem.read_only": [{"source": str(tmp_path)}],
        "filesystem.hidden": [str(tmp_path / "secret.txt")],
    })
    with Sandbox.create(hide) as sb:
        assert sb.exec(f"cat {tmp_path}/public.txt").stdout == "ok"
        assert "s3cret" not in sb.exec(f"cat {tmp_path}/secret.txt").stdout


async def test_async_api_runs_concurrent_sandboxes() -> None:
    async def one(i: int) -> str:
        async with await AsyncSandbox.create("strict") as sb:
            r = await sb.exec(f"echo {i}")
            return r.stdout.strip()

    results = await asyncio.gather(*(one(i) for i in range(12)))
    assert results == [str(i) for i in range(12)]


async def test_async_concurrent_execs_in_one_sandbox() -> None:
    async with await AsyncSandbox.create("default") as sb:
        results = await asyncio.gather(*(sb.exec(f"sleep 0.2; echo {i}") for i in range(8)))
        assert sorted(r.stdout.strip() for r in results) == [str(i) for i in range(8)]


def test_streaming_callback_sees_output_in_order(sandbox: Sandbox) -> None:
    chunks: list[tuple[int, bytes]] = []
    sandbox.exec("for i in 1 2 3; do echo $i; sleep 0.05; done; echo e >&2",
                 on_output=lambda s, c: chunks.append((s, c)))
    assert b"".join(c for s, c in chunks if s == 1) == b"1\n2\n3\n"
    assert b"".join(c for s, c in chunks if s == 2) == b"e\n"


def test_close_leaves_no_process_cgroup_or_slot() -> None:
    from corral.sandbox.host import host

    sb = Sandbox.create("default")
    sb.exec("(setsid sleep 1000 &) ; sleep 1000 > /dev/null 2>&1 &")
    uid, sid = sb.uid, sb.id
    assert processes_of_uid(uid)
    sb.close()
    h = host()
    assert processes_of_uid(uid) == []
    assert sid not in h.cgroups.names()
    assert h.state.slot_owner(uid - 2_100_000_000) is None
    assert not h.state.has_record(sid)


def test_granted_gpu_missing_on_host_fails_before_start() -> None:
    from corral.errors import SandboxUnavailable
    from corral.sandbox.host import host

    before = set(host().cgroups.names())
    policy = make_policy(**{"gpu.devices": [7]})
    with pytest.raises(SandboxUnavailable, match="/dev/nvidia7 does not exist"):
        Sandbox.create(policy)
    assert set(host().cgroups.names()) == before
