#!/usr/bin/env python3
"""Guard benchmark: throughput and latency of ``Guard.check`` over the shipped benign
corpus, against baselines measured in the same run on the same commands (bare
``bashlex.parse`` and ``shlex.split``). Single thread. Prints one JSON object.

Run:  python bench/guard.py [--rounds 5] [--malicious tests/guard/data/malicious_commands.txt]

Targets (from the issue): >= 5,000 commands/s and p99 <= 5 ms on one core.
"""

from __future__ import annotations

import argparse
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

from corral.guard import Guard
from corral.guard.corpus import benign_commands, read_corpus
from corral.guard.parser import parse_command

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--malicious", type=Path, default=DEFAULT_MALICIOUS)
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
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
