"""
How the parent starts a shard process, and how either process stops a
start-up that cannot succeed: the command line, descriptors and environment
both sides agree on (the parent builds them, the shard's twistd plugin reads
them).

The configuration (secrets included) reaches a shard on a pipe
(L{SHARD_CONFIG_FD}), never in its environment or argv: a process's
environment is inherited by everything it starts, shows in C{ps e} and in
crash dumps, and stays in C{/proc/<pid>/environ} for the process's life. The
pipe is read once, to its end, and closed before the shard starts its
services; later changes come over the control channel (C{Reload}).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from odin_ws.common.config import SCHEMA

#: What systemd sets for the service's main process (the parent): the
#: notification socket and the watchdog (odin_ws.parent.systemd).
SYSTEMD_ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

#: The shard's descriptor its configuration (JSON) arrives on: a pipe the
#: parent writes once and closes.
SHARD_CONFIG_FD = 4


def fail(message: str) -> None:
    """Stop start-up with one line on stderr and status 2, no traceback."""
    sys.stderr.write(f"odinws: {message}\n")
    raise SystemExit(2)


def twistd_argv(*args: str) -> list[str]:
    """
    Run twistd with this interpreter (C{python -m twisted} is the other
    runner, C{twist}, whose options differ).
    """
    return [sys.executable, "-c",
            "import sys; sys.argv[0] = 'twistd'; "
            "from twisted.scripts.twistd import run; run()", *args]


def shard_argv(number: int) -> list[str]:
    """How the parent starts shard C{number}: twistd in a process of its own."""
    return twistd_argv("--nodaemon", "--pidfile=", "--logfile=-", "odinws-shard",
                       "--index", str(number))


def shard_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """
    The environment a shard starts with: C{environ} without the
    C{ODINWS_*} setting overrides (they may hold secrets, such as
    C{ODINWS_AUTH_SECRET}; the shard gets the effective configuration on
    L{SHARD_CONFIG_FD} instead) and without systemd's notification
    variables (only the parent talks to systemd, as sd_notify(3)'s
    C{unset_environment} intends).
    """
    dropped = {opt.env for opt in SCHEMA} | set(SYSTEMD_ENVIRONMENT)
    return {k: v for k, v in environ.items() if k not in dropped}


def read_config(fd: int = SHARD_CONFIG_FD) -> str:
    """
    The configuration the parent wrote on C{fd}, read to its end; C{fd} is
    closed.

    @raise OSError: C{fd} is not open (the process was not started by the parent).
    @raise UnicodeDecodeError: what came is not UTF-8.
    """
    chunks = []
    try:
        os.set_blocking(fd, True)
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    return b"".join(chunks).decode("utf-8")
