"""The versions C{requirements.lock} pins, for the internals guards."""

from __future__ import annotations

import os
import re

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
