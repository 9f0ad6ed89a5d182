"""The bandwidth limit (`[sync] bandwidth_limit`, bytes/second): one token bucket per process,
shared by every transfer to and from upstreams, so four blobs fetched at once stay under the
limit together rather than each getting all of it.

A transfer takes tokens for each chunk as it passes: a download after the chunk arrived (the
stream is read no faster than the bucket refills, so TCP slows the sender), an upload before the
chunk is sent. The bucket may go into debt: a taker sleeps until its debt is repaid, and a taker
arriving meanwhile sleeps for the deeper debt it leaves, so the bytes passed by time t never
exceed `burst + rate * t` however many transfers share the bucket, and none starves.

Unlimited (no limit configured) is no bucket at all: `limiter_for(None)` is None and transfers
skip the call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

# The burst a full bucket lets through at once, in seconds of traffic: enough that a steady
# transfer is not woken for every chunk, short enough that the limit holds over any second.
BURST_SECONDS = 0.25


class TokenBucket:
    """`rate` bytes per second with a burst of `burst` bytes (default a quarter second's worth).
    `clock` (seconds, monotonic) and `sleep` are injected by tests."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("the rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else self.rate * BURST_SECONDS
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._last = clock()

    async def take(self, amount: int) -> None:
        """Account for `amount` bytes; returns once the rate allows them. No await happens
        between reading and updating the balance, so concurrent takers on one event loop
        cannot both spend the same tokens."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= amount
        if self._tokens < 0:
            await self._sleep(-self._tokens / self.rate)


# One bucket per configured rate in this process: every client made for the same limit (a sync
# run's pull and push clients, the service's on-demand fetches) shares it.
_BUCKETS: dict[int, TokenBucket] = {}


def limiter_for(rate: int | None) -> TokenBucket | None:
    """The process's bucket for `rate` bytes/second; None (nothing to do) when unlimited."""
    if rate is None:
        return None
    bucket = _BUCKETS.get(rate)
    if bucket is None:
        bucket = _BUCKETS[rate] = TokenBucket(rate)
    return bucket
