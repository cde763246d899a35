"""
The package layout's rules, checked on the source: which process runs a
module is told by its path, and imports only go one way,

    odin_ws.parent -> odin_ws.common <- odin_ws.shard
    odinws_tools   -> odin_ws.common (the daemon's public, shared API)

with L{odin_ws.tap} and L{odin_ws.shard_tap} (plugin glue) free to assemble
either process. Function-level imports count as much as module-level ones.
"""

from __future__ import annotations

import ast
import os

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.node import ROOT

#: What each area may import from the project (besides itself).
ALLOWED = {
    "odin_ws.common": {"odin_ws.common", "odin_ws"},
    "odin_ws.parent": {"odin_ws.parent", "odin_ws.common", "odin_ws"},
    "odin_ws.shard": {"odin_ws.shard", "odin_ws.common", "odin_ws"},
    "odin_ws.tap": {"odin_ws.parent", "odin_ws.shard", "odin_ws.common", "odin_ws"},
    "odin_ws.shard_tap": {"odin_ws.tap"},
    "odinws_tools": {"odinws_tools", "odin_ws.common"},
}
PROJECT = ("odin_ws", "odinws_tools")


def modules() -> dict[str, str]:
    """Every module of the daemon and the tools: dotted name -> path."""
    found = {}
    for top in PROJECT:
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    found[dotted.removesuffix(".__init__")] = path
    return found


def imported(path: str, module: str) -> set[str]:
    """The project modules C{path} imports, anywhere in it."""
    names: set[str] = set()
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return {n for n in names if n.split(".")[0] in PROJECT}


def area(module: str) -> str | None:
    """The longest key of L{ALLOWED} that C{module} is in."""
    best = None
    for key in ALLOWED:
        if (module == key or module.startswith(key + ".")) and (best is None or len(key) > len(best)):
            best = key
    return best


class ImportDirectionTests(SynchronousTestCase):
    def test_every_module_has_an_area(self):
        """Each module of odin_ws and odinws_tools is in one area (parent, shard, common, tools, glue)."""
        loose = [m for m in modules() if area(m) is None and m not in PROJECT]
        self.assertEqual(loose, [])

    def test_imports_go_one_way(self):
        """parent and shard import only common (and themselves); tools only common; nothing imports tools."""
        wrong = []
        for module, path in sorted(modules().items()):
            if module in PROJECT:
                continue
            mine = area(module)
            for name in imported(path, module):
                target = area(name) or name
                if target == mine or target == "odin_ws":
                    continue
                if not any(target == ok or target.startswith(ok + ".") for ok in ALLOWED[mine]):
                    wrong.append(f"{module} imports {name}")
        self.assertEqual(wrong, [])

    def test_checker_sees_a_violation(self):
        """The checker itself catches a shard module importing the parent (guards the test)."""
        path = self.mktemp() + ".py"
        with open(path, "w") as f:
            f.write("def f():\n    from odin_ws.parent.hub import Hub\n")
        names = imported(path, "odin_ws.shard.example")
        self.assertIn("odin_ws.parent.hub", names)
        self.assertEqual(area("odin_ws.parent.hub"), "odin_ws.parent")
        self.assertNotIn("odin_ws.parent", ALLOWED[area("odin_ws.shard.example")])
