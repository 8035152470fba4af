"""The public API is the curated ``__all__``; importing it does nothing."""

from __future__ import annotations

import subprocess
import sys

import corral.monitor
from corral.monitor import SandboxHandle
from corral.monitor.testing import LocalSandbox


def test_all_names_resolve_and_are_sorted() -> None:
    names = corral.monitor.__all__
    assert names == sorted(names)
    for name in names:
        assert getattr(corral.monitor, name) is not None


def test_everything_public_is_in_all() -> None:
    public = {
        n
        for n, v in vars(corral.monitor).items()
        if not n.startswith("_") and not isinstance(v, type(corral)) and n != "annotations"
    }
    assert public == set(corral.monitor.__all__)


def test_import_has_no_side_effects() -> None:
    code = (
        "import threading, corral.monitor, corral.monitor.monitor, corral.monitor.testing;"
        "assert threading.active_count() == 1"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert (out.stdout, out.stderr) == ("", "")


def test_local_sandbox_is_a_sandbox_handle() -> None:
    assert isinstance(LocalSandbox(with_home=False), SandboxHandle)
