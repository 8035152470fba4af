"""Policy: the typed, validated description of what a sandbox may do."""

from corral.policy.loader import PROFILE_NAMES, list_profiles, load_policy
from corral.policy.model import (
    Action,
    AllowRule,
    Bind,
    DetectorThresholds,
    FilesystemPolicy,
    GpuPolicy,
    GuardPolicy,
    NetworkPolicy,
    Policy,
    Protocol,
    ResourcePolicy,
    ResponsePolicy,
    Verdict,
)
from corral.policy.units import format_size, parse_duration, parse_size

__all__ = [
    "PROFILE_NAMES",
    "Action",
    "AllowRule",
    "Bind",
    "DetectorThresholds",
    "FilesystemPolicy",
    "GpuPolicy",
    "GuardPolicy",
    "NetworkPolicy",
    "Policy",
    "Protocol",
    "ResourcePolicy",
    "ResponsePolicy",
    "Verdict",
    "format_size",
    "list_profiles",
    "load_policy",
    "parse_duration",
    "parse_size",
]
