"""The monitor's own settings: sampling rates, detector thresholds, bounds."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class MonitorConfig(BaseModel):
    """How often the monitor looks, and what it counts as sustained abuse."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_interval: float = Field(
        default=0.2, gt=0.01, le=10, description="Seconds between CPU/RSS samples."
    )
    cpu_saturation: float = Field(
        default=0.9, gt=0, le=64, description="CPU use, in cores, that counts as saturation."
    )
    cpu_saturation_seconds: float = Field(
        default=10.0, gt=0, le=3600, description="How long saturation lasts before an alert."
    )
    gpu_interval: float = Field(
        default=1.0, gt=0.05, le=60, description="Seconds between NVML samples."
    )
    gpu_sustain_samples: int = Field(
        default=3, ge=1, le=1000, description="Consecutive over-budget utilisation samples alerted."
    )
    step_grace: float = Field(
        default=0.25,
        ge=0,
        le=5,
        description=(
            "How long events of a process with no known step wait for the sandbox's "
            "EXEC_START, so they name the step. Responses never wait."
        ),
    )
    kill_scope: Literal["process", "step"] = Field(
        default="step",
        description=(
            "'step': a kill takes every live process of the harmful process's step "
            "(so a loop that spawned it dies too); 'process': its own tree only."
        ),
    )
    violations_per_sandbox: int = Field(
        default=256, ge=1, le=100_000, description="Violations kept per sandbox (oldest dropped)."
    )
    recent_exits: int = Field(
        default=4096, ge=16, le=1_000_000, description="Exited processes kept for lineage."
    )
    hash_max_bytes: int = Field(
        default=64 * 1024**2, ge=0, description="Executables larger than this are not hashed."
    )
    reader_nice: int = Field(
        default=-15,
        ge=-20,
        le=0,
        description=(
            "Nice value of the thread reading process events, so it keeps up with "
            "bursts on a busy host; 0 leaves it at normal priority."
        ),
    )
    rcvbuf_bytes: int = Field(
        default=16 * 1024**2, ge=65536, description="Kernel buffer for process events."
    )
