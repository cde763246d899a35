"""
C{python -m odinws_tools.apicurio --dir DIR [--port PORT] [--basic-auth-file F]}:
run Apicurio Registry on 127.0.0.1 with its configuration and database in
DIR (kept: started again on the same DIR it serves the same schemas), print
C{registry=URL} (the Confluent-compatible API's root) once it answers, run
until SIGTERM/SIGINT, then stop it. C{--fetch} only fetches the application
(C{make test} does).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from odinws_tools.apicurio import (
    APICURIO_VERSION,
    CCOMPAT_PATH,
    command,
    ensure_app,
    find_java,
    write_config,
)

START_TIMEOUT = 180.0
STOP_WAIT = 10.0
_PR_SET_PDEATHSIG = 1


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m odinws_tools.apicurio", description=__doc__)
    parser.add_argument("--dir", help="the registry's folder (created if missing)")
    parser.add_argument("--port", type=int, default=0, help="HTTP port (0: a free one)")
    parser.add_argument("--basic-auth-file", default="",
                        help="a file holding user:password: basic authentication required")
    parser.add_argument("--fetch", action="store_true",
                        help="only fetch the application with Maven (if missing) and exit")
    args = parser.parse_args(argv)
    if not args.fetch and not args.dir:
        parser.error("--dir is required")
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # The registry must not outlive this launcher, even killed by SIGKILL.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def answers(url: str) -> bool:
    """Whether the registry answers HTTP at all (401 included: it serves)."""
    try:
        with urllib.request.urlopen(url + "/subjects", timeout=5):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.fetch:
        print(f"apicurio registry {APICURIO_VERSION}: {ensure_app()}", flush=True)
        return 0
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    directory = os.path.abspath(args.dir)
    try:
        java, app = find_java(), ensure_app()
        credentials = ""
        if args.basic_auth_file:
            with open(args.basic_auth_file, encoding="utf-8") as f:
                credentials = f.read().strip()
        port = args.port or free_port()
        write_config(directory, port, free_port(), credentials)
    except (RuntimeError, OSError, ValueError) as e:
        print(f"apicurio: {e}", file=sys.stderr)
        return 1
    url = f"http://127.0.0.1:{port}{CCOMPAT_PATH}"
    started = time.monotonic()
    proc = subprocess.Popen(command(java, app), cwd=directory, stdin=subprocess.DEVNULL,
                            stdout=sys.stderr, preexec_fn=_die_with_parent)
    try:
        while not answers(url):
            if proc.poll() is not None or stopping.is_set():
                print(f"apicurio: the registry exited ({proc.returncode}) before it served",
                      file=sys.stderr)
                return 1
            if time.monotonic() - started > START_TIMEOUT:
                print(f"apicurio: the registry did not serve within {START_TIMEOUT:.0f}s",
                      file=sys.stderr)
                return 1
            stopping.wait(0.2)
        print(f"registry={url}", flush=True)
        print(f"apicurio registry {APICURIO_VERSION} ({java}) ready in "
              f"{time.monotonic() - started:.1f}s, data in {directory}",
              file=sys.stderr, flush=True)
        while not stopping.wait(0.5):
            if proc.poll() is not None:
                print(f"apicurio: the registry exited ({proc.returncode})", file=sys.stderr)
                return 1
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
