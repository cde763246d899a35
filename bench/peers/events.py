"""
What the Python peers publish and when: the benchmark's event JSON (the same
text as bench/peers/node_ws.js sends; bench/kafka_feed.py's records are its
"data" object), the pacing of "rate R B" (R events/s in batches of B) and
the stdin command lines that set it. bench/kafka_feed.py uses them too.
"""

import time

SEQ = 0


def event() -> str:
    """One event; t_us is the wall clock now, for the client's latency."""
    global SEQ
    us = time.time_ns() // 1000
    tok = 1000 + SEQ % 16
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

    def wait(self, now: float) -> float:
        """Seconds until the next batch is due (0: already due, its own loop turn)."""
        return max(0.0, self.t0 + self.sent * self.batch / self.rate - now)


def commands(buf: bytes, chunk: bytes) -> tuple[list[list[bytes]], bytes]:
    """The complete, non-empty command lines in C{buf + chunk}, as words, and the rest."""
    buf += chunk
    lines = buf.split(b"\n")
    return [words for words in (line.split() for line in lines[:-1]) if words], lines[-1]
