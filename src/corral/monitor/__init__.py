"""The monitor: every process in every sandbox, watched as it runs, with detectors and responses.

Public API; everything else in this package is private.
"""

from corral.monitor.config import MonitorConfig
from corral.monitor.findings import Finding, Severity
from corral.monitor.gpu import (
    GpuDevice,
    GpuProcessSample,
    GpuProvider,
    NvmlProvider,
    RecordedGpuProvider,
    default_gpu_provider,
)
from corral.monitor.handle import SandboxHandle
from corral.monitor.monitor import ArgvChecker, Monitor
from corral.monitor.signatures import MinerSignatures

__all__ = [
    "ArgvChecker",
    "Finding",
    "GpuDevice",
    "GpuProcessSample",
    "GpuProvider",
    "MinerSignatures",
    "Monitor",
    "MonitorConfig",
    "NvmlProvider",
    "RecordedGpuProvider",
    "SandboxHandle",
    "Severity",
    "default_gpu_provider",
]
