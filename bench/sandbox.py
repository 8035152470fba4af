#!/usr/bin/env python3
"""Sandbox benchmark: latency against bare baselines measured in the same run, concurrency,
and leftovers after many cycles and after a SIGKILLed owner. Prints one JSON object.

Run as root:  python bench/sandbox.py [--samples 200] [--concurrent 200] [--cycles 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from corral.policy import load_policy
from corral.sandbox import AsyncSandbox, Sandbox, collect
from corral.sandbox.host import host
from corral.sandbox.state import BASE_UID, MAX_SLOTS, processes_with_uid

TRUE = "/usr/bin/true"
BARE_BWRAP = ["bwrap", "--unshare-all", "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib",
              "/lib", "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/bin", "/bin",
              "--proc", "/proc", "--dev", "/dev", "--", TRUE]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(pct(values, 0.5) * 1e3, 3), "p95_ms": round(pct(values, 0.95) * 1e3, 3)}


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def latency(samples: int) -> dict[str, Any]:
    policy = load_policy("default")
    Sandbox.create(policy).close()  # warm caches: seccomp filter, supervisor binary, imports
    bare_subprocess = timed(lambda: subprocess.run([TRUE], check=True), samples)
    bare_bwrap = timed(lambda: subprocess.run(BARE_BWRAP, check=True), samples)
    create, first, close = [], [], []
    for _ in range(samples):
        t0 = time.perf_counter()
        sb = Sandbox.create(policy)
        t1 = time.perf_counter()
        sb.exec([TRUE])
        t2 = time.perf_counter()
        sb.close()
        t3 = time.perf_counter()
        create.append(t1 - t0)
        first.append(t2 - t0)
        close.append(t3 - t2)
    with Sandbox.create(policy) as sb:
        warm_exec = timed(lambda: sb.exec([TRUE]), samples)
        warm_shell = timed(lambda: sb.exec("true"), samples)
    bare_shell = timed(lambda: subprocess.run(["/bin/bash", "-c", "true"], check=True), samples)
    med = statistics.median
    return {
        "samples": samples,
        "bare_subprocess_true": summary(bare_subprocess),
        "bare_subprocess_bash_c": summary(bare_shell),
        "bare_bwrap_true": summary(bare_bwrap),
        "create": summary(create),
        "create_plus_first_exec": summary(first),
        "warm_exec_true": summary(warm_exec),
        "warm_exec_bash_c": summary(warm_shell),
        "close": summary(close),
        "ratios": {
            "create_plus_first_exec_vs_bare_bwrap_p50": round(med(first) / med(bare_bwrap), 2),
            "warm_exec_vs_bare_subprocess_p50": round(med(warm_exec) / med(bare_subprocess), 2),
            "warm_bash_c_vs_bare_bash_c_p50": round(med(warm_shell) / med(bare_shell), 2),
        },
    }


def sandbox_processes() -> list[psutil.Process]:
    out = []
    for pid in processes_with_uid(range(BASE_UID, BASE_UID + MAX_SLOTS)):
        with contextlib.suppress(psutil.NoSuchProcess):
            out.append(psutil.Process(pid))
    return out


async def concurrency(n: int) -> dict[str, Any]:
    policy = load_policy("strict")
    owner = psutil.Process()
    rss_before = owner.memory_info().rss
    gate = asyncio.Semaphore(16)  # bound start-up bursts on 2 cores, not the number alive

    async def start() -> AsyncSandbox:
        async with gate:
            return await AsyncSandbox.create(policy)

    t0 = time.perf_counter()
    results = await asyncio.gather(*(start() for _ in range(n)), return_exceptions=True)
    sandboxes = [r for r in results if isinstance(r, AsyncSandbox)]
    failures = [repr(r) for r in results if not isinstance(r, AsyncSandbox)]
    started = time.perf_counter() - t0
    execs = await asyncio.gather(*(sb.exec("echo ok") for sb in sandboxes),
                                 return_exceptions=True)
    exec_failures = [r for r in execs if not (hasattr(r, "stdout") and r.stdout == "ok\n")]
    alive = len(sandboxes)
    pss = 0
    for proc in sandbox_processes():
        try:
            pss += proc.memory_full_info().pss
        except psutil.Error:
            continue
    owner_delta = owner.memory_info().rss - rss_before
    await asyncio.gather(*(sb.close() for sb in sandboxes))
    return {
        "requested": n,
        "alive_at_once": alive,
        "create_failures": len(failures),
        "exec_failures": len(exec_failures),
        "first_failures": failures[:3],
        "start_all_s": round(started, 2),
        "host_pss_per_sandbox_kib": round(pss / max(alive, 1) / 1024, 1),
        "owner_rss_per_sandbox_kib": round(owner_delta / max(alive, 1) / 1024, 1),
    }


def _is_zombie(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def snapshot() -> dict[str, set[str]]:
    """Names of what exists now, so leftovers count only what appeared since."""
    h = host()
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    netns = Path("/run/netns")
    live = [p for p in sandbox_processes() if not _is_zombie(p)]
    return {
        "processes": {str(p.pid) for p in live},
        "zombies": {str(p.pid) for p in sandbox_processes() if _is_zombie(p)},
        "cgroups": set(h.cgroups.names()),
        "records": {r.sandbox_id for r in h.state.records()},
        "uid_slots": {str(s) for s in h.state.slots()},
        "mounts": {m for m in mounts if "corral" in m},
        "netns": {p.name for p in netns.iterdir() if "corral" in p.name}
        if netns.exists()
        else set(),
        "temp_dirs": {p.name for p in Path("/tmp").iterdir() if p.name.startswith("corral")},
    }


def leftovers(before: dict[str, set[str]], wait: float = 15.0) -> dict[str, Any]:
    """What appeared since ``before`` and is still there. Zombies are waited for (bounded):
    once an owner is SIGKILLed its sandboxes' processes are reaped by host pid 1, not by us."""
    t0 = time.monotonic()
    while True:
        now = snapshot()
        new = {k: len(now[k] - before[k]) for k in now}
        if new["zombies"] == 0 or time.monotonic() - t0 > wait:
            break
        time.sleep(0.1)
    new["zombies_reaped_by_host_init_after_s"] = round(time.monotonic() - t0, 2)
    return new


def cycles(n: int) -> dict[str, Any]:
    policy = load_policy("strict")
    before = snapshot()
    failures = 0
    t0 = time.perf_counter()
    for _ in range(n):
        try:
            with Sandbox.create(policy) as sb:
                sb.exec("sleep 100 & true")
        except OSError:
            failures += 1
    elapsed = time.perf_counter() - t0
    return {"cycles": n, "failures": failures, "seconds": round(elapsed, 1),
            "leftovers": leftovers(before)}


OWNER = """
import sys
from corral.sandbox import Sandbox
boxes = [Sandbox.create("strict") for _ in range(5)]
for b in boxes:
    b.exec("setsid nohup sleep 1000 > /dev/null 2>&1 &")
print("ready", flush=True)
sys.stdin.read()
"""


def killed_owner() -> dict[str, Any]:
    before = snapshot()
    proc = subprocess.Popen([sys.executable, "-c", OWNER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()
    alive = leftovers(before, wait=0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    report = collect()
    return {"owner_alive": alive, "gc_removed": len(report.sandboxes),
            "after_sigkill_and_gc": leftovers(before)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--concurrent", type=int, default=200)
    parser.add_argument("--cycles", type=int, default=1000)
    args = parser.parse_args()
    out = {
        "benchmark": "sandbox",
        "machine": {"cpus": os.cpu_count(), "cgroup_version": host().cgroups.version},
        "latency": latency(args.samples),
        "concurrency": asyncio.run(concurrency(args.concurrent)),
        "cycles": cycles(args.cycles),
        "killed_owner": killed_owner(),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
