"""
The Apache Kafka jars the test broker runs from: Maven copies the broker
and its runtime dependencies, at the version pinned in C{pom.xml}, from
Maven Central into C{jars/<version>/} next to the pom (gitignored). Maven's
own cache (C{~/.m2}) makes that one download per machine; later copies
(another clone, a cleaned folder) come from there.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
POM = os.path.join(HERE, "pom.xml")
#: The folder holding C{<version>/} (gitignored).
JARS_ROOT = os.path.join(HERE, "jars")
#: Written last into a version's folder: a copy cut short is not taken for a complete one.
COMPLETE = ".complete"
MAVEN_TIMEOUT = 900


def kafka_version() -> str:
    """The Kafka version C{pom.xml} pins (its C{kafka.version} property)."""
    with open(POM, encoding="utf-8") as f:
        match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", f.read())
    if match is None:
        raise RuntimeError(f"{POM}: no <kafka.version> property")
    return match.group(1).strip()


def ensure_jars() -> str:
    """
    The folder holding the pinned version's jars, fetched with Maven first
    if it is not complete. Safe to call from several processes at once (a
    file lock: one fetches, the others wait and find it done).

    @raise RuntimeError: Maven is missing or failed (its output in the message).
    """
    folder = os.path.join(JARS_ROOT, kafka_version())
    if os.path.exists(os.path.join(folder, COMPLETE)):
        return folder
    os.makedirs(JARS_ROOT, exist_ok=True)
    with open(os.path.join(JARS_ROOT, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(folder, COMPLETE)):
            _fetch(folder)
    return folder


def _fetch(folder: str) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("Maven (mvn) is needed to fetch the Kafka jars: apt-get install maven")
    shutil.rmtree(folder, ignore_errors=True)
    result = subprocess.run(
        [mvn, "-q", "-B", "-f", POM, "dependency:copy-dependencies",
         "-DincludeScope=runtime", f"-DoutputDirectory={folder}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        timeout=MAVEN_TIMEOUT)
    if result.returncode != 0:
        output = result.stdout.decode("utf-8", "replace")[-3000:]
        raise RuntimeError(f"mvn dependency:copy-dependencies failed ({result.returncode}):\n{output}")
    with open(os.path.join(folder, COMPLETE), "w"):
        pass
