"""The top-level API is complete, resolves lazily, and names the real objects."""

from __future__ import annotations

import importlib
import subprocess
import sys

import corral


def test_every_export_resolves_to_its_home_object() -> None:
    for name in corral.__all__:
        if name == "__version__":
            continue
        home = importlib.import_module(corral._EXPORTS[name])
        assert getattr(corral, name) is getattr(home, name), name
        assert name in home.__all__, f"{name} is not public in {home.__name__}"


def test_import_is_cheap() -> None:
    heavy = ("bashlex", "pyroute2", "pyseccomp")
    code = f"import sys, corral; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
