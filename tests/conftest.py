"""Shared fixtures. Tests run the real kernel mechanisms, so they need root."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() != 0:
        raise pytest.UsageError("Corral's tests create cgroups and namespaces: run them as root")
