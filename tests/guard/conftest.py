"""Shared fixtures for the guard tests: one Guard with the built-in rules."""

from __future__ import annotations

import pytest

from corral.guard import Guard


@pytest.fixture(scope="session")
def guard() -> Guard:
    return Guard()
