"""Network signals for the monitor and the audit: tunnels, mining, DNS tunnelling,
scanning and exfiltration. Pure detectors; the gateway turns a :class:`Signal` into
an ``EventKind.NET_SIGNAL`` Event with the sandbox, episode, step and pid attached.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from corral.policy import DetectorThresholds, Protocol


class Severity(StrEnum):
    """Matches the keys of :class:`corral.policy.ResponsePolicy`."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


#: Every signal the gateway emits, with its MITRE ATT&CK technique.
SIGNAL_ATTACK: dict[str, str] = {
    "mining_stratum": "T1496",  # Resource Hijacking
    "mining_pool_dns": "T1496",
    "ssh_outbound": "T1572",  # Protocol Tunneling
    "tunnel_service_dns": "T1572",
    "dns_tunnel": "T1071.004",  # Application Layer Protocol: DNS
    "scan": "T1046",  # Network Service Discovery
    "exfiltration": "T1048",  # Exfiltration Over Alternative Protocol
}


@dataclass(frozen=True, slots=True)
class Signal:
    signal: str
    severity: Severity
    details: dict[str, Any] = field(default_factory=dict)


#: Labels of well-known mining pools. A label match (not a suffix match) also catches
#: pool mirrors under other zones, such as ``pool.minexmr.sim.test`` in the simulated net.
MINING_POOL_LABELS = frozenset(
    {
        "minexmr",
        "supportxmr",
        "moneroocean",
        "nanopool",
        "2miners",
        "f2pool",
        "ethermine",
        "nicehash",
        "hashvault",
        "c3pool",
        "herominers",
        "unmineable",
        "minergate",
        "xmrpool",
        "viabtc",
        "antpool",
        "slushpool",
        "braiins",
        "poolin",
        "flypool",
        "zpool",
        "mining-dutch",
        "prohashing",
        "kryptex",
    }
)
#: Reverse-tunnel and exposure services: a sandbox reaching these wants to be reached.
TUNNEL_SERVICE_SUFFIXES = (
    "ngrok.io",
    "ngrok.com",
    "ngrok-free.app",
    "ngrok.app",
    "trycloudflare.com",
    "serveo.net",
    "localhost.run",
    "lhr.life",
    "pagekite.me",
    "localtunnel.me",
    "loca.lt",
    "bore.pub",
    "playit.gg",
    "tunnelto.dev",
    "pinggy.io",
    "pinggy.link",
    "telebit.cloud",
    "localxpose.io",
    "loclx.io",
    "tailscale.com",
    "zrok.io",
)


def shannon_entropy(text: str) -> float:
    """Bits per character."""
    if not text:
        return 0.0
    counts = Counter(text)
    total = len(text)
    return -sum(n / total * math.log2(n / total) for n in counts.values())


def dns_signals(name: str, thresholds: DetectorThresholds) -> list[Signal]:
    """Signals raised by one queried name, allowed or not."""
    name = name.lower().rstrip(".")
    labels = name.split(".")
    found: list[Signal] = []
    pool = next((label for label in labels if label in MINING_POOL_LABELS), None)
    if pool is not None:
        found.append(
            Signal("mining_pool_dns", Severity.HIGH, {"name": name, "matched": pool})
        )
    tunnel = next(
        (s for s in TUNNEL_SERVICE_SUFFIXES if name == s or name.endswith("." + s)), None
    )
    if tunnel is not None:
        found.append(
            Signal("tunnel_service_dns", Severity.HIGH, {"name": name, "matched": tunnel})
        )
    # Tunnelling packs data into the labels below the zone; look at those together.
    subdomain = "".join(labels[:-2])
    longest = max(labels[:-2], key=len, default="")
    if len(subdomain) >= thresholds.dns_label_length or len(longest) >= 63:
        entropy = shannon_entropy(subdomain)
        if entropy >= thresholds.dns_label_entropy:
            found.append(
                Signal(
                    "dns_tunnel",
                    Severity.HIGH,
                    {"name": name[:255], "length": len(subdomain), "entropy": round(entropy, 2)},
                )
            )
    return found


def protocol_signal(protocol: Protocol, dst: str, port: int, detail: str | None) -> Signal | None:
    """Signals for a protocol seen on any port, allowed or not."""
    if protocol is Protocol.SSH:
        return Signal(
            "ssh_outbound",
            Severity.HIGH,
            {"dst": dst, "port": port, "banner": detail, "why": "tunnel or remote access"},
        )
    if protocol is Protocol.STRATUM:
        return Signal(
            "mining_stratum",
            Severity.CRITICAL,
            {"dst": dst, "port": port, "method": detail, "why": "cryptocurrency mining"},
        )
    return None


def exfil_signal(up: int, down: int, thresholds: DetectorThresholds) -> Signal | None:
    """Uploads far above downloads on one connection."""
    if up < thresholds.exfil_min_bytes:
        return None
    ratio = up / max(down, 1)
    if ratio < thresholds.exfil_ratio:
        return None
    return Signal(
        "exfiltration",
        Severity.HIGH,
        {"bytes_up": up, "bytes_down": down, "ratio": round(min(ratio, 1e9), 1)},
    )


class ScanDetector:
    """Counts distinct (host, port) targets in a sliding window; fires once per window."""

    def __init__(self, thresholds: DetectorThresholds, *, max_entries: int = 10_000) -> None:
        self._limit = thresholds.scan_distinct_targets
        self._window = thresholds.scan_window
        self._seen: deque[tuple[float, tuple[str, int]]] = deque(maxlen=max_entries)
        self._last_fired = -math.inf

    def note(self, dst: str, port: int, now: float) -> Signal | None:
        self._seen.append((now, (dst, port)))
        while self._seen and self._seen[0][0] < now - self._window:
            self._seen.popleft()
        targets = {t for _, t in self._seen}
        if len(targets) < self._limit or now - self._last_fired < self._window:
            return None
        self._last_fired = now
        hosts = {h for h, _ in targets}
        ports = {p for _, p in targets}
        return Signal(
            "scan",
            Severity.MEDIUM,
            {
                "distinct_targets": len(targets),
                "hosts": len(hosts),
                "ports": len(ports),
                "window": self._window,
                "sample": sorted(f"{h}:{p}" for h, p in targets)[:10],
            },
        )


__all__ = [
    "MINING_POOL_LABELS",
    "TUNNEL_SERVICE_SUFFIXES",
    "ScanDetector",
    "Severity",
    "Signal",
    "dns_signals",
    "exfil_signal",
    "protocol_signal",
    "shannon_entropy",
]
