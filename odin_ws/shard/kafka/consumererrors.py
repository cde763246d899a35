"""
What the errors of a shard's consumer mean for its status
(L{ConsumerErrors}, a part of L{odin_ws.shard.kafka.ingest.KafkaIngest}):
each librdkafka error classified once (fatal, every broker down, a
connection error while retrying or while running, other), counted by
kind, logged once per kind and episode, and the consumer's state
(running, retrying, unresponsive, error) with its one line per change.
All on the consumer thread (librdkafka serves its callbacks inside
C{consume}); lines are emitted in the reactor (L{ErrorsOwner._log}).
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from confluent_kafka import KafkaError

from odin_ws.common import metrics
from odin_ws.common.events import Partition
from odin_ws.common.settings import Settings
from odin_ws.shard.kafka.consumerstats import IngestState


class ErrorsOwner(Protocol):
    """The status a L{ConsumerErrors} reads and writes (its L{KafkaIngest})."""

    _reactor: Any
    _settings: Settings
    _state: IngestState
    _connected: bool
    _connected_at: float
    _assigned: frozenset[Partition]
    _last_error: str | None
    _connection_error: str | None
    _logged: set[str]
    _fatal: threading.Event

    @property
    def instance_id(self) -> str: ...

    def _log(self, level: str, fmt: str, **kw: Any) -> None: ...

    def _set_state(self, state: IngestState, connected: bool) -> None: ...

    def note_error(self, kind: str, text: str, level: str = "warn") -> None: ...

    def fatal(self, kind: str, text: str) -> None: ...

    def log_once(self, key: str, fmt: str, level: str = "warn", **kw: Any) -> None: ...


class ConsumerErrors:
    """The consumer's errors and state changes (consumer thread)."""

    # The owner's attributes (L{ErrorsOwner}) that its methods set to a
    # value narrower than their type (mypy would take that for the type).
    _last_error: str | None
    _connection_error: str | None
    _assigned: frozenset[Partition]
    _logged: set[str]

    def note_error(self: ErrorsOwner, kind: str, text: str, level: str = "warn") -> None:
        """Consumer thread: count an error by kind; log its first occurrence per episode."""
        metrics.KAFKA_ERRORS.labels(kind).inc()
        self._last_error = text
        self.log_once(kind, "Kafka consumer: {error}", level, error=text)

    def fatal(self: ErrorsOwner, kind: str, text: str) -> None:
        """
        Consumer thread: the consumer cannot go on (librdkafka's fatal state:
        it would return nothing more, its assignment still shown); end its
        loop so the thread replaces it (L{ConsumerThread}), and show why in
        the status meanwhile.
        """
        if "group.instance.id" in text:
            # FENCED_INSTANCE_ID: another consumer joined with this shard's id.
            text += (f" (instance id {self.instance_id}: another process joined the group "
                     f"{self._settings.group_id} with it; node_id must be unique among the "
                     f"nodes of kafka.group {self._settings.kafka.group!r})")
        self.note_error(kind, f"fatal: {text}", "error")
        self._set_state(IngestState.ERROR, False)
        # It reads nothing more: no partitions to show, whatever it holds.
        self._assigned = frozenset()
        self._fatal.set()

    def log_once(self: ErrorsOwner, key: str, fmt: str, level: str = "warn", **kw: Any) -> None:
        """Consumer thread: log a line once per kind (C{key}) and episode."""
        if key not in self._logged:
            self._logged.add(key)
            self._log(level, fmt, **kw)

    def _set_state(self: ErrorsOwner, state: IngestState, connected: bool) -> None:
        self._connected = connected
        if connected:
            self._connected_at = self._reactor.seconds()
        metrics.KAFKA_CONNECTED.set(1 if connected else 0)
        if state == self._state or self._state == IngestState.ERROR:
            return
        self._state = state
        if state == IngestState.RUNNING:
            # A new episode: the next error of each kind is worth a line
            # again, and the error that kept it from running no longer holds.
            self._logged = set()
            self._last_error = self._connection_error = None
            self._log("info", "Kafka consumer running (group {group})",
                      group=self._settings.group_id)
        elif state == IngestState.RETRYING:
            self._log("warn", "Kafka brokers unreachable, retrying: {error}",
                      error=self._last_error)
        elif state == IngestState.UNRESPONSIVE:
            self._log("warn", "Kafka broker not answering: {error}", error=self._last_error)

    def on_error(self: ErrorsOwner, err: KafkaError) -> None:
        """
        Consumer thread: an error from librdkafka, through error_cb or as a
        message from consume(): classified once (fatal, all brokers down,
        a connection error while retrying or while running, other).
        """
        kind = err.name().lstrip("_").lower()
        if err.fatal():
            self.fatal(kind, err.str())
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            metrics.KAFKA_ERRORS.labels(kind).inc()
            # The connection error before it says why; the retrying line shows it.
            self._last_error = self._connection_error or err.str()
            self._set_state(IngestState.RETRYING, False)
        elif err.code() in _CONNECTION_ERRORS and self._state != IngestState.RUNNING:
            # Retried by librdkafka every backoff: the state line reports it.
            metrics.KAFKA_ERRORS.labels(kind).inc()
            self._last_error = self._connection_error = err.str()
        elif err.code() in _CONNECTION_ERRORS:
            # Running: one broker connection failed (or a report of the outage
            # arrived after the consumer was back), while the statistics say
            # brokers answer. Counted and logged once; not the status's error,
            # which would then outlive what it says (issue 28).
            metrics.KAFKA_ERRORS.labels(kind).inc()
            self.log_once(kind, "Kafka consumer: {error}", error=err.str())
        else:
            self.note_error(kind, err.str())


_CONNECTION_ERRORS = (KafkaError._TRANSPORT, KafkaError._RESOLVE, KafkaError._TIMED_OUT)
