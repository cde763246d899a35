"""Fakes shared by the unit tests: metrics samples, a fake /proc, stalled transports, an admission that refuses."""

from __future__ import annotations

import os

from twisted.internet import abstract
from twisted.internet.testing import MemoryReactor

from odin_ws.common import metrics
from odin_ws.parent.admission import Admission
from odin_ws.common.twisted_internals import held
from odin_ws.shard.outbox import OutboxHolder
from tests.helpers.frames import OPEN


def sample(name: str, **labels) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


class FakeRoot:
    """A temp directory laid out like / with proc and sys/fs/cgroup files."""

    def __init__(self, path: str):
        self.path = path

    def write(self, rel: str, text: str) -> None:
        full = os.path.join(self.path, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(text)


class RefusingAdmission(Admission):
    """Records the IPs it is asked about and refuses each with C{verdict}."""

    def __init__(self, seen: list, verdict: tuple[int, str]):
        super().__init__(lambda: 0.0)
        self.seen, self.verdict = seen, verdict

    def check(self, ip):
        self.seen.append(ip)
        return self.verdict


class StalledTransport(abstract.FileDescriptor):
    """
    Twisted's real buffering and producer calls (L{abstract.FileDescriptor})
    over a fake kernel that takes only what the test allows: a stalled
    client until L{drain}.
    """

    def __init__(self):
        super().__init__(MemoryReactor())
        self.connected = 1
        self.allow = 0
        self.wire = bytearray()

    def writeSomeData(self, data):
        n = min(len(data), self.allow)
        self.allow -= n
        self.wire += data[:n]
        return n

    def drain(self) -> None:
        """The client reads everything, as the reactor's doWrite would deliver it."""
        self.allow = 1 << 40
        while held(self):
            self.doWrite()
        self.allow = 0


class FakeProtocol(OutboxHolder):
    """What an Outbox uses of an Autobahn protocol: its transport and state."""

    def __init__(self, transport):
        self.transport = transport
        self.state = OPEN
