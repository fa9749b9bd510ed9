"""The web process's per-tenant limits on webhooks, kept in memory (no SQL per request).

- `RateLimiter`: quotas.webhook_requests_per_minute, as a token bucket (GCRA): up to N requests at
  once, then one more every 60/N s. Unlike a fixed per-minute window it never lets 2N through
  around a window's edge, its Retry-After is exact (when the next request will be taken), and it
  keeps one number per tenant.
- `SyncSlots`: quotas.concurrent_executions for synchronous webhooks, which run in this process:
  at most N at once per tenant; the others wait in arrival order, up to a deadline.

Both count per process: there is one web process (see ARCHITECTURE.md); more behind a load
balancer would each allow the quota.
"""

from __future__ import annotations

import asyncio
import collections

WINDOW_S = 60.0


class RateLimiter:
    def __init__(self) -> None:
        self._next: dict[str, float] = {}  # tenant -> the theoretical arrival time of its next request

    def check(self, key: str, per_minute: int, now: float) -> float:
        """0.0 if a request may go now (and it is counted), else the seconds until one may."""
        interval = WINDOW_S / per_minute
        tat = max(self._next.get(key, now), now) + interval
        if tat - now > WINDOW_S:
            return tat - WINDOW_S - now
        self._next[key] = tat
        return 0.0


class SyncSlots:
    """At most `limit` holders per tenant; the others wait first come, first served (one event loop)."""

    def __init__(self) -> None:
        self._held: dict[str, int] = {}
        self._waiting: dict[str, collections.deque[asyncio.Future]] = {}

    async def acquire(self, key: str, limit: int, deadline: float) -> bool:
        """Take a slot; wait for one until `deadline` (loop time). False if none came in time."""
        held = self._held.get(key, 0)
        line = self._waiting.get(key)
        if held < limit and not line:
            self._held[key] = held + 1
            return True
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiting.setdefault(key, collections.deque()).append(waiter)
        timer = loop.call_at(deadline, lambda: waiter.done() or waiter.set_result(False))
        try:
            granted = await waiter
        except asyncio.CancelledError:  # the request went away; a slot handed to it meanwhile is passed on
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self.release(key, limit)
            raise
        finally:
            timer.cancel()
        if not granted:
            line = self._waiting.get(key)
            if line is not None and waiter in line:
                line.remove(waiter)
                if not line:
                    del self._waiting[key]
        return granted

    def release(self, key: str, limit: int) -> None:
        """Give the slot back, handing slots to those waiting first while the (current) limit allows."""
        held = self._held.get(key, 1) - 1
        line = self._waiting.get(key)
        while line and (not limit or held < limit):
            waiter = line.popleft()
            if not waiter.done():  # else it timed out or went away
                waiter.set_result(True)
                held += 1
        if line is not None and not line:
            del self._waiting[key]
        if held > 0:
            self._held[key] = held
        else:
            self._held.pop(key, None)
