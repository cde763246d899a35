"""
The project installs as C{make venv} installs it, quietly: no setuptools
warning (a data folder missing from C{packages}, the deprecated compat
editable mode, a license table), and the editable install puts the
repository root on C{sys.path}, where twistd finds the plugins.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

from twisted.trial import unittest

from tests.helpers.node import ROOT


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
