"""
Fakes shared by the unit tests: metrics samples, a fake /proc, stalled
transports, an admission that refuses, and the supervisor's processes, their
reactor and the shard's end of a control channel.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from confluent_kafka import KafkaError
from twisted.internet import abstract, error
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim

from odin_ws.common import metrics
from odin_ws.common.commands import Deliver, Drain, Reload
from odin_ws.common.settings import Settings
from odin_ws.common.twisted_internals import held
from odin_ws.parent.admission import Admission
from odin_ws.shard.delivery.outbox import OutboxHolder
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


class SendLoop:
    """
    Mixed into a test class whose Fanouts take C{native=self.send_loop()}:
    C{native = True} runs them with the C send loop (odin_ws/shard/delivery/_sendrun.c),
    False with the pure-Python one. The extension is imported, not looked
    for: where it is not built, the native classes fail.
    """

    native = False

    def send_loop(self):
        if not self.native:
            return None
        from odin_ws.shard.delivery import _sendrun
        return _sendrun.send_runs


class FakeProtocol(OutboxHolder):
    """What an Outbox uses of an Autobahn protocol: its transport and state."""

    def __init__(self, transport):
        self.transport = transport
        self.state = OPEN


# -- the parent's supervisor: processes, their reactor, the shard's AMP end

class FakeProcess:
    """A spawned process the test ends by hand."""

    def __init__(self, proto, pid, argv, env, childFDs, fd3):
        self.proto = proto
        self.pid = pid
        self.argv = argv
        self.env = env
        self.childFDs = childFDs
        self.fd3 = fd3  # a duplicate of the child's control end
        self.signals: list[str] = []
        self.ended = False
        #: What the parent wrote to each of the child's pipes, and which it closed.
        self.written: dict[int, bytes] = {}
        self.closed_fds: list[int] = []

    def writeToChild(self, fd, data):
        assert fd not in self.closed_fds, f"fd {fd} written after it was closed"
        self.written[fd] = self.written.get(fd, b"") + data

    def closeChildFD(self, fd):
        self.closed_fds.append(fd)

    def signalProcess(self, sig):
        if self.ended:
            raise error.ProcessExitedAlready()
        self.signals.append(sig)

    def end(self, code=0, signal=None):
        self.ended = True
        if signal is not None:
            reason = error.ProcessTerminated(signal=signal)
        elif code:
            reason = error.ProcessTerminated(exitCode=code)
        else:
            reason = error.ProcessDone(0)
        self.proto.processEnded(Failure(reason))


class FakeOptions:
    """
    What C{tap.makeService} uses of the command line: the settings, and how
    to load them again on a reload (default: the same settings).
    """

    def __init__(self, settings: Settings, load: Callable[[], Settings] | None = None):
        self.settings = settings
        self.load = load or (lambda: settings)


class FakeReactor(MemoryReactorClock):
    """
    L{MemoryReactorClock} plus a recording C{spawnProcess} (whose processes
    the test ends by hand) and C{adoptStreamConnection} keeping the fds alive
    until L{close_fds}.
    """

    def __init__(self):
        super().__init__()
        self.processes: list[FakeProcess] = []
        self.adopted_fds: list[int] = []
        self.spawn_error: Exception | None = None
        self._pid = 1000

    def adoptStreamConnection(self, fileDescriptor, addressFamily, factory):
        # Keep our own copy: the supervisor closes its end after adopting,
        # as it may, since the real reactor adopts a duplicate.
        self.adopted_fds.append(os.dup(fileDescriptor))
        super().adoptStreamConnection(fileDescriptor, addressFamily, factory)

    def spawnProcess(self, processProtocol, executable, args=(), env=None, path=None,
                     uid=None, gid=None, usePTY=False, childFDs=None):
        if self.spawn_error is not None:
            raise self.spawn_error
        self._pid += 1
        fd3 = os.dup(childFDs[3])
        self.adopted_fds.append(fd3)
        proc = FakeProcess(processProtocol, self._pid, list(args), env, dict(childFDs), fd3)
        proc.executable = executable
        processProtocol.makeConnection(proc)
        self.processes.append(proc)
        return proc

    def close_fds(self):
        for fd in self.adopted_fds:
            os.close(fd)


class FakeParentLink(amp.AMP):
    """
    The shard's end of a control channel (as the shard's ParentLink): answers
    Deliver, Drain (or holds it, with C{hold_drain}) and Reload, and records them.
    """

    def __init__(self):
        super().__init__()
        self.delivered: list[bytes] = []
        self.drains: list[float] = []
        self.hold_drain = False
        self.held: list[Deferred] = []
        self.reloads: list[bytes] = []

    @Deliver.responder
    def deliver(self, batch):
        self.delivered.append(batch)
        return {}

    @Drain.responder
    def drain(self, window):
        self.drains.append(window)
        if self.hold_drain:
            d = Deferred()
            self.held.append(d)
            return d
        return {"closed": 2}

    @Reload.responder
    def reload(self, config):
        self.reloads.append(config)
        return {}


def connect_shard(reactor: FakeReactor, adopted: int) -> tuple[FakeParentLink, iosim.IOPump]:
    """
    Connect the C{adopted}-th control channel the parent adopted to a new
    L{FakeParentLink} over L{iosim}; flush the pump to deliver.
    """
    factory = reactor.adoptedStreamConnections[adopted][2]
    parent = factory.buildProtocol(None)
    shard = FakeParentLink()
    pump = iosim.connect(parent, iosim.makeFakeServer(parent),
                         shard, iosim.makeFakeClient(shard), greet=False)
    return shard, pump


class CountingTransport(StringTransport):
    """A StringTransport that counts write calls."""

    writes = 0

    def write(self, data):
        self.writes += 1
        super().write(data)


def policies(**by_type: str):
    """An Outbox's policy_for: C{by_type}'s policy per event type, else drop."""
    return lambda event_type: by_type.get(event_type, "drop")


class _PartitionEof:
    """The error of librdkafka's end-of-partition message."""

    def code(self):
        return KafkaError._PARTITION_EOF

    def fatal(self):
        return False


class FakeKafkaMessage:
    """
    A confluent-kafka Message as the consumer loop and the warm-up read it:
    by default key C{K}, value C{{"o": offset}}, a 2023 timestamp; C{eof}
    makes it librdkafka's end-of-partition message, C{error} a message
    carrying that error.
    """

    def __init__(self, topic: str, partition: int, offset: int, key: bytes = b"K",
                 value: bytes | None = None, ts: int = 1700000000000, eof: bool = False,
                 error: KafkaError | None = None):
        self._t, self._p, self._o, self._k = topic, partition, offset, key
        self._v = b'{"o": %d}' % offset if value is None else value
        self._ts, self._eof, self._error = ts, eof, error

    def error(self):
        return _PartitionEof() if self._eof else self._error

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def key(self):
        return self._k

    def value(self):
        return self._v

    def timestamp(self):
        return (1, self._ts)

    def headers(self):
        return None
