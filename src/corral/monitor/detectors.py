"""Detectors that look at behaviour rather than at a command line: CPU, GPU, network, guard.

Each returns findings; the monitor ties them to a process and step and
decides the response. Signature and persistence checks live in
``signatures.py`` and ``persistence.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import PurePosixPath
from typing import Any

from corral.monitor.findings import (
    DNS_C2,
    EXFILTRATION_ALT_PROTOCOL,
    NETWORK_SERVICE_DISCOVERY,
    PROTOCOL_TUNNELING,
    RESOURCE_HIJACKING,
    SEVERITY_ORDER,
    Finding,
    Severity,
)
from corral.monitor.gpu import GpuProcessSample
from corral.monitor.process_table import ProcessRecord
from corral.policy import GpuPolicy, GuardPolicy, Verdict

# --- guard rules at run time --------------------------------------------------


def guard_findings(result: Any) -> list[Finding]:
    """Findings of a 'deny' verdict from the guard's engine; 'ask' and 'allow' raise nothing.

    'ask' is not an alert at run time: a step the approver allowed runs its
    subcommands, and those would otherwise be asked about again with no one to ask.
    """
    verdict = str(getattr(result, "verdict", "deny")).lower()
    if verdict not in (Verdict.DENY, "verdict.deny"):
        return []
    out = [
        Finding(
            detector="guard",
            rule_id=str(getattr(f, "rule_id", "guard.deny")),
            category=str(getattr(f, "category", "guard")),
            severity=Severity.parse(getattr(f, "severity", "high")),
            attack=str(getattr(f, "attack", "") or ""),
            explanation=str(getattr(f, "explanation", "denied by the guard")),
        )
        for f in getattr(result, "findings", None) or ()
        # A finding that carries its own verdict counts only if it is the deny.
        if str(getattr(f, "verdict", Verdict.DENY)).lower() == Verdict.DENY
    ]
    return out or [
        Finding("guard", "guard.deny", "guard", Severity.HIGH, "", "denied by the guard")
    ]


def guard_failure(policy: GuardPolicy, argv: list[str], error: BaseException) -> list[Finding]:
    """The guard could not judge a command: use the policy's verdict for unparsable input."""
    if policy.unparsable != Verdict.DENY:
        return []
    return [
        Finding(
            detector="guard",
            rule_id="guard.unparsable",
            category="guard",
            severity=Severity.HIGH,
            attack="",
            explanation=f"the guard could not check this command ({type(error).__name__})",
            evidence={"error": str(error)[:200], "argc": len(argv)},
        )
    ]


# --- CPU ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExpectedWorkload:
    """Program names (glob patterns) an episode is expected to run busy, e.g. ``python3*``.

    Matched against argv[0]'s basename, the executable's basename and comm. A
    renamed binary matches by its new name: this only spares expected work from
    the saturation alert; miner signatures and hashes still apply to everything.
    """

    patterns: tuple[str, ...] = ()

    def matches(self, record: ProcessRecord) -> bool:
        names = {record.name, record.comm or ""}
        if record.exe:
            names.add(PurePosixPath(record.exe.removesuffix(" (deleted)")).name)
        return any(fnmatchcase(n, p) for n in names if n for p in self.patterns)


class CpuSaturation:
    """A process above ``threshold`` cores for ``seconds`` in a row, outside the expected work."""

    def __init__(self, threshold: float, seconds: float) -> None:
        self.threshold = threshold
        self.seconds = seconds

    def check(
        self, record: ProcessRecord, now: float, expected: ExpectedWorkload
    ) -> Finding | None:
        if record.cpu_fraction < self.threshold:
            record.saturated_since = None
            return None
        if record.saturated_since is None:
            record.saturated_since = now
            return None
        if now - record.saturated_since < self.seconds or expected.matches(record):
            return None
        return Finding(
            detector="cpu_saturation",
            rule_id="cpu.saturation",
            category="resource_hijacking",
            severity=Severity.HIGH,
            attack=RESOURCE_HIJACKING,
            explanation=(
                f"{record.name!r} used {record.cpu_fraction:.0%} of a core for "
                f"{now - record.saturated_since:.1f}s and is not part of the expected workload"
            ),
            evidence={"cpu_cores": round(record.cpu_fraction, 3)},
        )


# --- GPU ----------------------------------------------------------------------------


def _gpu(rule_id: str, severity: Severity, explanation: str, s: GpuProcessSample) -> Finding:
    return Finding(
        detector="gpu",
        rule_id=rule_id,
        category="resource_hijacking",
        severity=severity,
        attack=RESOURCE_HIJACKING,
        explanation=explanation,
        evidence={"device": s.device, "used_memory": s.used_memory, "sm_util": s.sm_util},
    )


def gpu_findings(s: GpuProcessSample, policy: GpuPolicy, over_util_samples: int) -> list[Finding]:
    """Findings for one process sample. ``over_util_samples``: consecutive samples over budget."""
    mib = s.used_memory // 1024**2
    util = "?" if s.sm_util is None else f"{s.sm_util:.0f}"
    if not policy.devices:
        if s.used_memory > 0 or (s.sm_util or 0) > 0:
            return [
                _gpu(
                    "gpu.no_grant",
                    Severity.CRITICAL,
                    f"uses GPU {s.device} ({mib} MiB, {util}% SM) but the sandbox has no GPU",
                    s,
                )
            ]
        return []
    if s.device not in policy.devices:
        return [
            _gpu(
                "gpu.device_not_granted",
                Severity.HIGH,
                f"uses GPU {s.device}, which is not among the granted {policy.devices}",
                s,
            )
        ]
    out = []
    if policy.memory_budget is not None and s.used_memory > policy.memory_budget:
        out.append(
            _gpu(
                "gpu.memory_over_budget",
                Severity.HIGH,
                f"uses {mib} MiB on GPU {s.device}, over the budget of "
                f"{policy.memory_budget // 1024**2} MiB",
                s,
            )
        )
    if over_util_samples > 0 and s.sm_util is not None:
        out.append(
            _gpu(
                "gpu.utilization_over_budget",
                Severity.HIGH,
                f"kept GPU {s.device} at {util}% SM for {over_util_samples} samples, over the "
                f"budget of {policy.utilization_budget:.0f}%",
                s,
            )
        )
    return out


# --- network signals from the gateway ----------------------------------------------

# Keyed by the gateway's signal names (corral.gateway's ``net.signal`` events).
_SIGNALS: dict[str, tuple[Severity, str, str, str]] = {
    "mining_stratum": (
        Severity.CRITICAL,
        RESOURCE_HIJACKING,
        "cryptomining",
        "a connection speaks the stratum mining protocol",
    ),
    "mining_pool_dns": (
        Severity.HIGH,
        RESOURCE_HIJACKING,
        "cryptomining",
        "a DNS lookup of a known mining pool",
    ),
    "ssh_outbound": (
        Severity.HIGH,
        PROTOCOL_TUNNELING,
        "tunnel",
        "an outbound SSH connection, the usual carrier of reverse tunnels",
    ),
    "tunnel_service_dns": (
        Severity.HIGH,
        PROTOCOL_TUNNELING,
        "tunnel",
        "a DNS lookup of a tunnelling service (ngrok, serveo, ...)",
    ),
    "scan": (
        Severity.MEDIUM,
        NETWORK_SERVICE_DISCOVERY,
        "discovery",
        "many distinct hosts or ports probed in a short window",
    ),
    "dns_tunnel": (
        Severity.HIGH,
        DNS_C2,
        "tunnel",
        "DNS queries shaped like a tunnel (long, high-entropy labels)",
    ),
    "exfiltration": (
        Severity.HIGH,
        EXFILTRATION_ALT_PROTOCOL,
        "exfiltration",
        "far more data uploaded than downloaded",
    ),
}


def net_signal_finding(data: dict[str, Any]) -> Finding:
    """A gateway signal as a finding. Unknown signals count as high (fail closed)."""
    name = str(data.get("signal", "unknown"))
    severity, attack, category, why = _SIGNALS.get(
        name, (Severity.HIGH, "", "network", f"gateway signal {name!r}")
    )
    if "severity" in data:
        theirs = Severity.parse(data["severity"])
        if SEVERITY_ORDER[theirs] > SEVERITY_ORDER[severity]:
            severity = theirs
    detail = data.get("detail") or data.get("explanation")
    dest = data.get("dst") or data.get("host")
    explanation = why + (f" to {dest}" if dest else "") + (f": {detail}" if detail else "")
    evidence = {k: data[k] for k in ("dst", "dst_port", "host", "src_port", "proto") if k in data}
    return Finding(
        detector="net_signal",
        rule_id=f"net.{name}",
        category=category,
        severity=severity,
        attack=str(data.get("attack") or attack),
        explanation=explanation,
        evidence=evidence,
    )


def strongest(findings: Iterable[Finding]) -> Severity:
    return max((f.severity for f in findings), key=SEVERITY_ORDER.__getitem__)
