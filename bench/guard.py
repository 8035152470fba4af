#!/usr/bin/env python3
"""Guard and monitor benchmark. Prints one JSON object.

Guard: throughput and latency of ``Guard.check`` over the shipped benign corpus,
against baselines measured in the same run on the same commands (bare
``bashlex.parse`` and ``shlex.split``). Single thread.

Monitor (real sandboxes, needs root): CPU overhead of watching 50 idle sandboxes,
against the same sandboxes unwatched; and time from a simulated miner's exec to its
kill, against a plain exec round trip in the same sandbox.

Run:  python bench/guard.py [--rounds 5] [--sandboxes 50] [--seconds 10] [--kill-runs 20]

Targets (from the issue): >= 5,000 commands/s and p99 <= 5 ms on one core; kill p95
<= 500 ms; monitor overhead <= 5% of one core with 50 sandboxes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bashlex
import bashlex.errors

from corral.agent import Environment
from corral.events import EventKind, MemorySink
from corral.guard import Guard
from corral.guard.corpus import benign_commands, read_corpus
from corral.guard.parser import parse_command
from corral.monitor import Monitor
from corral.policy import load_policy
from corral.sandbox import AsyncSandbox

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MALICIOUS = ROOT / "tests" / "guard" / "data" / "malicious_commands.txt"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(fn: Callable[[str], object], commands: list[str], rounds: int) -> dict[str, Any]:
    """Per-call latency (µs) over every command, ``rounds`` times; errors are counted."""
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    for _ in range(rounds):
        for command in commands:
            t0 = time.perf_counter_ns()
            try:
                fn(command)
            except (bashlex.errors.ParsingError, NotImplementedError, ValueError):
                errors += 1
            latencies.append((time.perf_counter_ns() - t0) / 1000)
    total = time.perf_counter() - start
    calls = len(commands) * rounds
    return {
        "calls": calls,
        "errors": errors,
        "commands_per_s": round(calls / total, 1),
        "p50_us": round(statistics.median(latencies), 1),
        "p99_us": round(pct(latencies, 0.99), 1),
        "max_us": round(max(latencies), 1),
    }


# A simulated miner: a CPU burner that stops by itself; the sandbox has no network.
_BURNER = "import time\nt = time.time()\nwhile time.time() - t < 20:\n    pass\n"
_RUN = "exec python3 /workspace/burn.py --url stratum+tcp://pool.sim.test:3333\n"


async def monitor_overhead(sandboxes: int, seconds: float) -> dict[str, Any]:
    """Owner CPU with N idle sandboxes, unwatched then watched: the difference is the monitor."""
    policy = load_policy("strict")
    boxes = [await AsyncSandbox.create(policy) for _ in range(sandboxes)]
    try:
        for box in boxes:
            await box.exec("sleep 1000 > /dev/null 2>&1 &")
        await asyncio.sleep(1.0)
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        unwatched = (time.process_time() - cpu0) / (time.monotonic() - wall0)
        sink = MemorySink(maxlen=10_000)
        async with Monitor(sink) as monitor:
            for box in boxes:
                await monitor.watch(box)
            await asyncio.sleep(1.0)  # start-up scan settles
            cpu0, wall0 = time.process_time(), time.monotonic()
            await asyncio.sleep(seconds)
            watched = (time.process_time() - cpu0) / (time.monotonic() - wall0)
            processes = sum(len(monitor.processes(b.id)) for b in boxes)
    finally:
        await asyncio.gather(*(b.close() for b in boxes))
    return {
        "sandboxes": sandboxes,
        "processes_watched": processes,
        "seconds": seconds,
        "owner_core_fraction_unwatched": round(unwatched, 5),
        "owner_core_fraction_watched": round(watched, 5),
        "monitor_overhead_percent_of_one_core": round(100 * (watched - unwatched), 2),
    }


async def time_to_kill(runs: int) -> dict[str, Any]:
    """Harmful exec to kill, for a miner hidden in a script (only the monitor can see it)."""
    policy = load_policy("default", {"response.critical": "kill", "response.high": "kill"})
    sink = MemorySink(maxlen=100_000)
    latencies: list[float] = []
    missed = 0
    async with Monitor(sink, check_argv=Guard.from_policy(policy).check_argv) as monitor:
        env = await Environment.create(policy, monitor=monitor)
        try:
            await env.sandbox.write_file("/workspace/burn.py", _BURNER)
            await env.sandbox.write_file("/workspace/run.sh", _RUN)
            plain = [(await env.sandbox.exec(["/bin/true"])).duration for _ in range(runs)]
            for step in range(runs):
                before = len(sink.of_kind(EventKind.RESPONSE))
                result = await env.execute("bash /workspace/run.sh", step=step, timeout=30)
                responses = sink.of_kind(EventKind.RESPONSE)[before:]
                if result.exit_code != 137 or not responses:
                    missed += 1
                    continue
                latencies.append(responses[0].data["latency_ms"])
        finally:
            await env.close()
    p50 = statistics.median(latencies) if latencies else float("nan")
    return {
        "runs": runs,
        "missed": missed,
        "exec_to_kill_ms": {"p50": round(p50, 2), "p95": round(pct(latencies, 0.95), 2),
                            "max": round(max(latencies), 2)} if latencies else None,
        "baseline_exec_round_trip_ms_p50": round(statistics.median(plain) * 1000, 3),
        "ratio_kill_p50_vs_exec_round_trip": round(p50 / (statistics.median(plain) * 1000), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--malicious", type=Path, default=DEFAULT_MALICIOUS)
    parser.add_argument("--sandboxes", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--kill-runs", type=int, default=20)
    parser.add_argument("--guard-only", action="store_true", help="skip the monitor (no root)")
    args = parser.parse_args()

    guard = Guard()
    commands = benign_commands()
    guard.check("warm up")  # rules are compiled once per process, not per call

    result: dict[str, Any] = {
        "corpus": "corral/guard/data/benign_commands.txt",
        "commands": len(commands),
        "rounds": args.rounds,
        "parse_modes": dict(Counter(str(parse_command(c).mode) for c in commands)),
        "rules": len(guard.rules),
    }
    result["guard_check"] = measure(guard.check, commands, args.rounds)
    result["baseline_bashlex_parse"] = measure(bashlex.parse, commands, args.rounds)
    result["baseline_shlex_split"] = measure(shlex.split, commands, args.rounds)
    g = result["guard_check"]
    result["ratios"] = {
        "guard_vs_bashlex_throughput": round(
            g["commands_per_s"] / result["baseline_bashlex_parse"]["commands_per_s"], 2
        ),
        "guard_vs_shlex_throughput": round(
            g["commands_per_s"] / result["baseline_shlex_split"]["commands_per_s"], 3
        ),
    }
    if args.malicious.is_file():
        malicious = [line.partition(": ")[2] for line in read_corpus(args.malicious)]
        result["guard_check_malicious"] = measure(guard.check, malicious, args.rounds)
    result["targets"] = {
        "commands_per_s>=5000": g["commands_per_s"] >= 5000,
        "p99_ms<=5": g["p99_us"] <= 5000,
    }
    if not args.guard_only:
        overhead = asyncio.run(monitor_overhead(args.sandboxes, args.seconds))
        kill = asyncio.run(time_to_kill(args.kill_runs))
        result["monitor_overhead"] = overhead
        result["time_to_kill"] = kill
        result["targets"]["monitor_overhead<=5%"] = (
            overhead["monitor_overhead_percent_of_one_core"] <= 5
        )
        result["targets"]["kill_p95_ms<=500"] = bool(
            kill["exec_to_kill_ms"] and kill["exec_to_kill_ms"]["p95"] <= 500
        )
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
