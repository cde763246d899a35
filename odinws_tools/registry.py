"""
C{python -m odinws_tools.registry --port PORT --bootstrap HOST:PORT}: a
Schema Registry for the tests and the demo, serving the part of
Confluent's REST API that producers' serializers and odinws use, on
127.0.0.1 only; prints C{registry=URL} once it serves, stops on
SIGTERM/SIGINT.

The tests and the demo run Apicurio Registry (L{odinws_tools.apicurio});
this one is left for Protobuf, which Apicurio 3.3.3 cannot serve to
confluent-kafka's Python clients (it refuses the base64 descriptors their
serializer registers, and answers C{format=serialized} with raw bytes,
not base64). Karapace is not on PyPI, Confluent's registry not on Maven
Central. This one keeps what a real registry keeps, the way Confluent's and Karapace's do: every
registration is a record of a compacted Kafka topic (C{--topic}), read
back at start, so a registry stopped and started again serves the same
ids. It validates schemas with the real parsers (fastavro, jsonschema,
protobuf; an Avro schema with the schemas it references) and gives the
same id to the same schema (and references) under any subject; it does
not check compatibility between versions (C{/config} says NONE).

Endpoints: C{POST /subjects/S/versions}, C{POST /subjects/S} (lookup),
C{GET /schemas/ids/N} (C{format} ignored: a Protobuf schema is kept as
the serialized descriptor the serializers register), C{GET /subjects},
C{GET /subjects/S/versions}, C{GET /subjects/S/versions/V|latest},
C{GET /config}, C{GET /schemas/types}. With C{--basic-auth-file} every
request must carry those credentials (401 otherwise).
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import signal
import sys
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import fastavro
import jsonschema
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from google.protobuf import descriptor_pb2

TYPES = ("AVRO", "JSON", "PROTOBUF")


@dataclass(frozen=True)
class Registered:
    subject: str
    version: int
    schema_id: int
    schema_type: str
    schema: str
    #: Confluent's references: [{"name", "subject", "version"}, ...].
    references: list[dict[str, Any]] = field(default_factory=list)


class RegistryError(Exception):
    def __init__(self, status: int, code: int, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def check(schema_type: str, text: str, named: list[str]) -> None:
    """
    Parse the schema with its format's own library (C{named}: the Avro
    schemas it references, each after those they reference); RegistryError
    422 if it does not.
    """
    try:
        if schema_type == "AVRO":
            known: dict[str, Any] = {}
            for other in named:
                fastavro.parse_schema(json.loads(other), named_schemas=known)
            fastavro.parse_schema(json.loads(text), named_schemas=known)
        elif schema_type == "JSON":
            jsonschema.validators.validator_for(json.loads(text)).check_schema(json.loads(text))
        elif schema_type == "PROTOBUF":
            descriptor_pb2.FileDescriptorProto().ParseFromString(base64.b64decode(text,
                                                                                  validate=True))
        else:
            raise RegistryError(422, 42200, f"unknown schemaType {schema_type}")
    except RegistryError:
        raise
    except Exception as e:
        raise RegistryError(422, 42201, f"Invalid schema: {type(e).__name__}: {e}") from None


class Store:
    """Schemas by id and by subject, every registration a record of C{topic}."""

    def __init__(self, bootstrap: str, topic: str):
        self.topic = topic
        self.lock = threading.Lock()
        # id -> (schemaType, schema, references as JSON text).
        self.by_id: dict[int, tuple[str, str, str]] = {}
        self.subjects: dict[str, list[Registered]] = {}
        admin = AdminClient({"bootstrap.servers": bootstrap})
        futures = admin.create_topics([NewTopic(topic, 1, 1,
                                                config={"cleanup.policy": "compact"})])
        try:
            futures[topic].result(30)
        except KafkaException as e:
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise
        self.producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
        self._read_back(bootstrap)

    def _read_back(self, bootstrap: str) -> None:
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "odinws-registry",
                             "enable.auto.commit": False})
        try:
            _, high = consumer.get_watermark_offsets(TopicPartition(self.topic, 0), timeout=30)
            consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
            position = 0
            while position < high:
                m = consumer.poll(5.0)
                offset = None if m is None or m.error() else m.offset()
                if m is None or offset is None:
                    continue
                position = offset + 1
                self._apply(Registered(**json.loads(m.value() or b"{}")))
        finally:
            consumer.close()

    def _apply(self, r: Registered) -> None:
        self.by_id[r.schema_id] = _identity(r.schema_type, r.schema, r.references)
        versions = self.subjects.setdefault(r.subject, [])
        if all(v.version != r.version for v in versions):
            versions.append(r)

    def register(self, subject: str, schema_type: str, text: str,
                 references: list[dict[str, Any]]) -> int:
        check(schema_type, text, self.referenced(references))
        identity = _identity(schema_type, text, references)
        with self.lock:
            for v in self.subjects.get(subject, []):
                if _identity(v.schema_type, v.schema, v.references) == identity:
                    return v.schema_id
            same = [i for i, s in self.by_id.items() if s == identity]
            schema_id = same[0] if same else max(self.by_id, default=0) + 1
            version = len(self.subjects.get(subject, [])) + 1
            r = Registered(subject, version, schema_id, schema_type, text, references)
            # Kept in Kafka first: what was answered survives a restart.
            self.producer.produce(self.topic, key=f"{subject}/{version}",
                                  value=json.dumps(r.__dict__))
            if self.producer.flush(10) != 0:
                raise RegistryError(500, 50001, "could not store the schema in Kafka")
            self._apply(r)
            return schema_id

    def referenced(self, references: list[dict[str, Any]]) -> list[str]:
        """The schemas C{references} name, each after those they reference (422 if missing)."""
        out: list[str] = []
        for ref in references:
            try:
                r = self.version(ref["subject"], str(ref["version"]))
            except RegistryError as e:
                raise RegistryError(422, 42201, f"Invalid reference {ref}: {e.message}") from None
            out += [*self.referenced(r.references), r.schema]
        return out

    def version(self, subject: str, version: str) -> Registered:
        versions = self.subjects.get(subject)
        if not versions:
            raise RegistryError(404, 40401, f"Subject '{subject}' not found.")
        if version in ("latest", "-1"):
            return versions[-1]
        for v in versions:
            if str(v.version) == version:
                return v
        raise RegistryError(404, 40402, f"Version {version} not found.")


def _identity(schema_type: str, text: str, references: list[dict[str, Any]]) -> tuple[str, str, str]:
    return schema_type, text, json.dumps(references, sort_keys=True)


def _described(r: Registered) -> dict[str, Any]:
    out: dict[str, Any] = {"subject": r.subject, "version": r.version, "id": r.schema_id,
                           "schema": r.schema}
    if r.schema_type != "AVRO":
        out["schemaType"] = r.schema_type
    if r.references:
        out["references"] = r.references
    return out


class Handler(BaseHTTPRequestHandler):
    store: Store
    #: The Authorization header every request must carry (None: none needed).
    authorization: str | None = None
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str) -> None:
        path = urllib.parse.urlsplit(self.path).path
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/") if p]
        try:
            if self.authorization is not None \
                    and self.headers.get("Authorization") != self.authorization:
                raise RegistryError(401, 40101, "Unauthorized")
            body: Any = None
            if method == "POST":
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
            self._answer(200, self._handle(method, parts, body))
        except RegistryError as e:
            self._answer(e.status, {"error_code": e.code, "message": e.message})
        except (ValueError, KeyError) as e:
            self._answer(422, {"error_code": 42200, "message": f"bad request: {e}"})

    def _handle(self, method: str, parts: list[str], body: Any) -> Any:
        store = self.store
        if method == "GET" and parts in ([], ["config"]):
            return {"compatibilityLevel": "NONE"} if parts else {}
        if method == "GET" and parts == ["schemas", "types"]:
            return list(TYPES)
        if method == "GET" and parts == ["subjects"]:
            return sorted(store.subjects)
        if method == "GET" and len(parts) == 3 and parts[:2] == ["schemas", "ids"]:
            found = store.by_id.get(int(parts[2]))
            if found is None:
                raise RegistryError(404, 40403, "Schema not found")
            out: dict[str, Any] = {"schema": found[1]}
            if found[0] != "AVRO":
                out["schemaType"] = found[0]
            if json.loads(found[2]):
                out["references"] = json.loads(found[2])
            return out
        if len(parts) >= 2 and parts[0] == "subjects":
            subject = parts[1]
            if method == "POST" and parts[2:] == ["versions"]:
                schema_type = body.get("schemaType") or "AVRO"
                return {"id": store.register(subject, schema_type, body["schema"],
                                             body.get("references") or [])}
            if method == "POST" and len(parts) == 2:
                identity = _identity(body.get("schemaType") or "AVRO", body["schema"],
                                     body.get("references") or [])
                for v in store.subjects.get(subject, []):
                    if _identity(v.schema_type, v.schema, v.references) == identity:
                        return _described(v)
                raise RegistryError(404, 40403, "Schema not found")
            if method == "GET" and parts[2:] == ["versions"]:
                return [v.version for v in store.subjects.get(subject, [])]
            if method == "GET" and len(parts) == 4 and parts[2] == "versions":
                return _described(store.version(subject, parts[3]))
        raise RegistryError(404, 40400, f"no such endpoint: {method} /{'/'.join(parts)}")

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m odinws_tools.registry", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--bootstrap", required=True, help="Kafka brokers that keep the schemas")
    parser.add_argument("--topic", default="_odinws_schemas",
                        help="the compacted topic of the registrations")
    parser.add_argument("--basic-auth-file", default="",
                        help="a file holding user:password that every request must present "
                             "(HTTP basic authentication); default: none")
    args = parser.parse_args(argv)
    if args.basic_auth_file:
        with open(args.basic_auth_file, encoding="utf-8") as f:
            token = base64.b64encode(f.read().strip().encode()).decode()
        Handler.authorization = f"Basic {token}"
    if not re.fullmatch(r"[\w.\-]+", args.topic):
        parser.error("--topic: letters, digits, . _ - only")
    Handler.store = Store(args.bootstrap, args.topic)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"registry=http://127.0.0.1:{server.server_address[1]}", flush=True)
    print(f"schema registry: {len(Handler.store.by_id)} schemas read back from {args.topic}",
          file=sys.stderr, flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
