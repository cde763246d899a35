"""
Tests for L{odinws_tools.apicurio}: the launcher writes a configuration
that keeps the registry on loopback with its data in its folder, refuses a
Java too old with a clear error, and runs a registry that serves
Confluent's API and leaves no JVM behind, stopped or killed.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import urllib.request

from twisted.trial import unittest

from odinws_tools import apicurio
from tests.helpers.node import ROOT, descendants, wait_for


class ConfigTests(unittest.TestCase):
    """L{apicurio.write_config}."""

    def test_loopback_data_and_credentials(self) -> None:
        """
        HTTP and the management interface listen on 127.0.0.1 at the ports
        given, the database lives in the folder, and credentials become an
        embedded user (escaped as a properties file needs) required on the
        APIs, in a file only its owner reads.
        """
        folder = os.path.abspath(self.mktemp())
        apicurio.write_config(folder, 8081, 9001, "odin:p=a:ss w#rd")
        path = os.path.join(folder, "config", "application.properties")
        with open(path) as f:
            lines = f.read().splitlines()
        for line in ("quarkus.http.host=127.0.0.1", "quarkus.http.port=8081",
                     "quarkus.management.host=127.0.0.1", "quarkus.management.port=9001",
                     f"apicurio.datasource.url=jdbc:h2:file:{folder}/db/registry",
                     r"quarkus.security.users.embedded.users.odin=p\=a\:ss\ w\#rd",
                     "quarkus.http.auth.permission.api.policy=authenticated"):
            self.assertIn(line, lines)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_no_credentials_no_authentication(self) -> None:
        """Without credentials nothing requires authentication."""
        folder = os.path.abspath(self.mktemp())
        apicurio.write_config(folder, 8081, 9001)
        with open(os.path.join(folder, "config", "application.properties")) as f:
            text = f.read()
        self.assertNotIn("quarkus.http.auth", text)
        self.assertNotIn("users.embedded", text)

    def test_credentials_without_a_password(self) -> None:
        """Credentials must be user:password."""
        self.assertRaises(ValueError, apicurio.write_config, self.mktemp(), 1, 2, "odin")


class JavaTests(unittest.TestCase):
    """L{apicurio.find_java}."""

    def test_too_old(self) -> None:
        """A Java older than 21 is refused with an error naming what is needed."""
        fake = os.path.abspath(self.mktemp())
        with open(fake, "w") as f:
            f.write('#!/bin/sh\necho \'openjdk version "17.0.9" 2023-10-17\' >&2\n')
        os.chmod(fake, 0o755)
        self.patch(os, "environ", {**os.environ, "ODINWS_JAVA": fake})
        error = self.assertRaises(RuntimeError, apicurio.find_java)
        self.assertIn("Java 21 or later", str(error))


class LauncherTests(unittest.TestCase):
    """C{python -m odinws_tools.apicurio}, run as a user runs it."""

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def start(self) -> tuple[subprocess.Popen, str]:
        folder = os.path.abspath(self.mktemp())
        log = open(folder + ".log", "wb")
        self.addCleanup(log.close)
        proc = subprocess.Popen([sys.executable, "-m", "odinws_tools.apicurio", "--dir", folder],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=log,
                                stdin=subprocess.DEVNULL)
        self.addCleanup(self.stop, proc)
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        self.assertRegex(line, r"^registry=http://127\.0\.0\.1:\d+/apis/ccompat/v7$")
        return proc, line.removeprefix("registry=")

    def test_serves_and_stops(self) -> None:
        """
        The registry answers Confluent's API at the printed URL (no subjects
        yet); SIGTERM stops the launcher (status 0) and its JVM.
        """
        proc, url = self.start()
        with urllib.request.urlopen(url + "/subjects", timeout=10) as r:
            self.assertEqual(json.load(r), [])
        jvms = descendants(proc.pid)
        self.assertTrue(jvms)
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(60), 0)
        wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in jvms), 30, 0.2,
                 "the JVM gone")

    def test_killed_launcher(self) -> None:
        """A launcher killed outright takes its JVM with it."""
        proc, _ = self.start()
        jvms = descendants(proc.pid)
        self.assertTrue(jvms)
        proc.kill()
        proc.wait()
        wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in jvms), 30, 0.2,
                 "the JVM gone")
