"""The policy: what a sandbox may see, use and reach, as users write it.

Every model forbids unknown keys, so a typo is an error instead of a silently
ignored setting. Compiled, enforced forms (bwrap argv, cgroup values, gateway
rules) live with the code that enforces them, not here.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from corral.policy.units import ByteSize, Seconds


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _absolute_posix(path: str, what: str) -> str:
    p = PurePosixPath(path)
    if not p.is_absolute():
        raise ValueError(f"{what} must be an absolute path, got {path!r}")
    if ".." in p.parts:
        raise ValueError(f"{what} must not contain '..', got {path!r}")
    return str(p)


# --- filesystem -------------------------------------------------------------


class Bind(_Model):
    """A host path made visible, read-only, inside the sandbox."""

    source: str = Field(description="Absolute path on the host.")
    target: str | None = Field(default=None, description="Path inside; defaults to source.")

    @field_validator("source", "target")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        return None if v is None else _absolute_posix(v, "bind path")

    @property
    def dest(self) -> str:
        return self.target or self.source


class FilesystemPolicy(_Model):
    """What the sandbox sees. The system is read-only; only the workspace and /tmp are writable."""

    workspace: str | None = Field(
        default=None,
        description="Host directory copied into the workspace at start. Unset: start empty.",
    )
    workspace_path: str = Field(
        default="/workspace", description="Where the writable workspace appears inside."
    )
    read_only: list[Bind] = Field(
        default_factory=list, description="Extra host paths bound read-only. Empty: none."
    )
    hidden: list[str] = Field(
        default_factory=list,
        description="Paths inside the sandbox masked with an empty file or directory.",
    )

    @field_validator("workspace_path")
    @classmethod
    def _ws_abs(cls, v: str) -> str:
        v = _absolute_posix(v, "workspace_path")
        if v in ("/", "/usr", "/etc", "/proc", "/dev", "/tmp"):
            raise ValueError(f"workspace_path {v!r} would shadow a system directory")
        return v

    @field_validator("hidden")
    @classmethod
    def _hidden_abs(cls, v: list[str]) -> list[str]:
        return [_absolute_posix(p, "hidden path") for p in v]


# --- resources --------------------------------------------------------------


class ResourcePolicy(_Model):
    """Limits enforced by cgroups, the workspace quota and the sandbox's own timers."""

    cpus: float = Field(default=1.0, gt=0, le=1024, description="CPU quota in cores.")
    memory: ByteSize = Field(default=2 * 1024**3, description="Memory limit (cgroup).")
    pids: int = Field(default=256, ge=8, le=65536, description="Max tasks alive at once.")
    disk: ByteSize = Field(
        default=1024**3, description="Quota for workspace + /tmp together (memory-backed)."
    )
    command_timeout: Seconds = Field(default=300.0, description="Wall time for one command.")
    sandbox_timeout: Seconds = Field(default=3600.0, description="Wall time for the sandbox.")
    output_cap: ByteSize = Field(
        default=1024**2, description="Bytes of stdout+stderr kept per command."
    )

    @field_validator("memory")
    @classmethod
    def _memory_floor(cls, v: int) -> int:
        if v < 16 * 1024**2:
            raise ValueError("memory must be at least 16MiB")
        return v

    @field_validator("disk")
    @classmethod
    def _disk_floor(cls, v: int) -> int:
        if v < 1024**2:
            raise ValueError("disk must be at least 1MiB")
        return v

    @field_validator("output_cap")
    @classmethod
    def _cap_floor(cls, v: int) -> int:
        if v < 1024:
            raise ValueError("output_cap must be at least 1KiB")
        return v

    @field_validator("command_timeout", "sandbox_timeout")
    @classmethod
    def _positive_time(cls, v: float) -> float:
        if not 0 < v <= 7 * 24 * 3600:
            raise ValueError("must be more than 0 and at most 7 days")
        return v

    @model_validator(mode="after")
    def _command_within_sandbox(self) -> ResourcePolicy:
        if self.command_timeout > self.sandbox_timeout:
            raise ValueError("command_timeout cannot exceed sandbox_timeout")
        return self


# --- network ----------------------------------------------------------------

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class Protocol(StrEnum):
    TLS = "tls"
    HTTP = "http"
    SSH = "ssh"
    STRATUM = "stratum"
    DNS = "dns"
    UNKNOWN = "unknown"


class AllowRule(_Model):
    """One way out. A rule names a domain or a CIDR (not both), optionally ports and protocols.

    Unset ports: 80 and 443 for domains, any port for CIDRs. Unset protocols: any
    protocol the classifier recognises except ssh and stratum, which must be named.
    """

    domain: str | None = Field(default=None, description="Exact name or '*.example.com'.")
    cidr: str | None = Field(default=None, description="Address block such as 203.0.113.0/24.")
    ports: list[int] | None = Field(default=None, description="Destination ports allowed.")
    protocols: list[Protocol] | None = Field(default=None, description="Protocols allowed.")

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str | None) -> str | None:
        if v is None:
            return None
        name = v.strip().lower().rstrip(".")
        if not name:
            raise ValueError("domain must not be empty")
        labels = name.split(".")
        if labels[0] == "*":
            labels = labels[1:]
            # '*' or '*.com' would open whole top-level domains.
            if len(labels) < 2:
                raise ValueError(f"wildcard {v!r} is too broad; name at least two labels after *")
        for label in labels:
            if not _LABEL.match(label):
                raise ValueError(f"{v!r} is not a valid domain name (bad label {label!r})")
        return name

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str | None) -> str | None:
        if v is None:
            return None
        try:
            return str(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{v!r} is not a valid CIDR: {exc}") from None

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return None
        if not v:
            raise ValueError("ports must not be empty; leave it out to mean the default")
        for port in v:
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} is out of range 1-65535")
        return v

    @field_validator("protocols")
    @classmethod
    def _protocols(cls, v: list[Protocol] | None) -> list[Protocol] | None:
        if v is not None and not v:
            raise ValueError("protocols must not be empty; leave it out to mean the default")
        return v

    @model_validator(mode="after")
    def _exactly_one_target(self) -> AllowRule:
        if (self.domain is None) == (self.cidr is None):
            raise ValueError("an allow rule needs exactly one of 'domain' or 'cidr'")
        return self


class DetectorThresholds(_Model):
    """Thresholds for the gateway's network signals."""

    scan_distinct_targets: int = Field(default=20, ge=2, description="Hosts/ports per window.")
    scan_window: Seconds = Field(default=10.0, description="Window for counting scan targets.")
    dns_label_length: int = Field(default=40, ge=8, description="Suspicious subdomain length.")
    dns_label_entropy: float = Field(default=3.5, gt=0, description="Bits/char, suspicious.")
    exfil_ratio: float = Field(default=20.0, gt=1, description="Upload/download ratio flagged.")
    exfil_min_bytes: ByteSize = Field(default=1024**2, description="Upload size before flagging.")


class NetworkPolicy(_Model):
    """``none``: loopback only. ``gateway``: every flow passes Corral's egress gateway."""

    mode: Literal["none", "gateway"] = "none"
    allow: list[AllowRule] = Field(
        default_factory=list, description="Allowed destinations. Empty: everything is denied."
    )
    thresholds: DetectorThresholds = Field(default_factory=DetectorThresholds)

    @model_validator(mode="after")
    def _allow_needs_gateway(self) -> NetworkPolicy:
        if self.allow and self.mode == "none":
            raise ValueError("allow rules need mode 'gateway'; mode 'none' has no network")
        return self


# --- gpu --------------------------------------------------------------------


class GpuPolicy(_Model):
    """GPUs the sandbox may use. Empty devices: none, and any GPU use is a violation."""

    devices: list[int] = Field(default_factory=list, description="NVML device indices.")
    memory_budget: ByteSize | None = Field(
        default=None, description="GPU memory per device. Unset: the device's whole memory."
    )
    utilization_budget: float = Field(
        default=100.0, gt=0, le=100, description="Sustained utilisation percent allowed."
    )

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: list[int]) -> list[int]:
        if any(d < 0 for d in v):
            raise ValueError("device indices are 0 or more")
        if len(set(v)) != len(v):
            raise ValueError("device indices must be unique")
        return v


# --- guard and response -------------------------------------------------------


class Verdict(StrEnum):
    ALLOW = "allow"
    ASK = "ask"
    DENY = "deny"


class Action(StrEnum):
    LOG = "log"
    KILL = "kill"
    FREEZE = "freeze"
    END_EPISODE = "end_episode"


class GuardPolicy(_Model):
    """How actions are authorized before they run."""

    enabled: bool = True
    rule_files: list[str] = Field(
        default_factory=list, description="Extra rule files on top of the built-in rules."
    )
    disabled_rules: list[str] = Field(default_factory=list, description="Rule ids turned off.")
    unparsable: Verdict = Field(
        default=Verdict.DENY, description="Verdict for a command the parser cannot read."
    )
    ask_fallback: Verdict = Field(
        default=Verdict.DENY, description="Verdict when 'ask' has no approver to ask."
    )


class ResponsePolicy(_Model):
    """What happens when a violation is found, by severity."""

    low: Action = Action.LOG
    medium: Action = Action.LOG
    high: Action = Action.KILL
    critical: Action = Action.END_EPISODE


# --- the whole policy ---------------------------------------------------------


class Policy(_Model):
    """Everything a sandbox enforces. Load it with :func:`corral.policy.load_policy`."""

    name: str = "custom"
    description: str = ""
    filesystem: FilesystemPolicy = Field(default_factory=FilesystemPolicy)
    resources: ResourcePolicy = Field(default_factory=ResourcePolicy)
    network: NetworkPolicy = Field(default_factory=NetworkPolicy)
    gpu: GpuPolicy = Field(default_factory=GpuPolicy)
    guard: GuardPolicy = Field(default_factory=GuardPolicy)
    response: ResponsePolicy = Field(default_factory=ResponsePolicy)
