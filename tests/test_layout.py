r"""
The package layout's rules, checked on the source: which process runs a
module is told by its path, and imports only go one way,

    odin_ws.parent -> odin_ws.common <- odin_ws.shard
    odinws_tools   -> odin_ws.common (the daemon's public, shared API)

with L{odin_ws.tap} and L{odin_ws.shard_tap} (plugin glue) free to assemble
either process. Inside the shard, each folder serves one thing and imports
go one way too (docs/architecture.md, "Layout of the shard"):

    shard.service -> shard.clients -> shard.delivery -> shard.history
                                  \-> shard.history <- shard.kafka

and no module of the shard imports one that imports it back, however far
round. Function-level imports (and those only made for type checking)
count as much as module-level ones.
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
    "odin_ws.shard.clients": {"odin_ws.shard.clients", "odin_ws.shard.delivery",
                              "odin_ws.shard.history", "odin_ws.common", "odin_ws"},
    "odin_ws.shard.delivery": {"odin_ws.shard.delivery", "odin_ws.shard.history",
                               "odin_ws.common", "odin_ws"},
    "odin_ws.shard.kafka": {"odin_ws.shard.kafka", "odin_ws.shard.history", "odin_ws.common",
                            "odin_ws"},
    "odin_ws.shard.history": {"odin_ws.shard.history", "odin_ws.common", "odin_ws"},
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

    def test_shard_folders_go_one_way(self):
        """A shard folder imports only the folders below it: delivery never clients or kafka."""
        self.assertEqual(area("odin_ws.shard.delivery.fanout"), "odin_ws.shard.delivery")
        self.assertNotIn("odin_ws.shard.clients", ALLOWED["odin_ws.shard.delivery"])
        self.assertNotIn("odin_ws.shard.kafka", ALLOWED["odin_ws.shard.delivery"])
        self.assertNotIn("odin_ws.shard.delivery", ALLOWED["odin_ws.shard.history"])
        self.assertNotIn("odin_ws.shard.clients", ALLOWED["odin_ws.shard.kafka"])


class ImportCycleTests(SynchronousTestCase):
    def test_no_cycle_in_the_daemon(self):
        """No module of odin_ws imports, through any chain, a module that imports it."""
        found = modules()
        graph = {m: {n for n in imported(path, m) if n in found and n != m}
                 for m, path in found.items() if m.startswith("odin_ws")}
        self.assertEqual(cycles(graph), [])

    def test_cycle_is_seen(self):
        """The cycle finder itself reports a circle of three (guards the test)."""
        self.assertEqual(cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}),
                         [["a", "b", "c"]])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of C{graph} (module -> modules it imports), each from its least name."""
    out = []
    done: set[str] = set()

    def walk(node: str, path: list[str]) -> None:
        if node in path:
            circle = path[path.index(node):]
            first = circle.index(min(circle))
            circle = circle[first:] + circle[:first]
            if circle not in out:
                out.append(circle)
            return
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            walk(nxt, path + [node])
        done.add(node)

    for node in sorted(graph):
        walk(node, [])
    return out
