"""
How the parent starts a shard process, and how either process stops a
start-up that cannot succeed: the command line and environment both sides
agree on (the parent builds them, the shard's twistd plugin reads them).
"""

from __future__ import annotations

import sys

#: Environment variable carrying the parent's effective config to a shard.
SHARD_CONFIG_ENV = "ODINWS_INTERNAL_SHARD_CONFIG"


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
