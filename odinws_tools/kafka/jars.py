"""
The Apache Kafka jars the test broker runs from: Maven copies the broker
and its runtime dependencies, at the version pinned in C{pom.xml}, from
Maven Central into C{jars/<version>/} next to the pom (gitignored). Maven's
own cache (C{~/.m2}) makes that one download per machine; later copies
(another clone, a cleaned folder) come from there.
"""

from __future__ import annotations

import os
import re

from odinws_tools.mavenfetch import ensure_folder, run_maven

HERE = os.path.dirname(os.path.abspath(__file__))
POM = os.path.join(HERE, "pom.xml")
#: The folder holding C{<version>/} (gitignored).
JARS_ROOT = os.path.join(HERE, "jars")


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
    if it is not complete. Safe to call from several processes at once.

    @raise RuntimeError: Maven is missing or failed (its output in the message).
    """
    return ensure_folder(os.path.join(JARS_ROOT, kafka_version()), _fetch)


def _fetch(folder: str) -> None:
    run_maven("the Kafka jars", ["-f", POM, "dependency:copy-dependencies",
                                 "-DincludeScope=runtime", f"-DoutputDirectory={folder}"])
