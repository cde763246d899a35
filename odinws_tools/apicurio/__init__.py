"""
Apicurio Registry, a real Schema Registry serving Confluent's REST API
(its C{ccompat} API under C{/apis/ccompat/v7}), for the integration tests
and C{make demo AVRO=1}. The application is the Quarkus build Apicurio
publishes on Maven Central (C{io.apicurio:apicurio-registry-app}, the
C{all} tar.gz), at the version pinned here: Maven fetches it once per
machine into C{~/.m2}, and it is unpacked into C{app/<version>/} next to
this file (gitignored). It needs Java 21 or later (L{find_java}).

Each registry gets a folder of its own: its configuration
(C{config/application.properties}, read by Quarkus from the working
directory, so a password never appears on a command line) and its H2
database, kept on disk so that a registry stopped and started again on the
same folder serves the same schemas under the same ids.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tarfile
import tempfile

from odinws_tools.mavenfetch import ensure_folder, run_maven

#: The Apicurio Registry release the tests run against.
APICURIO_VERSION = "3.3.3"
ARTIFACT = f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all"
#: The Confluent-compatible API's root under the registry's address.
CCOMPAT_PATH = "/apis/ccompat/v7"
#: Java's first release this Apicurio runs on (its classes are Java 21).
JAVA_MIN = 21
HERE = os.path.dirname(os.path.abspath(__file__))
APP_ROOT = os.path.join(HERE, "app")
#: Heap of one registry: the tests hold a few dozen schemas.
HEAP = "384m"


def ensure_app() -> str:
    """
    The folder of the pinned version's Quarkus application (holding
    C{quarkus-run.jar}), fetched with Maven and unpacked first if it is
    not complete. Safe to call from several processes at once.

    @raise RuntimeError: Maven is missing or failed (its output in the message).
    """
    return ensure_folder(os.path.join(APP_ROOT, APICURIO_VERSION), _fetch)


def _fetch(folder: str) -> None:
    with tempfile.TemporaryDirectory(dir=APP_ROOT) as download:
        # dependency:copy needs no project: run it where there is no pom.
        run_maven(ARTIFACT, ["dependency:copy", f"-Dartifact={ARTIFACT}",
                             f"-DoutputDirectory={download}"], cwd=download)
        archives = glob.glob(os.path.join(download, "*.tar.gz"))
        if len(archives) != 1:
            raise RuntimeError(f"mvn dependency:copy {ARTIFACT} left {archives}")
        with tarfile.open(archives[0]) as archive:
            archive.extractall(folder, filter="data")
    if not os.path.exists(os.path.join(folder, "quarkus-run.jar")):
        raise RuntimeError(f"{ARTIFACT} holds no quarkus-run.jar")


def java_major(java: str) -> int:
    """The major version C{java -version} reports (0 if it does not run)."""
    try:
        result = subprocess.run([java, "-version"], stdin=subprocess.DEVNULL,
                                capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    found = re.search(rb'version "(\d+)', result.stderr)
    return int(found.group(1)) if found else 0


def find_java() -> str:
    """
    A C{java} of release L{JAVA_MIN} or later: C{$ODINWS_JAVA} if set,
    then C{$JAVA_HOME}'s, the one on C{PATH}, and those under
    C{/usr/lib/jvm} (Debian 12's own OpenJDK is 17; the polyglot machine
    has a Temurin 25 beside it), newest first.

    @raise RuntimeError: none found.
    """
    if os.environ.get("ODINWS_JAVA"):
        candidates = [os.environ["ODINWS_JAVA"]]
    else:
        home = os.environ.get("JAVA_HOME")
        candidates = [os.path.join(home, "bin", "java")] if home else []
        candidates += [shutil.which("java") or ""]
        candidates += sorted(glob.glob("/usr/lib/jvm/*/bin/java"), reverse=True)
    seen = []
    for java in candidates:
        if java and os.access(java, os.X_OK) and java not in seen:
            seen.append(java)
            if java_major(java) >= JAVA_MIN:
                return java
    raise RuntimeError(f"Apicurio Registry {APICURIO_VERSION} needs Java {JAVA_MIN} or "
                       f"later; none of {seen} is (set ODINWS_JAVA to one)")


def write_config(directory: str, port: int, management_port: int,
                 credentials: str = "") -> None:
    """
    The registry's C{config/application.properties} in C{directory}: HTTP
    and the management interface (health, metrics) on 127.0.0.1, the H2
    database in C{directory/db}, and with C{credentials} ("user:password")
    HTTP basic authentication required on every API.
    """
    lines = [
        "quarkus.http.host=127.0.0.1",
        f"quarkus.http.port={port}",
        "quarkus.management.host=127.0.0.1",
        f"quarkus.management.port={management_port}",
        "quarkus.http.access-log.enabled=false",
        f"apicurio.datasource.url=jdbc:h2:file:{os.path.join(directory, 'db', 'registry')}",
        # The default pool (20 to 100 connections) is sized for a server.
        "apicurio.datasource.jdbc.initial-size=2",
        "apicurio.datasource.jdbc.min-size=2",
        "apicurio.datasource.jdbc.max-size=10",
    ]
    if credentials:
        user, _, password = credentials.partition(":")
        if not user or not password:
            raise ValueError("credentials must be user:password")
        lines += [
            # Quarkus's own basic authentication against an embedded user
            # (the application is built with embedded users enabled).
            "quarkus.http.auth.basic=true",
            "quarkus.security.users.embedded.plain-text=true",
            f"quarkus.security.users.embedded.users.{_escaped(user)}={_escaped(password)}",
            "quarkus.http.auth.permission.api.paths=/apis/*",
            "quarkus.http.auth.permission.api.policy=authenticated",
        ]
    os.makedirs(os.path.join(directory, "config"), exist_ok=True)
    path = os.path.join(directory, "config", "application.properties")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write("\n".join(lines) + "\n")


def _escaped(text: str) -> str:
    """C{text} as a key or value of a Java properties file."""
    return re.sub(r"([\\:=#! ])", r"\\\1", text)


def command(java: str, app: str) -> list[str]:
    """The command that runs the registry of the current directory's config."""
    return [java, f"-Xmx{HEAP}", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-Djava.net.preferIPv4Stack=true",
            "-jar", os.path.join(app, "quarkus-run.jar")]
