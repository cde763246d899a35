"""
Schemas from the Schema Registry for the consumer thread (L{SchemaSource}),
without letting a registry that is down or slow hold up consumption.

The consumer thread asks for a schema by id. A cached one is returned at
once. An unknown one is fetched in a thread of this module's small pool
(confluent-kafka's C{SchemaRegistryClient}: one HTTP request, bounded by
C{schema_registry.timeout}, no retries of its own) and the consumer thread
waits for it at most C{schema_registry.wait}; if it has not come by then,
the record is skipped (counted) and the fetch goes on, so the next records
of that schema find it. A fetch that failed is not tried again for
C{schema_registry.retry} seconds: meanwhile the records of that schema are
skipped at once, instead of each waiting. The reactor never waits: the
registry is only touched from the pool, and its state reaches C{/health}
as plain values read from the reactor thread.

A schema's references (Avro named types, JSON Schema C{$ref}s, Protobuf
imports registered under subjects of their own) are fetched in the same
pool thread, before the schema counts as there, each through the same
client so that the deserializers find them in its cache; they are bounded
by L{MAX_REFERENCE_DEPTH} levels and L{MAX_REFERENCES} distinct schemas
per schema, as a registry can hold a chain of references of any length.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError

from odin_ws.common import metrics
from odin_ws.common.settings import SchemaRegistrySettings

#: Threads fetching schemas: two, so one slow id does not hold up another.
FETCH_THREADS = 2
#: Levels of references below a schema (a reference of a reference is level 2).
MAX_REFERENCE_DEPTH = 8
#: Distinct referenced schemas (subject, version) below one schema.
MAX_REFERENCES = 64


class RegistryState(enum.StrEnum):
    """The registry as this shard last found it (C{/health}: the values are the API)."""

    #: Nothing asked of it yet.
    IDLE = "idle"
    OK = "ok"
    UNREACHABLE = "unreachable"


class Missing(enum.StrEnum):
    """Why a schema is not there; the values are C{odinws_kafka_rejected} reasons."""

    #: The registry does not know the id (404).
    UNKNOWN = "unknown_schema"
    #: The registry did not answer in time, refused, or failed.
    UNAVAILABLE = "registry_unavailable"
    #: A reference the registry does not have, or references beyond the bounds.
    REFERENCES = "schema_references"


@dataclass(frozen=True, slots=True)
class Dependency:
    """A schema a schema references: its import name and the schema itself."""

    name: str
    schema: Schema


class SchemaSource:
    """
    The shard's schemas by id (the consumer thread's and the warm-up's).

    @param new_client: makes a C{SchemaRegistryClient} (L{client_config}
        builds its configuration from the settings): one per format asked
        for, as the client caches a schema by id whatever the format.
    @param clock: monotonic seconds (for the retry bound).
    """

    def __init__(self, settings: SchemaRegistrySettings, new_client: Callable[[], Any],
                 clock: Callable[[], float] = time.monotonic):
        self._new_client = new_client
        self._clients: dict[str, Any] = {}
        self._wait = settings.wait
        self._retry = settings.retry
        self._capacity = settings.cache_size
        self._clock = clock
        self._lock = threading.Lock()
        # (id, format) -> Schema, least recently used first.
        self._schemas: OrderedDict[tuple[int, str], Schema] = OrderedDict()
        # (id, format) -> its references, each after those it references.
        self._dependencies: dict[tuple[int, str], tuple[Dependency, ...]] = {}
        # (id, format) -> the fetch under way.
        self._fetching: dict[tuple[int, str], Future[Schema]] = {}
        # (id, format) -> (why, when it may be asked again).
        self._failed: dict[tuple[int, str], tuple[Missing, float]] = {}
        self._pool: ThreadPoolExecutor | None = None
        #: Status, written by the fetching threads, read by L{status}.
        self._state = RegistryState.IDLE
        self._last_error: str | None = None

    @classmethod
    def from_settings(cls, settings: SchemaRegistrySettings) -> SchemaSource:
        """A source talking to C{schema_registry.url}."""
        conf = client_config(settings)
        return cls(settings, lambda: SchemaRegistryClient(conf))

    def reconfigure(self, settings: SchemaRegistrySettings) -> None:
        """
        A reload: C{wait}, C{retry} and C{cache_size} from now on (a smaller
        cache drops its least recently used schemas at once; a failure
        already waiting out its retry keeps its time). The registry's
        address, credentials and timeout are the clients', made once: they
        need a restart, and cached ids belong to the registry they came from.
        """
        with self._lock:
            self._wait = settings.wait
            self._retry = settings.retry
            self._capacity = settings.cache_size
            self._trim()
            cached = len(self._schemas)
        metrics.SCHEMAS_CACHED.set(cached)

    def _trim(self) -> None:
        while len(self._schemas) > self._capacity:
            key, _ = self._schemas.popitem(last=False)
            self._dependencies.pop(key, None)

    def client(self, fmt: str) -> Any:
        """The registry client whose cache holds the schemas fetched in format C{fmt}."""
        with self._lock:
            found = self._clients.get(fmt)
            if found is None:
                found = self._clients[fmt] = self._new_client()
            return found

    def schema(self, schema_id: int, fmt: str = "") -> Schema | Missing:
        """
        Consumer thread: the schema with this id (C{fmt}: the registry's
        C{format} query, C{serialized} for Protobuf), or why not.
        """
        key = (schema_id, fmt)
        with self._lock:
            found = self._schemas.get(key)
            if found is not None:
                self._schemas.move_to_end(key)
                return found
            failed = self._failed.get(key)
            if failed is not None:
                if self._clock() < failed[1]:
                    return failed[0]
                del self._failed[key]
            future = self._fetching.get(key)
            if future is None:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(FETCH_THREADS, "odinws-schemas")
                future = self._pool.submit(self._fetch, key)
                self._fetching[key] = future
        try:
            return future.result(self._wait)
        except FutureTimeout:
            return Missing.UNAVAILABLE
        except _Failed as e:
            return e.why

    def dependencies(self, schema_id: int, fmt: str = "") -> tuple[Dependency, ...]:
        """
        Consumer thread: the references of a schema L{schema} returned,
        each after the ones it references itself.
        """
        with self._lock:
            return self._dependencies.get((schema_id, fmt), ())

    def _fetch(self, key: tuple[int, str]) -> Schema:
        """Pool thread: the schema and its references; the outcome cached either way."""
        schema_id, fmt = key
        try:
            client = self.client(fmt)
            schema = client.get_schema(schema_id, fmt=fmt or None)
            dependencies = _References(client, fmt).resolve(schema)
        except _ReferencesRefused as e:
            self._fail(key, Missing.REFERENCES, f"schema {schema_id}: {e}", reachable=True)
            raise _Failed(Missing.REFERENCES) from None
        except SchemaRegistryError as e:
            # 404 with error 40403: the registry answered, it has no such id.
            why = Missing.UNKNOWN if e.http_status_code == 404 else Missing.UNAVAILABLE
            self._fail(key, why, f"schema {schema_id}: {e.error_message} ({e.http_status_code})",
                       reachable=e.http_status_code == 404)
            raise _Failed(why) from None
        except Exception as e:
            # httpx's transport errors (refused, timeout, TLS), and whatever
            # else a broken answer raises: the registry is not usable now.
            self._fail(key, Missing.UNAVAILABLE, f"schema {schema_id}: {type(e).__name__}: {e}",
                       reachable=False)
            raise _Failed(Missing.UNAVAILABLE) from None
        metrics.SCHEMA_FETCHES.labels("ok").inc()
        with self._lock:
            self._fetching.pop(key, None)
            self._schemas[key] = schema
            self._dependencies[key] = dependencies
            self._trim()
            cached = len(self._schemas)
        metrics.SCHEMAS_CACHED.set(cached)
        self._state = RegistryState.OK
        self._last_error = None
        return schema

    def _fail(self, key: tuple[int, str], why: Missing, text: str, reachable: bool) -> None:
        metrics.SCHEMA_FETCHES.labels(why.value).inc()
        with self._lock:
            self._fetching.pop(key, None)
            self._failed[key] = (why, self._clock() + self._retry)
        self._last_error = text
        self._state = RegistryState.OK if reachable else RegistryState.UNREACHABLE

    def status(self) -> dict[str, Any]:
        """The registry's state for C{/health}."""
        with self._lock:
            cached = len(self._schemas)
        return {"state": self._state.value, "schemas": cached, "last_error": self._last_error}

    def close(self) -> None:
        """Stop the pool without waiting for fetches under way (each is bounded anyway)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class _ReferencesRefused(Exception):
    """A schema's references go beyond the bounds, or one is not in the registry."""


class _References:
    """
    Pool thread: a schema's references, depth first, each fetched once
    (C{get_version} through the client whose cache the deserializers read).
    """

    def __init__(self, client: Any, fmt: str):
        self._client = client
        self._fmt = fmt or None
        self._seen: set[tuple[str, int]] = set()
        self._order: list[Dependency] = []

    def resolve(self, schema: Schema) -> tuple[Dependency, ...]:
        self._visit(schema, 1)
        return tuple(self._order)

    def _visit(self, schema: Schema, depth: int) -> None:
        for ref in schema.references or ():
            if ref.subject is None or ref.version is None or ref.name is None:
                raise _ReferencesRefused(f"reference {ref.name!r} without subject or version")
            key = (ref.subject, ref.version)
            if key in self._seen:
                continue
            if depth > MAX_REFERENCE_DEPTH:
                raise _ReferencesRefused(f"references deeper than {MAX_REFERENCE_DEPTH} levels "
                                         f"(at {ref.subject} version {ref.version})")
            if len(self._seen) >= MAX_REFERENCES:
                raise _ReferencesRefused(f"more than {MAX_REFERENCES} referenced schemas")
            self._seen.add(key)
            try:
                found = self._client.get_version(ref.subject, ref.version, True, fmt=self._fmt)
            except SchemaRegistryError as e:
                if e.http_status_code != 404:
                    raise
                raise _ReferencesRefused(f"reference {ref.subject} version {ref.version}: "
                                         f"{e.error_message} (404)") from None
            self._visit(found.schema, depth + 1)
            self._order.append(Dependency(ref.name, found.schema))


class _Failed(Exception):
    """A fetch's outcome, raised through its Future."""

    def __init__(self, why: Missing):
        super().__init__(why.value)
        self.why = why


def client_config(settings: SchemaRegistrySettings) -> dict[str, Any]:
    """
    confluent-kafka's registry client configuration. Credentials come from
    files (never the environment); the client retries nothing itself: the
    bounds here are L{SchemaSource}'s.
    """
    conf: dict[str, Any] = {"url": settings.url, "timeout": settings.timeout,
                            "max.retries": 0, "cache.capacity": settings.cache_size}
    if settings.basic_auth_file:
        with open(settings.basic_auth_file, encoding="utf-8") as f:
            user_info = f.read().strip()
        if ":" not in user_info:
            raise ValueError(f"schema_registry.basic_auth_file {settings.basic_auth_file}: "
                             "expected user:password")
        conf["basic.auth.user.info"] = user_info
    if settings.ca_file:
        conf["ssl.ca.location"] = settings.ca_file
    if settings.certificate:
        conf["ssl.certificate.location"] = settings.certificate
        if settings.private_key:
            conf["ssl.key.location"] = settings.private_key
    return conf
