"""Sandbox: bubblewrap namespaces entered as an unprivileged uid, with seccomp and cgroups."""

from corral.sandbox.cgroups import CgroupStats
from corral.sandbox.gc import GcReport, collect
from corral.sandbox.result import ExecResult, KillReason
from corral.sandbox.runtime import AsyncSandbox, GatewayLike, NetworkAttachment, OutputCallback
from corral.sandbox.sync import Sandbox

__all__ = [
    "AsyncSandbox",
    "CgroupStats",
    "ExecResult",
    "GatewayLike",
    "GcReport",
    "KillReason",
    "NetworkAttachment",
    "OutputCallback",
    "Sandbox",
    "collect",
]
