"""
The Python client's distribution (clients/python): its own, depending on
websockets only, typed, and not part of the daemon's package.
"""

from __future__ import annotations

import ast
import os
import sys
import tomllib

# setuptools ships no type information for this module.
from setuptools import find_namespace_packages  # type: ignore[import-untyped]
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.node import ROOT

CLIENT = os.path.join(ROOT, "clients", "python")
PACKAGE = os.path.join(CLIENT, "odinws_client")


def imports(path: str) -> set[str]:
    """Top-level names of the modules ``path`` imports (absolute imports)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


class DistributionTests(SynchronousTestCase):
    def test_imports_only_the_stdlib_and_websockets(self):
        """Every module of odinws_client imports the standard library, websockets and itself only."""
        found: dict[str, set[str]] = {}
        for name in os.listdir(PACKAGE):
            if name.endswith(".py"):
                extra = imports(os.path.join(PACKAGE, name)) - set(sys.stdlib_module_names) \
                    - {"websockets", "odinws_client", "__future__"}
                if extra:
                    found[name] = extra
        self.assertEqual(found, {})

    def test_metadata(self):
        """PEP 621 metadata: its own name, Python >= 3.10, websockets its one dependency, py.typed shipped."""
        with open(os.path.join(CLIENT, "pyproject.toml"), "rb") as f:
            meta = tomllib.load(f)
        project = meta["project"]
        self.assertEqual((project["name"], project["requires-python"],
                          [d.split(">")[0] for d in project["dependencies"]]),
                         ("odinws-client", ">=3.10", ["websockets"]))
        self.assertIn("py.typed", meta["tool"]["setuptools"]["package-data"]["odinws_client"])
        self.assertTrue(os.path.exists(os.path.join(PACKAGE, "py.typed")))

    def test_the_daemon_does_not_ship_it(self):
        """The daemon's package list (pyproject.toml), applied to this tree, finds no client package."""
        with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
            find = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]
        packages = find_namespace_packages(ROOT, include=find["include"],
                                           exclude=find.get("exclude", ()))
        self.assertIn("odin_ws", packages)
        self.assertEqual([p for p in packages if "odinws_client" in p or p.startswith("clients")],
                         [])
