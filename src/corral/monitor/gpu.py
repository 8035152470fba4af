"""GPU use per process: NVML where a GPU exists, recorded NVML samples where none does.

NVML reports host pids, which is what the process table is keyed by. The
``nvidia-ml-py`` package (module ``pynvml``) is the optional extra ``gpu`` and
is imported only by :class:`NvmlProvider`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from corral.errors import SandboxUnavailable

RECORDINGS = ("idle", "training", "miner")


@dataclass(frozen=True, slots=True)
class GpuDevice:
    index: int
    name: str
    memory_total: int  # bytes


@dataclass(frozen=True, slots=True)
class GpuProcessSample:
    """One process on one device at one instant."""

    device: int
    pid: int
    used_memory: int  # bytes
    sm_util: float | None  # percent of the device's SMs over NVML's sample window


@runtime_checkable
class GpuProvider(Protocol):
    def devices(self) -> list[GpuDevice]: ...

    def sample(self) -> list[GpuProcessSample]: ...

    def close(self) -> None: ...


class NvmlProvider:
    """Live samples through NVML. Raises SandboxUnavailable if NVML cannot start."""

    def __init__(self) -> None:
        try:
            import pynvml  # the optional 'gpu' extra
        except ImportError as exc:
            raise SandboxUnavailable(
                "a GPU is present but nvidia-ml-py is not installed (pip install 'corral[gpu]')"
            ) from exc
        self._nvml: Any = pynvml
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._devices = [
                GpuDevice(
                    i,
                    _text(pynvml.nvmlDeviceGetName(h)),
                    int(pynvml.nvmlDeviceGetMemoryInfo(h).total),
                )
                for i, h in enumerate(self._handles)
            ]
        except pynvml.NVMLError as exc:
            raise SandboxUnavailable(f"NVML failed to start: {exc}") from exc
        self._last_seen = [0] * len(self._handles)

    def devices(self) -> list[GpuDevice]:
        return list(self._devices)

    def sample(self) -> list[GpuProcessSample]:
        nvml = self._nvml
        out: list[GpuProcessSample] = []
        for index, handle in enumerate(self._handles):
            try:
                procs = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except nvml.NVMLError:
                procs = []
            util: dict[int, float] = {}
            try:
                # Only samples newer than the last call, so each is counted once.
                for s in nvml.nvmlDeviceGetProcessUtilization(handle, self._last_seen[index]):
                    util[int(s.pid)] = max(util.get(int(s.pid), 0.0), float(s.smUtil))
                    self._last_seen[index] = max(self._last_seen[index], int(s.timeStamp))
            except nvml.NVMLError:
                pass  # NVML_ERROR_NOT_FOUND: no process used the SMs since the last call
            seen = set()
            for p in procs:
                pid = int(p.pid)
                seen.add(pid)
                used = p.usedGpuMemory
                out.append(GpuProcessSample(index, pid, int(used or 0), util.get(pid)))
            out.extend(
                GpuProcessSample(index, pid, 0, u) for pid, u in util.items() if pid not in seen
            )
        return out

    def close(self) -> None:
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RecordedGpuProvider:
    """Replays recorded NVML samples, one recorded frame per ``sample()`` call.

    Recorded pids mean nothing on this host, so ``pid_map`` maps them to live
    pids; unmapped pids are replayed as they are. After the last frame the last
    one repeats (a steady state), so detectors that need a sustained signal see one.
    """

    def __init__(self, path: str | Path, pid_map: Mapping[int, int] | None = None) -> None:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        self._devices = [
            GpuDevice(int(d["index"]), str(d["name"]), int(d["memory_total"]))
            for d in raw["devices"]
        ]
        self._pid_map = dict(pid_map or {})
        self._frames = [
            [
                GpuProcessSample(
                    int(p["device"]),
                    int(p["pid"]),
                    int(p["used_memory"]),
                    None if p.get("sm_util") is None else float(p["sm_util"]),
                )
                for p in frame["processes"]
            ]
            for frame in raw["samples"]
        ]
        if not self._frames:
            raise ValueError(f"{path}: no samples recorded")
        self._next = 0

    def remap(self, recorded_pid: int, live_pid: int) -> None:
        """Replay ``recorded_pid`` as ``live_pid`` from now on (a process started later)."""
        self._pid_map[recorded_pid] = live_pid

    @staticmethod
    def builtin(name: str) -> Path:
        """Path of a shipped recording: ``idle``, ``training`` or ``miner``."""
        if name not in RECORDINGS:
            raise ValueError(f"no recording {name!r}; choose from {', '.join(RECORDINGS)}")
        return Path(str(resources.files("corral.monitor") / "data" / f"gpu_{name}.json"))

    def devices(self) -> list[GpuDevice]:
        return list(self._devices)

    def sample(self) -> list[GpuProcessSample]:
        frame = self._frames[min(self._next, len(self._frames) - 1)]
        self._next += 1
        return [
            GpuProcessSample(s.device, self._pid_map.get(s.pid, s.pid), s.used_memory, s.sm_util)
            for s in frame
        ]

    def close(self) -> None:
        return None


def default_gpu_provider() -> GpuProvider | None:
    """NVML if this host has an NVIDIA GPU, None if it has none.

    With a GPU present, NVML failing is an error, not a reason to stop watching it.
    """
    if not any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/nvidia0")):
        return None
    return NvmlProvider()
