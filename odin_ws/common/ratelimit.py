"""Token buckets: per-connection message rate and per-IP connection rate."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable


class TokenBucket:
    """
    C{rate} tokens per second, holding at most C{burst}. C{take()} spends one
    token and says whether there was one. C{now} is a clock function
    (C{reactor.seconds}), so tests drive it with a fake clock.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp", "now")

    def __init__(self, rate: float, burst: float, now: Callable[[], float]):
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.now = now
        self.stamp = now()

    def take(self, cost: float = 1.0) -> bool:
        t = self.now()
        tokens = min(self.burst, self.tokens + (t - self.stamp) * self.rate)
        self.stamp = t
        if tokens >= cost:
            self.tokens = tokens - cost
            return True
        self.tokens = tokens
        return False

    def spend(self, cost: float) -> bool:
        """
        Spend C{cost} tokens, running into debt past the bucket: allowed
        when the bucket holds C{cost} (or is full, for a cost above the
        burst), so a large cost goes through once and the next waits until
        the debt is paid back at C{rate}.
        """
        t = self.now()
        tokens = min(self.burst, self.tokens + (t - self.stamp) * self.rate)
        self.stamp = t
        if tokens >= min(cost, self.burst):
            self.tokens = tokens - cost
            return True
        self.tokens = tokens
        return False


class KeyedBuckets:
    """
    One L{TokenBucket} per key (client IP), for at most C{max_keys} keys:
    the least recently used key is forgotten first, so a scan from many
    addresses cannot grow memory without bound.
    """

    def __init__(self, rate: float, burst: float, now: Callable[[], float],
                 max_keys: int = 100000):
        self.rate = rate
        self.burst = burst
        self.now = now
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self.now)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take()

    def __len__(self) -> int:
        return len(self._buckets)
