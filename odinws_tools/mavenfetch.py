"""
What the test tools fetch from Maven Central (the Kafka broker's jars,
Apicurio Registry), fetched once into a gitignored folder: Maven's own
cache (C{~/.m2}) makes that one download per machine, and a folder is
complete only once its marker is written, so a fetch cut short is redone.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Callable

#: Written last into a fetched folder.
COMPLETE = ".complete"
MAVEN_TIMEOUT = 900


def ensure_folder(folder: str, fetch: Callable[[str], None]) -> str:
    """
    C{folder}, filled by C{fetch(folder)} first unless complete. Safe to
    call from several processes at once (a file lock beside the folder:
    one fetches, the others wait and find it done).
    """
    if os.path.exists(os.path.join(folder, COMPLETE)):
        return folder
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    with open(os.path.join(parent, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(folder, COMPLETE)):
            shutil.rmtree(folder, ignore_errors=True)
            fetch(folder)
            with open(os.path.join(folder, COMPLETE), "w"):
                pass
    return folder


def run_maven(what: str, args: list[str], cwd: str | None = None) -> None:
    """
    C{mvn -q -B ARGS}, fetching C{what}.

    @raise RuntimeError: Maven is missing or failed (its output in the message).
    """
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError(f"Maven (mvn) is needed to fetch {what}: apt-get install maven")
    result = subprocess.run([mvn, "-q", "-B", *args], cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            timeout=MAVEN_TIMEOUT)
    if result.returncode != 0:
        output = result.stdout.decode("utf-8", "replace")[-3000:]
        raise RuntimeError(f"mvn {args[0]} ({what}) failed ({result.returncode}):\n{output}")
