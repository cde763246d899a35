"""The versions C{requirements.lock} pins, for the internals guards."""

from __future__ import annotations

import os
import re
from importlib import metadata

from tests.helpers.node import ROOT

LOCK = os.path.join(ROOT, "requirements.lock")


def pinned(name: str) -> str:
    """The version C{requirements.lock} pins for distribution C{name}."""
    with open(LOCK) as f:
        for line in f:
            m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+)", line)
            if m and m.group(1).lower() == name.lower():
                return m.group(2)
    raise AssertionError(f"{name} is not pinned in {LOCK}")


def assert_written_for(test, written_for: str, dist: str, module: str) -> None:
    """
    The installed C{dist} is the version C{requirements.lock} pins, and the
    one the internals C{module} (a path) says it was C{written_for}.
    """
    test.assertEqual(written_for, pinned(dist),
                     f"requirements.lock moved: re-read the internals named in {module}, "
                     "then update WRITTEN_FOR")
    test.assertEqual(metadata.version(dist), pinned(dist))
