"""
What the Python peers publish and when: the benchmark's event JSON (the same
text as bench/peers/node_ws.js sends; bench/kafka_feed.py's records are its
"data" object), the pacing of "rate R B [N]" (R events/s in batches of B,
on tokens 1000 + seq % N, N = 16 by default) and the stdin command lines
that set it, and the per-connection token filter of the random-tokens cells
(each client subscribes to a few tokens; the server sends it only theirs).
bench/kafka_feed.py uses them too.
"""

import json
import time

SEQ = 0
TOKENS = 16


def next_token() -> int:
    """The token of the next event: 1000 + seq % N."""
    return 1000 + SEQ % TOKENS


def event() -> str:
    """One event; t_us is the wall clock now, for the client's latency."""
    global SEQ
    us = time.time_ns() // 1000
    tok = 1000 + SEQ % TOKENS
    body = (f'{{"type":"event","channel":"odin.token.{tok}.trade","data":{{"t_us":{us},'
            f'"seq":{SEQ},"token":"{tok}","price":0.00001234,"amount":1234.5678,"side":"buy",'
            f'"user":"bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh"}},"ts":{us // 1000}}}')
    SEQ += 1
    return body


class Ticks:
    """R events/s in batches of B from C{t0}: which batch is due, and when the next one."""

    def __init__(self, rate: float, batch: int, t0: float):
        self.rate, self.batch, self.t0, self.sent = rate, batch, t0, 0
        self.skipped = 0  # events of batches dropped as backlog

    def take(self, now: float) -> bool:
        """Whether a batch is due at C{now} (if so it counts as sent)."""
        due = int((now - self.t0) * self.rate / self.batch) + 1  # first at t0
        if due - self.sent > self.rate / self.batch:  # more than 1 s behind: drop the backlog
            self.skipped += (due - 1 - self.sent) * self.batch
            self.sent = due - 1
        if self.sent < due:
            self.sent += 1
            return True
        return False

    def due_at(self) -> float:
        """When the batch last taken was due (monotonic)."""
        return self.t0 + (self.sent - 1) * self.batch / self.rate

    def wait(self, now: float) -> float:
        """Seconds until the next batch is due (0: already due, its own loop turn)."""
        return max(0.0, self.t0 + self.sent * self.batch / self.rate - now)


def rate_command(parts: list) -> tuple[float, int]:
    """The rate and batch of a "rate R B [N]" command; sets the token count N."""
    global TOKENS
    if len(parts) > 3:
        TOKENS = max(1, int(parts[3]))
    return float(parts[1]), max(1, int(parts[2]))


def subscribed_tokens(message: bytes | str) -> list[int] | None:
    """
    The tokens of a client's {"type":"subscribe","channels":["odin.token.<t>.*",...]}
    message (the random-tokens cells send one), None for anything else.
    """
    try:
        msg = json.loads(message)
        if msg.get("type") != "subscribe":
            return None
        return [int(c.split(".")[2]) for c in msg["channels"]]
    except (ValueError, KeyError, IndexError, AttributeError, TypeError):
        return None


def commands(buf: bytes, chunk: bytes) -> tuple[list[list[bytes]], bytes]:
    """The complete, non-empty command lines in C{buf + chunk}, as words, and the rest."""
    buf += chunk
    lines = buf.split(b"\n")
    return [words for words in (line.split() for line in lines[:-1]) if words], lines[-1]
