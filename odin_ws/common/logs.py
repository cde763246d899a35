"""
Logging: human-readable text by default, or one JSON object per line
(C{log.format: json}, for journald and Loki); an audit stream (namespace
C{odinws.audit}: rejected connections, rate-limit closes, shard restarts,
reloads) that can also go to a file of its own; a level filter; a flood
guard so a burst of identical lines cannot fill a disk; and a redactor so
that no client's token reaches a log at any level.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsText,
    jsonFileLogObserver,
    textFileLogObserver,
)
from zope.interface import implementer

if TYPE_CHECKING:
    from odin_ws.common.settings import LogSettings

AUDIT_NAMESPACE = "odinws.audit"
audit = Logger(namespace=AUDIT_NAMESPACE)

_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
           "error": LogLevel.error}


@implementer(ILogObserver)
class FloodGuard:
    """
    Passes at most C{per_second} events with the same format string per
    second; when a window ends that dropped some, one line says how many.
    """

    def __init__(self, observer: ILogObserver, per_second: int, now: Callable[[], float]):
        self.observer = observer
        self.per_second = per_second
        self.now = now
        self._window = 0
        self._counts: dict[str, int] = {}

    def __call__(self, event: LogEvent) -> None:
        window = int(self.now())
        if window != self._window:
            self._flush_window()
            self._window = window
        key = event.get("log_format") or ""
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        if count <= self.per_second:
            self.observer(event)

    def _flush_window(self) -> None:
        for key, count in self._counts.items():
            if count > self.per_second:
                self.observer({
                    "log_level": LogLevel.warn, "log_namespace": "odinws.logs",
                    "log_format": "suppressed {n} more log lines like: {what}",
                    "n": count - self.per_second, "what": key[:200],
                    "log_time": self.now(), "log_source": None})
        self._counts = {}


REDACTED = "<redacted>"

# Where a client's token shows up in what gets logged: Autobahn at debug
# logs the request head as bytes and its headers, parameters and offered
# subprotocols as dicts and lists, and puts what it could not accept in a
# reason it logs at info. A token then follows "bearer." or "Bearer ",
# an Authorization header or key, or a "token" parameter or key; and a JWT
# is recognisable anywhere: its header is base64url JSON, '{"' -> "eyJ".
# A value ends at whitespace, a quote, a separator or a backslash (the
# CRLF of a head printed as bytes).
_REDACTIONS = (
    (re.compile(r"(?i)(bearer[.\s]\s*)(?!<redacted>)[^\s'\",;&\\\]]+"), r"\1" + REDACTED),
    (re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(?!<redacted>)[^'\"\s\\][^'\"\r\n\\]*"),
     r"\1" + REDACTED),
    (re.compile(r"(?i)((?<![\w.])token['\"]?\s*[:=]\s*\[?\s*['\"]?)(?!<redacted>)"
                r"[^\s'\",;&\\\[\]]+"), r"\1" + REDACTED),
    (re.compile(r"eyJ[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]{2,}(?:\.[A-Za-z0-9_\-]*)?"), REDACTED),
)


def redact(text: str) -> str:
    """C{text} with anything that looks like a client's token replaced."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


# Event keys Twisted's observers add or read besides the fields a message
# formats; their values are not a client's.
_META = frozenset(("log_format", "log_level", "log_namespace", "log_time", "log_system",
                   "log_source", "log_logger", "log_id", "log_trace", "log_io",
                   "log_failure", "log_flattened"))


@implementer(ILogObserver)
class Redactor:
    """
    Passes each event on unchanged unless its text (message and traceback)
    or any of its fields (the JSON format writes them all) holds what
    looks like a token; then it passes on a new event: the text and each
    field as a string, redacted. Robust where turning a library's debug
    logging off is not: it covers every message, level and library.
    """

    def __init__(self, observer: ILogObserver):
        self.observer = observer

    def __call__(self, event: LogEvent) -> None:
        text = eventAsText(event, includeTimestamp=False, includeSystem=False)
        fields = {k: v if isinstance(v, str) else repr(v)
                  for k, v in event.items() if k not in _META}
        if redact(text) == text and all(redact(v) == v for v in fields.values()):
            self.observer(event)
            return
        clean: LogEvent = {k: redact(v) for k, v in fields.items()}
        clean.update({
            "log_level": event.get("log_level", LogLevel.info),
            "log_namespace": event.get("log_namespace", "odinws.logs"),
            "log_time": event.get("log_time", time.time()),
            "log_source": None,
            "log_format": "{log_redacted}",
            "log_redacted": redact(text)})
        if "log_system" in event:
            clean["log_system"] = event["log_system"]
        self.observer(clean)


def make_observer(fmt: str, level: str, out: IO[str] | None = None,
                  audit_out: IO[str] | None = None, per_second: int = 50,
                  now: Callable[[], float] | None = None,
                  timestamps: bool = True) -> ILogObserver:
    """
    The process's log observer for C{log.format}/C{log.level}. Without
    C{timestamps}, text lines start with C{[system]}: a shard's lines are
    logged again by the parent, with the parent's timestamp.
    """
    out = sys.stdout if out is None else out
    if fmt == "json":
        base = jsonFileLogObserver(out, recordSeparator="")
    elif timestamps:
        base = textFileLogObserver(out)
    else:
        base = FileLogObserver(out, _untimed)
    filtered = FilteringLogObserver(
        FloodGuard(Redactor(base), per_second, now or time.time),
        [LogLevelFilterPredicate(defaultLogLevel=_LEVELS[level])])
    if audit_out is None:
        return filtered
    return _AuditRouter(Redactor(jsonFileLogObserver(audit_out, recordSeparator="")), filtered)


def _untimed(event: LogEvent) -> str:
    """Twisted's classic text line without its timestamp."""
    text = eventAsText(event, includeTimestamp=False, includeSystem=True)
    return text.replace("\n", "\n\t") + "\n"


@implementer(ILogObserver)
class _AuditRouter:
    """Audit events to the audit file as well; every event to the process log."""

    def __init__(self, audit_file: ILogObserver, rest: ILogObserver):
        self.audit_file = audit_file
        self.rest = rest

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") == AUDIT_NAMESPACE:
            self.audit_file(event)
        self.rest(event)



def install_logging(log: LogSettings, parent: object, timestamps: bool = True) -> None:
    """
    Give twistd's Application our log observer (format, level, audit file,
    flood guard): twistd asks the application for an ILogObserver component
    before it starts logging. Used by both processes' top services when
    they are attached to the Application; a no-op for other parents (tests).
    """
    from odin_ws.common.launch import fail

    if not hasattr(parent, "setComponent"):
        return
    audit_out = None
    if log.audit_file:
        try:
            audit_out = open(log.audit_file, "a", encoding="utf-8")
        except OSError as e:
            fail(f"configuration error: log.audit_file: {e.strerror}")
    parent.setComponent(ILogObserver, make_observer(
        log.format, log.level, audit_out=audit_out, per_second=log.max_lines_per_second,
        timestamps=timestamps))


def silenced(name: str) -> logging.Logger:
    """
    A stdlib logger that swallows what it gets: handed to librdkafka clients
    (C{"logger"}) whose own lines (connection refused while a broker starts,
    ...) would otherwise go to stderr, where the caller reports the outcome
    itself.
    """
    logger = logging.getLogger(name)
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger
