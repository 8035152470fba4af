"""Corral: run tool-using AI agents so they cannot do what nobody asked, and trace what they try.

The public API is ``__all__`` below. Names load on first use, so ``import corral`` stays
cheap (the CLI and the policy tools need neither netlink nor the shell parser).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # errors
    "CorralError": "corral.errors",
    "PolicyError": "corral.errors",
    "SandboxError": "corral.errors",
    "SandboxUnavailable": "corral.errors",
    "SandboxClosed": "corral.errors",
    "GatewayError": "corral.errors",
    "GuardDenied": "corral.errors",
    "AuditError": "corral.errors",
    # policy and events
    "Policy": "corral.policy",
    "load_policy": "corral.policy",
    "Event": "corral.events",
    "EventKind": "corral.events",
    "EventSink": "corral.events",
    "MemorySink": "corral.events",
    "JsonlSink": "corral.events",
    # the four mechanisms
    "Sandbox": "corral.sandbox",
    "AsyncSandbox": "corral.sandbox",
    "ExecResult": "corral.sandbox",
    "KillReason": "corral.sandbox",
    "Gateway": "corral.gateway",
    "Guard": "corral.guard",
    "Monitor": "corral.monitor",
    # composed
    "Environment": "corral.agent",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'corral' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
