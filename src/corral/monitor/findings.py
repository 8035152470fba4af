"""What a detector reports: a finding, with severity and ATT&CK technique."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @classmethod
    def parse(cls, value: object) -> Severity:
        """Read a severity from another component; an unknown one counts as high (fails closed)."""
        text = str(getattr(value, "value", value)).strip().lower()
        try:
            return cls(text)
        except ValueError:
            return cls.HIGH


SEVERITY_ORDER = {Severity.LOW: 0, Severity.MEDIUM: 1, Severity.HIGH: 2, Severity.CRITICAL: 3}

# MITRE ATT&CK techniques the detectors name.
RESOURCE_HIJACKING = "T1496"
PROTOCOL_TUNNELING = "T1572"
NETWORK_SERVICE_DISCOVERY = "T1046"
DNS_C2 = "T1071.004"
EXFILTRATION_ALT_PROTOCOL = "T1048"
CRON = "T1053.003"
SHELL_CONFIG = "T1546.004"
SSH_AUTHORIZED_KEYS = "T1098.004"
SYSTEMD_SERVICE = "T1543.002"
XDG_AUTOSTART = "T1547.013"


@dataclass(frozen=True, slots=True)
class Finding:
    """One reason to raise an alert, before it is tied to a process and step."""

    detector: str
    rule_id: str
    category: str
    severity: Severity
    attack: str
    explanation: str
    evidence: dict[str, Any] = field(default_factory=dict)
