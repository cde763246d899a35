"""
A doubling backoff (L{Backoff}): the waits of the supervisor's restarts of
a shard (L{odin_ws.parent.shardhandle}) and of a shard's replacements of a
fatally failed Kafka consumer (L{odin_ws.shard.kafka.consumerthread}).
When a run counts as healthy enough to start over is each owner's rule.
"""

from __future__ import annotations


class Backoff:
    """
    A delay that starts at C{minimum} and doubles with each L{next}, up to
    C{maximum}, until L{reset}.
    """

    def __init__(self, minimum: float, maximum: float):
        self.minimum = minimum
        self.maximum = maximum
        self._current = minimum

    def next(self) -> float:
        """The delay to wait now; the one after it is twice as long (up to the maximum)."""
        delay = min(self._current, self.maximum)
        self._current = min(delay * 2, self.maximum)
        return delay

    def reset(self) -> None:
        """Start over at the minimum (a healthy run)."""
        self._current = self.minimum

    def bounds(self, minimum: float, maximum: float) -> None:
        """New bounds (a reload): the next delay stays where it is, within the new maximum."""
        self.minimum = minimum
        self.maximum = maximum
