from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.events import MemorySink
from corral.policy import Policy, load_policy
from corral.sandbox import Sandbox
from corral.sandbox.state import processes_with_uid


def make_policy(base: str = "default", **overrides: Any) -> Policy:
    return load_policy(base, overrides)


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
def sandbox(sink: MemorySink) -> Iterator[Sandbox]:
    sb = Sandbox.create("default", sink=sink)
    try:
        yield sb
    finally:
        sb.close()
        assert processes_of_uid(sb.uid) == [], "processes outlived close()"


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temp dir any uid can read, for bind sources (pytest's tmp_path is root-only)."""
    base = Path("/var/lib/corral-tests")
    base.mkdir(mode=0o755, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="shared-", dir=base))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def processes_of_uid(uid: int) -> list[int]:
    return processes_with_uid({uid})
