"""
Tests of C{odinws-loadtest --client native} (L{odinws_tools.loadtest.nativeclient},
C{loadclient.c}): the native worker must catch what the Python worker
catches. A scripted WebSocket server on loopback (plain sockets, a thread)
answers the upgrade and the subscribe, then sends a chosen event stream:
in order, with a gap, with a duplicate and an event out of order, two
streams interleaved, one connection short of the last event, a refused
upgrade, a wrong accept key, a close after subscribing. Each script runs
through the whole tool (workers, completeness check, report) with both
clients, which must give the same verdict and counts. A last test runs
the native client against a real node with events from Kafka.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable

from twisted.trial import unittest

from odinws_tools.loadtest import nativeclient
from odinws_tools.loadtest import run as loadtest

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CHANNEL_A = "odin.token.A.trade"
CHANNEL_B = "odin.token.B.trade"
#: Event timestamps this far ahead of the server's clock: they fall after the
#: client read its "subscribed" answer (the completeness window's start)
#: however the two threads are scheduled.
AHEAD_MS = 300

#: What the server does with connection n (in accept order): a list of
#: (channel, seq) events or dict messages to send after the subscribe
#: answer, or a str action.
Script = Callable[[int], "list[tuple[str, int] | dict] | str"]


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    head = struct.pack("!BB", 0x80 | opcode, n) if n < 126 else struct.pack(
        "!BBH", 0x80 | opcode, 126, n)
    return head + payload


def _read_frame(sock: socket.socket, buf: bytearray) -> tuple[int, bytes] | None:
    """One client (masked) frame, or None at end of stream."""
    while True:
        if len(buf) >= 2:
            n, head = buf[1] & 0x7F, 2
            if n == 126 and len(buf) >= 4:
                n, head = struct.unpack("!H", buf[2:4])[0], 4
            if n < 126 or head == 4:
                end = head + 4 + n
                if len(buf) >= end:
                    mask, data = buf[head:head + 4], buf[head + 4:end]
                    opcode = buf[0] & 0x0F
                    del buf[:end]
                    return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk


class ScriptedServer:
    """A WebSocket server on 127.0.0.1 that plays L{Script} to each connection."""

    def __init__(self, script: Script):
        self.script = script
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()
        for t in self.threads:
            t.join(10)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(sock, self.accepted), daemon=True)
            self.accepted += 1
            self.threads.append(t)
            t.start()

    def _serve(self, sock: socket.socket, n: int) -> None:
        with sock:
            buf = bytearray()
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                buf += chunk
            head, _, rest = bytes(buf).partition(b"\r\n\r\n")
            key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            plan = self.script(n)
            if plan == "503":
                sock.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                return
            accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
            if plan == "bad_accept":
                accept = base64.b64encode(b"x" * 20)
            sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            buf = bytearray(rest)
            got = _read_frame(sock, buf)
            if got is None:
                return
            sub = json.loads(got[1])
            sock.sendall(_frame(1, json.dumps({"type": "subscribed", "id": sub["id"],
                                               "channels": sub["channels"]}).encode()))
            if plan == "close_4000":
                sock.sendall(_frame(8, struct.pack("!H", 4000)))
                return
            if plan == "masked":
                # A server must never mask (RFC 6455 5.1): one masked event.
                event = json.dumps({"type": "event", "channel": CHANNEL_A,
                                    "data": {"seq": 1, "token": "A"}}).encode()
                mask = b"\x01\x02\x03\x04"
                sock.sendall(struct.pack("!BB", 0x81, 0x80 | len(event)) + mask
                             + bytes(b ^ mask[i % 4] for i, b in enumerate(event)))
                while (got := _read_frame(sock, buf)) is not None and got[0] != 8:
                    pass
                return
            assert isinstance(plan, list)
            ts = int(time.time() * 1000) + AHEAD_MS
            sock.sendall(b"".join(_frame(1, json.dumps(
                item if isinstance(item, dict) else
                {"type": "event", "channel": item[0], "data": {"seq": item[1], "token": "A"},
                 "ts": ts}).encode()) for item in plan))
            # Until the client closes (1000): answer it, then end.
            while (got := _read_frame(sock, buf)) is not None:
                if got[0] == 8:
                    sock.sendall(_frame(8, got[1][:2]))
                    return


class PythonClientChecksTests(unittest.TestCase):
    """
    Each script through the whole tool with the asyncio workers (the
    reference); L{NativeClientChecksTests} runs the same with the native one.
    """

    client = "python"
    connections = 2
    #: Seconds of hold: connections not opened by its end are never tried,
    #: and spawning the Python workers took over 5 s at a load of 40 here.
    duration = 10.0

    def _play(self, script: Script, channels: str = CHANNEL_A) -> tuple[int, dict]:
        server = ScriptedServer(script)
        self.addCleanup(server.close)
        report_dir = os.path.abspath(self.mktemp())
        code = loadtest.main([
            "--url", f"ws://127.0.0.1:{server.port}/ws", "--connections", str(self.connections),
            "--ramp", "20/s", "--duration", str(self.duration), "--drain", "0.2", "--workers", "1",
            "--channels", channels, "--metrics-url", "none", "--report", report_dir,
            "--quiet", *self.client_args()])
        with open(os.path.join(report_dir, "report.json")) as f:
            return code, json.load(f)

    def client_args(self) -> list[str]:
        return ["--client", self.client]

    def _counts(self, report: dict) -> tuple:
        k = report["completeness"]
        return k["expected"], k["received"], k["missing"], k["gaps"], k["duplicates"]

    def test_in_order(self):
        """Events 1..4 in order to every connection: PASS, all counted, nothing flagged."""
        code, report = self._play(lambda n: [(CHANNEL_A, s) for s in (1, 2, 3, 4)])
        self.assertEqual(report["verdict"]["reasons"], [])
        self.assertEqual(code, 0)
        self.assertEqual(self._counts(report), (8, 8, 0, 0, 0))
        self.assertEqual(report["events"]["delivered"], 8)
        self.assertEqual(report["config"]["client"], self.client)
        self.assertGreaterEqual(report["client"]["hold_cpu_share"], 0.0)

    def test_gap(self):
        """
        1, 2, a gap notice, 5: two events skipped per connection, the run
        fails, and the notices are counted by reason.
        """
        notice = {"type": "gap", "reason": "too_old", "streams": {}}
        code, report = self._play(lambda n: [(CHANNEL_A, 1), (CHANNEL_A, 2), notice,
                                             (CHANNEL_A, 5)])
        self.assertEqual(report["events"]["gap_notices"], {"too_old": 2})
        self.assertEqual(code, 1)
        self.assertEqual(report["completeness"]["gaps"], 4)
        self.assertIn("4 sequence gaps", report["verdict"]["reasons"])
        self.assertEqual(report["completeness"]["worst_channels"][0],
                         {"channel": CHANNEL_A, "gaps": 4, "duplicates": 0})

    def test_duplicate_and_out_of_order(self):
        """1, 2, 2, 4, 3: a duplicate, a gap (3 late) and 3 out of order: the run fails."""
        code, report = self._play(lambda n: [(CHANNEL_A, s) for s in (1, 2, 2, 4, 3)])
        self.assertEqual(code, 1)
        k = report["completeness"]
        self.assertEqual((k["gaps"], k["duplicates"]), (2, 4))
        self.assertIn("4 duplicates", report["verdict"]["reasons"])

    def test_order_is_per_stream(self):
        """Two streams interleaved, each in order: PASS (order is checked per channel)."""
        code, report = self._play(
            lambda n: [(CHANNEL_A, 1), (CHANNEL_B, 1), (CHANNEL_A, 2), (CHANNEL_B, 2)],
            channels=f"{CHANNEL_A},{CHANNEL_B}")
        self.assertEqual(report["verdict"]["reasons"], [])
        self.assertEqual(self._counts(report), (8, 8, 0, 0, 0))
        self.assertEqual(report["completeness"]["channels"], 2)

    def test_connection_missing_the_last_event(self):
        """One connection never gets event 3 that the other got: missing 1, the run fails."""
        code, report = self._play(lambda n: [(CHANNEL_A, s) for s in ((1, 2, 3) if n else (1, 2))])
        self.assertEqual(code, 1)
        self.assertEqual(self._counts(report), (6, 5, 1, 0, 0))
        self.assertEqual(report["completeness"]["connections_missing_events"], 1)
        self.assertIn("1 events missing", report["verdict"]["reasons"])

    def test_refused_wrong_key_and_closed(self):
        """A 503, a wrong accept key and a close after subscribing are each counted by reason."""
        self.connections = 3
        plans = {0: "503", 1: "bad_accept", 2: "close_4000"}
        code, report = self._play(lambda n: plans[n])
        self.assertEqual(code, 1)
        c = report["connections"]
        # Accept order may differ from connect order: the reasons, not who had which.
        self.assertEqual(c["failed"], {"http_503": 1, "bad_accept": 1})
        self.assertEqual(c["lost"], {"closed_4000": 1})

    def test_masked_server_frame(self):
        """
        A masked frame from the server is a protocol error (RFC 6455 5.1):
        the connection is counted lost, its event is not counted, the run fails.
        """
        self.connections = 1
        code, report = self._play(lambda n: "masked")
        self.assertEqual(code, 1)
        self.assertEqual(report["connections"]["lost"], {"masked_frame": 1})
        self.assertEqual(report["completeness"]["received"], 0)


class NativeClientChecksTests(PythonClientChecksTests):
    """The native worker, built from loadclient.c into the test's directory."""

    client = "native"
    duration = 3.0

    def client_args(self) -> list[str]:
        binary = nativeclient.build(os.path.abspath(os.path.join(self.mktemp(), "loadclient")))
        return ["--client", "native", "--native-binary", binary]


class NativeClientBuildTests(unittest.TestCase):

    def test_compiler_failure_is_reported(self):
        """A compiler that fails gives NativeUnavailable with its command, not a traceback later."""
        self.patch(os, "environ", {**os.environ, "CC": "false"})
        with self.assertRaises(nativeclient.NativeUnavailable) as e:
            nativeclient.build(os.path.abspath(os.path.join(self.mktemp(), "loadclient")))
        self.assertIn("false -O2", str(e.exception))

    def test_subscribe_messages_are_chunked(self):
        """250 channels make three subscribe messages of at most 100, ids 0..2."""
        msgs = [json.loads(m) for m in nativeclient.subscribe_messages(
            [f"odin.token.T{i}.*" for i in range(250)])]
        self.assertEqual([len(m["channels"]) for m in msgs], [100, 100, 50])
        self.assertEqual([m["id"] for m in msgs], [0, 1, 2])
