"""GPU detectors on recorded NVML samples: no grant, wrong device, over budget, within budget."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from corral.errors import SandboxUnavailable
from corral.monitor import (
    MonitorConfig,
    NvmlProvider,
    RecordedGpuProvider,
    default_gpu_provider,
)
from corral.policy import Action, GpuPolicy, Policy
from tests.monitor.helpers import Harness, alive, respond_all, wait_for

GiB = 1024**3
FAST = MonitorConfig(gpu_interval=0.1, gpu_sustain_samples=3)
MINER_PID = 4242
TRAINER_PID = 31337


def _policy(gpu: GpuPolicy, action: Action = Action.LOG) -> Policy:
    return respond_all(action).model_copy(update={"gpu": gpu})


async def _run(
    make_harness: object, recording: str, recorded_pid: int, gpu: GpuPolicy, action: Action
) -> tuple[Harness, object, int]:
    """A sandbox with one live process that the recording's GPU process is mapped onto."""
    provider = RecordedGpuProvider(RecordedGpuProvider.builtin(recording))
    harness: Harness = await make_harness(config=FAST, gpu=provider)  # type: ignore[operator]
    sb = await harness.sandbox(_policy(gpu, action))
    pid = await harness.step(sb, 1, ["/bin/sleep", "20"])
    provider.remap(recorded_pid, pid)
    return harness, sb, pid


async def test_gpu_use_without_a_grant_is_critical_and_killed(make_harness: object) -> None:
    harness, sb, pid = await _run(make_harness, "miner", MINER_PID, GpuPolicy(), Action.KILL)
    await wait_for(lambda: harness.alerts(sb, "gpu.no_grant"))  # type: ignore[arg-type]
    alert = harness.alerts(sb, "gpu.no_grant")[0]  # type: ignore[arg-type]
    assert alert.pid == pid
    assert alert.data["severity"] == "critical"
    assert alert.data["evidence"]["device"] == 0
    await wait_for(lambda: not alive(pid))


async def test_training_within_budget_raises_nothing(make_harness: object) -> None:
    gpu = GpuPolicy(devices=[0], memory_budget=24 * GiB, utilization_budget=95)
    harness, sb, _ = await _run(make_harness, "training", TRAINER_PID, gpu, Action.KILL)
    await asyncio.sleep(1.0)
    assert not harness.alerts(sb)  # type: ignore[arg-type]


async def test_training_over_its_memory_budget_is_flagged(make_harness: object) -> None:
    gpu = GpuPolicy(devices=[0], memory_budget=8 * GiB)
    harness, sb, _ = await _run(make_harness, "training", TRAINER_PID, gpu, Action.LOG)
    await wait_for(lambda: harness.alerts(sb, "gpu.memory_over_budget"))  # type: ignore[arg-type]


async def test_sustained_utilisation_over_budget_is_flagged(make_harness: object) -> None:
    gpu = GpuPolicy(devices=[0], utilization_budget=80)
    harness, sb, _ = await _run(make_harness, "miner", MINER_PID, gpu, Action.LOG)
    rule = "gpu.utilization_over_budget"
    await wait_for(lambda: harness.alerts(sb, rule))  # type: ignore[arg-type]
    assert "3 samples" in harness.alerts(sb, rule)[0].data["explanation"]  # type: ignore[arg-type]


async def test_use_of_a_device_not_granted_is_flagged(make_harness: object) -> None:
    gpu = GpuPolicy(devices=[1])
    harness, sb, _ = await _run(make_harness, "miner", MINER_PID, gpu, Action.LOG)
    await wait_for(lambda: harness.alerts(sb, "gpu.device_not_granted"))  # type: ignore[arg-type]


def test_recordings_replay_in_order_and_hold_the_last_frame() -> None:
    provider = RecordedGpuProvider(RecordedGpuProvider.builtin("training"), {TRAINER_PID: 7})
    assert provider.devices()[0].name.startswith("NVIDIA")
    frames = [provider.sample() for _ in range(20)]
    assert all(s.pid == 7 for frame in frames for s in frame)
    assert frames[0][0].sm_util is None  # NVML has no utilisation sample yet at first
    assert frames[-1] == frames[-2]
    idle = RecordedGpuProvider(RecordedGpuProvider.builtin("idle"))
    assert idle.sample() == []
    with pytest.raises(ValueError):
        RecordedGpuProvider.builtin("nope")


def test_nvml_without_the_gpu_extra_or_a_driver_is_an_error() -> None:
    with pytest.raises(SandboxUnavailable):
        NvmlProvider()


def test_no_gpu_on_this_host_means_no_provider() -> None:
    if any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/nvidia0")):
        pytest.skip("this host has an NVIDIA device")
    assert default_gpu_provider() is None
