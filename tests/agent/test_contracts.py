"""Contracts between parts that meet only at run time: names one side emits, the other reads."""

from __future__ import annotations

import pytest

from corral.gateway.signals import SIGNAL_ATTACK
from corral.monitor.detectors import net_signal_finding


@pytest.mark.parametrize("name", sorted(SIGNAL_ATTACK))
def test_monitor_understands_every_gateway_signal(name: str) -> None:
    finding = net_signal_finding({"signal": name, "attack": SIGNAL_ATTACK[name]})
    # An unknown signal falls back to category "network" with no technique.
    assert finding.category != "network"
    assert finding.attack == SIGNAL_ATTACK[name]
    assert finding.rule_id == f"net.{name}"
