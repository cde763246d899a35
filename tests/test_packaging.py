"""
The project's metadata as installed (pyproject.toml's [project], PEP 621):
licence, Python versions, URLs, entry points, the twistd plugins; the
places that must agree with it (the JS package, the alert rules' runbook
links, the LICENSE file); an install as make venv makes it, without a
setuptools warning; the README's word on each make target.
"""

from __future__ import annotations

import fnmatch
import glob
import importlib.metadata
import json
import os
import subprocess
import sys
import tomllib

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial import unittest

import odin_ws
from tests.helpers.node import ROOT
from tests.helpers.opsfiles import all_rules, load_rules


def pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


class ProjectMetadataTests(unittest.TestCase):
    """The odinws distribution installed in this environment (from pyproject.toml)."""

    def setUp(self):
        self.metadata = importlib.metadata.metadata("odinws")
        self.urls = dict(u.split(", ", 1) for u in self.metadata.get_all("Project-URL") or [])

    def test_licence(self):
        """The distribution says MIT and the LICENSE file at the root is the MIT licence text."""
        self.assertEqual(self.metadata["License-Expression"], "MIT")
        with open(os.path.join(ROOT, "LICENSE")) as f:
            text = f.read()
        self.assertTrue(text.startswith("MIT License\n"), text[:40])
        self.assertIn("Permission is hereby granted, free of charge", text)

    def test_python_versions(self):
        """
        The classifiers name the Python this suite runs on (so the versions
        listed are the versions tested), and requires-python admits it.
        """
        running = f"{sys.version_info.major}.{sys.version_info.minor}"
        self.assertIn(f"Programming Language :: Python :: {running}",
                      self.metadata.get_all("Classifier"))
        minimum = self.metadata["Requires-Python"].removeprefix(">=")
        self.assertGreaterEqual(sys.version_info[:2], tuple(map(int, minimum.split("."))))

    def test_version_is_the_package_version(self):
        """The distribution's version is odin_ws.__version__ (one source)."""
        self.assertEqual(self.metadata["Version"], odin_ws.__version__)

    def test_urls(self):
        """Homepage, documentation, repository and issue tracker are all given, over HTTPS."""
        self.assertEqual(set(self.urls), {"Homepage", "Documentation", "Repository", "Issues"})
        for url in self.urls.values():
            self.assertTrue(url.startswith("https://"), url)

    def test_console_scripts(self):
        """Every console script points at a callable that exists."""
        scripts = [e for e in importlib.metadata.entry_points(group="console_scripts")
                   if e.dist is not None and e.dist.name == "odinws"]
        self.assertEqual({e.name for e in scripts}, {"odinws-simulate", "odinws-loadtest"})
        for entry in scripts:
            self.assertTrue(callable(entry.load()), entry.name)

    def test_twistd_plugins_found(self):
        """twistd finds both plugins of the installed distribution (twisted/plugins has no __init__.py)."""
        names = {maker.tapname for maker in getPlugins(IServiceMaker)}
        self.assertLessEqual({"odinws", "odinws-shard"}, names)

    def test_every_package_and_data_file_is_built(self):
        """
        Every directory of odin_ws and odinws_tools with Python files is a
        package the build includes, and every file of the demo page is
        package data.
        """
        tool = pyproject()["tool"]["setuptools"]
        include = tool["packages"]["find"]["include"]
        for top in ("odin_ws", "odinws_tools"):
            for directory, _, files in os.walk(os.path.join(ROOT, top)):
                if "__pycache__" in directory or not any(f.endswith(".py") for f in files):
                    continue
                name = os.path.relpath(directory, ROOT).replace(os.sep, ".")
                self.assertTrue(any(fnmatch.fnmatchcase(name, p) for p in include), name)
        patterns = tool["package-data"]["odin_ws.static"]
        for name in os.listdir(os.path.join(ROOT, "odin_ws", "static")):
            self.assertTrue(any(fnmatch.fnmatchcase(name, p) for p in patterns), name)


class AgreementTests(unittest.TestCase):
    """Other files that name the project's home agree with pyproject.toml."""

    def setUp(self):
        self.urls = pyproject()["project"]["urls"]

    def test_js_package(self):
        """
        clients/js/package.json has repository (with its directory),
        homepage and bugs of the same project.
        """
        with open(os.path.join(ROOT, "clients", "js", "package.json")) as f:
            package = json.load(f)
        repository = package["repository"]
        self.assertEqual(repository["type"], "git")
        self.assertEqual(repository["url"], f"git+{self.urls['Repository']}.git")
        self.assertEqual(repository["directory"], "clients/js")
        self.assertTrue(package["homepage"].startswith(self.urls["Repository"] + "/"))
        self.assertEqual(package["bugs"]["url"], self.urls["Issues"])
        self.assertEqual(package["license"], "MIT")

    def test_runbook_links(self):
        """The alerts' runbook links point at docs/operations.md of this repository."""
        base = f"{self.urls['Repository']}/blob/main/docs/operations.md#"
        for rule in all_rules(load_rules()):
            if "alert" in rule:
                self.assertTrue(rule["annotations"]["runbook_url"].startswith(base),
                                rule["alert"])


class EditableInstallTests(unittest.TestCase):

    def test_quiet_and_plugins_found(self):
        """
        The daemon and the Python client install editable (into a prefix of
        their own: the test's virtualenv is left alone) without a warning
        from the build, and the daemon's .pth names the repository root.
        """
        prefix = os.path.abspath(self.mktemp())
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--ignore-installed",
             "--no-cache-dir", "--prefix", prefix, "-c", "requirements.lock",
             "-e", ".[test,lint]", "-e", "clients/python"],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
            env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
        self.assertEqual(result.returncode, 0, result.stderr)
        output = result.stdout + result.stderr
        self.assertNotIn("Warning", output)
        self.assertNotIn("deprecated", output.lower())
        paths = set()
        for pth in glob.glob(os.path.join(prefix, "lib", "python*", "site-packages", "*.pth")):
            with open(pth) as f:
                paths.update(line.strip() for line in f if line.strip())
        self.assertIn(os.path.realpath(ROOT), {os.path.realpath(p) for p in paths})


class ReadmeTests(unittest.TestCase):

    def test_every_make_target_documented(self):
        """
        The README's table says what every target of the Makefile needs and
        does to the machine (make test-deb among them: root, system-wide).
        """
        with open(os.path.join(ROOT, "Makefile")) as f:
            phony = next(line for line in f if line.startswith(".PHONY:")).split()[1:]
        with open(os.path.join(ROOT, "README.md")) as f:
            readme = f.read()
        rows = [line for line in readme.splitlines() if line.startswith("| `make ")]
        for target in phony:
            if target == "clean":
                self.assertIn("`make clean`", readme)
                continue
            self.assertTrue(any(f"`make {target}`" in row or f"`make {target}` (" in row
                                for row in rows), target)
        deb = next(row for row in rows if row.startswith("| `make test-deb`"))
        self.assertIn("root", deb)
        self.assertIn("system-wide", deb)
