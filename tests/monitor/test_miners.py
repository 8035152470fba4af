"""A simulated miner is killed when it starts, whatever it is called or however it was started."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path

from corral.events import EventKind
from corral.monitor import MinerSignatures
from corral.monitor.testing import LocalSandbox
from corral.policy import Action, Policy
from tests.monitor.helpers import BURNER, POOL, PYTHON, Harness, alive, respond_all, wait_for

KILL = respond_all(Action.KILL)


def _install(sb: LocalSandbox, source: Path, name: str) -> Path:
    """Copy a binary into the sandbox's home, where its uid can run it."""
    assert sb.home is not None
    target = sb.home / name
    shutil.copy(source, target)
    return target


async def _assert_killed(harness: Harness, sb: object, pid: int, rule_id: str) -> None:
    await wait_for(lambda: harness.alerts(sb, rule_id))  # type: ignore[arg-type]
    await wait_for(lambda: not alive(pid))
    alert_id = harness.alerts(sb, rule_id)[0].data["alert_id"]  # type: ignore[arg-type]

    def responses() -> list:
        return [
            e
            for e in harness.of(EventKind.RESPONSE, sb)  # type: ignore[arg-type]
            if alert_id in e.data["alert_ids"]
        ]

    await wait_for(responses)
    response = responses()[0]
    assert response.data["action"] == "kill"
    assert response.data["ok"] is True
    assert response.data["latency_ms"] >= 0


async def test_burner_with_a_pool_url_is_killed(harness: Harness) -> None:
    sb = await harness.sandbox(KILL)
    pid = await harness.step(sb, 1, [PYTHON, "-c", BURNER, POOL])
    await _assert_killed(harness, sb, pid, "miner.pool_url")
    alert = harness.alerts(sb, "miner.pool_url")[0]
    assert alert.data["attack"] == "T1496"
    assert alert.data["severity"] == "critical"
    assert alert.step == 1
    assert alert.pid == pid
    assert POOL in alert.data["argv"]


async def test_burner_renamed_to_python3_is_still_caught_by_its_argv(harness: Harness) -> None:
    sb = await harness.sandbox(KILL, expected=("python3*",))
    disguised = _install(sb, Path(PYTHON).resolve(), "python3")
    pid = await harness.step(sb, 2, [str(disguised), "-c", BURNER, POOL])
    await _assert_killed(harness, sb, pid, "miner.pool_url")


async def test_known_miner_name_is_caught(harness: Harness) -> None:
    sb = await harness.sandbox(KILL)
    # /bin/sleep wearing a miner's name: harmless, but it must die for the name.
    fake = _install(sb, Path("/bin/sleep"), "xmrig")
    pid = await harness.step(sb, 1, [str(fake), "20"])
    await _assert_killed(harness, sb, pid, "miner.name")


async def test_miner_flags_and_algorithms_are_recognised() -> None:
    sigs = MinerSignatures.builtin()
    rules = {f.rule_id for f in sigs.match_exec(["./w", "--donate-level", "1", "-a", "rx/0"], None)}
    assert rules == {"miner.flag", "miner.algorithm"}
    pool = sigs.match_exec(["curl", "https://xmr.pool.minexmr.com/api"], None)
    assert [f.rule_id for f in pool] == ["miner.pool_domain"]
    assert sigs.match_exec(["python3", "train.py", "--epochs", "3"], "/usr/bin/python3.11") == []
    assert sigs.match_exec(["grep", "-a", "pattern", "file"], None) == []


async def test_known_hash_is_caught_under_any_name(make_harness: object, tmp_path: Path) -> None:
    binary = tmp_path / "innocent-worker"
    shutil.copy("/bin/sleep", binary)
    tmp_path.chmod(0o755)
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    sigs = MinerSignatures.builtin().with_hashes({digest: "test-miner"})
    harness: Harness = await make_harness(signatures=sigs)  # type: ignore[operator]
    sb = await harness.sandbox(KILL)
    pid = await harness.step(sb, 1, [str(binary), "20"])
    await _assert_killed(harness, sb, pid, "miner.hash")


async def test_guard_rules_catch_a_miner_started_from_inside_python(harness: Harness) -> None:
    # The step itself is python; the harmful command line is python's own argv here,
    # and would be the child's if it got as far as os.system (it is killed first).
    code = f"import os, time; time.sleep(10); os.system('xmrig -o {POOL}')"
    sb = await harness.sandbox(KILL)
    pid = await harness.step(sb, 1, [PYTHON, "-c", code])
    await _assert_killed(harness, sb, pid, "mining.stratum")
    guard = harness.alerts(sb, "mining.stratum")[0]
    assert guard.data["detector"] == "guard"


async def test_script_written_now_and_run_later_is_caught_at_exec(harness: Harness) -> None:
    sb = await harness.sandbox(KILL)
    assert sb.home is not None
    script = sb.home / "job.sh"
    # Written by the agent's file tool, not by a command: nothing runs yet.
    script.write_text(f'{PYTHON} -c "$BURN" {POOL}\n')
    await harness.step(sb, 1, ["/bin/cat", str(script)])
    await asyncio.sleep(0.3)
    assert not harness.alerts(sb)  # neither writing nor reading it is harmful
    top = await harness.step(sb, 2, ["/usr/bin/env", f"BURN={BURNER}", "/bin/sh", str(script)])

    def miner_alert() -> list:
        return harness.alerts(sb, "miner.pool_url")

    await wait_for(miner_alert)
    alert = miner_alert()[0]
    assert alert.step == 2
    assert alert.data["ancestors"][0]["pid"] == top
    await wait_for(lambda: not alive(alert.pid))


async def test_a_background_loop_turning_harmful_later_is_traced_to_its_step(
    harness: Harness,
) -> None:
    sb = await harness.sandbox(KILL)
    # The URL is assembled only when the burner starts, so no argv before it shows it.
    hidden = POOL.replace("://", ':/""/')
    loop = (
        f'i=0; while [ $i -lt 3 ]; do /bin/sleep 0.2; i=$((i+1)); done; exec "$0" -c "$1" {hidden}'
    )
    # Step 1 starts the loop in the background and returns at once.
    step1 = await harness.step(
        sb,
        1,
        [
            "/bin/sh",
            "-c",
            'setsid /bin/sh -c "$0" "$1" "$2" & exit 0',
            loop,
            PYTHON,
            BURNER,
        ],
    )
    bystander = await harness.step(sb, 2, ["/bin/sleep", "5"])
    await wait_for(lambda: harness.alerts(sb, "miner.pool_url"), timeout=5)
    alert = harness.alerts(sb, "miner.pool_url")[0]
    assert alert.step == 1  # the step that started it, not the one running now
    assert step1 in [a["pid"] for a in alert.data["ancestors"]]
    await wait_for(lambda: not alive(alert.pid))
    assert alive(bystander)  # step 2 did nothing wrong


async def test_default_policy_ends_the_episode_for_a_miner(harness: Harness) -> None:
    sb = await harness.sandbox(Policy())
    other = await harness.step(sb, 1, ["/bin/sleep", "20"])
    await harness.step(sb, 2, [PYTHON, "-c", BURNER, POOL])
    await wait_for(lambda: sb.closed_reason is not None)
    assert sb.closed_reason.startswith(("mining.stratum", "miner.pool_url"))
    await wait_for(lambda: not alive(other))
