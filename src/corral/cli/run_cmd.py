"""``corral run``: one command in a fresh sandbox, streamed, with its exit code."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from corral.agent import Environment
from corral.events import CallbackSink, Event, EventKind, EventSink, FanoutSink, JsonlSink
from corral.gateway import Gateway
from corral.guard import CliApprover, Guard
from corral.monitor import Monitor
from corral.policy import Policy, Verdict, load_policy
from corral.sandbox import ExecResult, KillReason, OutputCallback

from .output import err_console, fail


def _describe(event: Event) -> str | None:
    data = event.data
    if event.kind == EventKind.LIMIT_HIT:
        extra = f" ({data['path']})" if "path" in data else ""
        return f"limit hit: {data.get('limit')}{extra} = {data.get('value')}"
    if event.kind == EventKind.KILL:
        return f"killed ({data.get('scope')}): {data.get('reason')}"
    if event.kind == EventKind.NET_CONNECT and data.get("verdict") == "deny":
        where = f"{data.get('dst')}:{data.get('port')}"
        proto = data.get("protocol") or data.get("transport")
        return f"blocked {proto} connection to {where}: {data.get('reason')}"
    if event.kind == EventKind.NET_DNS and data.get("verdict") == "deny":
        return f"blocked DNS query for {data.get('name')}: {data.get('reason')}"
    if event.kind == EventKind.NET_SIGNAL:
        return f"violation: {data.get('signal')} ({data.get('severity')})"
    if event.kind == EventKind.ALERT:
        return f"violation: {data.get('rule_id')}: {data.get('explanation', '')}"
    if event.kind == EventKind.RESPONSE:
        return f"response: {data.get('action')} after {data.get('latency_ms')} ms"
    return None


def build_policy(
    policy: str | None,
    *,
    workspace: Path | None = None,
    timeout: float | None = None,
    cpus: float | None = None,
    memory: str | None = None,
    pids: int | None = None,
) -> Policy:
    overrides: dict[str, Any] = {}
    names: dict[str, str] = {}

    def put(field: str, flag: str, value: Any) -> None:
        if value is not None:
            overrides[field] = value
            names[field] = flag

    put("filesystem.workspace", "--workspace", str(workspace) if workspace else None)
    put("resources.cpus", "--cpus", cpus)
    put("resources.memory", "--memory", memory)
    put("resources.pids", "--pids", pids)
    put("resources.command_timeout", "--timeout", timeout)
    if timeout is not None and timeout > 0:
        base = load_policy(policy)
        # One command is the whole sandbox's life here, so the sandbox must last as long.
        if timeout > base.resources.sandbox_timeout:
            put("resources.sandbox_timeout", "--timeout", timeout)
    return load_policy(policy, overrides, override_names=names)


def run(
    command: Annotated[list[str], typer.Argument(help="The command and its arguments.")],
    policy: Annotated[
        str | None, typer.Option("--policy", "-p", help="Profile name or policy file.")
    ] = None,
    workspace: Annotated[
        Path | None, typer.Option(help="Host directory copied into the workspace.")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Wall-time limit in seconds.")] = None,
    cpus: Annotated[float | None, typer.Option(help="CPU quota in cores.")] = None,
    memory: Annotated[str | None, typer.Option(help="Memory limit, e.g. 512MiB.")] = None,
    pids: Annotated[int | None, typer.Option(help="Max processes.")] = None,
    events: Annotated[
        Path | None, typer.Option(help="Append every event to this JSON-lines file.")
    ] = None,
) -> None:
    """Run COMMAND in a fresh sandbox, stream its output and exit with its code.

    The guard checks COMMAND first (a refused command does not run: exit 126) and the
    monitor watches everything it starts.
    """
    if workspace is not None and not workspace.is_dir():
        fail(f"--workspace: {workspace} is not a directory")
        raise typer.Exit(2)
    resolved = build_policy(
        policy, workspace=workspace, timeout=timeout, cpus=cpus, memory=memory, pids=pids
    )

    def report(event: Event) -> None:
        line = _describe(event)
        if line:
            err_console.print(f"[yellow]corral:[/] {line}", markup=True)

    sinks: list[Any] = [CallbackSink(report)]
    if events is not None:
        sinks.append(JsonlSink(events))
    out, err = sys.stdout.buffer, sys.stderr.buffer

    def stream(which: int, chunk: bytes) -> None:
        target = out if which == 1 else err
        target.write(chunk)
        target.flush()

    cmd: str | list[str] = command[0] if len(command) == 1 else command
    try:
        result = asyncio.run(_run_once(resolved, cmd, FanoutSink(sinks), stream))
    except KeyboardInterrupt:
        err_console.print("corral: interrupted; sandbox closed")
        raise typer.Exit(130) from None
    if result.denied:
        err.write(result.stderr.encode())
        err.flush()
    if result.truncated:
        err_console.print(
            f"corral: output truncated at {resolved.resources.output_cap} bytes", markup=False
        )
    if result.kill_reason == KillReason.TIMEOUT:
        err_console.print(f"corral: command timed out after {resolved.resources.command_timeout}s")
    raise typer.Exit(result.exit_code)


async def _run_once(
    policy: Policy, cmd: str | list[str], sink: EventSink, stream: OutputCallback
) -> ExecResult:
    interactive = sys.stdin.isatty()
    # A person at a terminal can answer "ask" (and look at what the parser could not read).
    guard = Guard.from_policy(
        policy,
        approver=CliApprover() if interactive else None,
        unparsable=Verdict.ASK if interactive else None,
    )
    async with contextlib.AsyncExitStack() as stack:
        gateway = None
        if policy.network.mode == "gateway":
            # The gateway relays on this loop; it lives exactly as long as the sandbox.
            gateway = await stack.enter_async_context(Gateway(pool_size=1))
        monitor = await stack.enter_async_context(Monitor(sink, check_argv=guard.check_argv))
        env = await Environment.create(policy, sink=sink, gateway=gateway, monitor=monitor,
                                       guard=guard if policy.guard.enabled else None)
        stack.push_async_callback(env.close)
        return await env.execute(cmd, on_output=stream)
