"""REST access to the exchanges (book snapshots, trade backfill) under a request-weight budget.

Every request to one exchange market passes through its `WeightBudget`: a sliding one-minute window that
keeps the weight we spend under a fraction of the venue's limit. A mass reconnect therefore queues its
snapshot requests instead of triggering a snapshot storm (and a ban). A 429/418 answer pauses the whole
budget for the time the venue asks.
"""

from __future__ import annotations

import collections
import logging

import attrs
import httpx
import trio

log = logging.getLogger("marketflow.rest")

REQUEST_TIMEOUT_S = 10.0


class RestError(Exception):
    """A REST call failed; the message names the URL and the cause."""


@attrs.frozen
class BudgetStatistics:
    limit_per_minute: int
    used_last_minute: int
    waits: int
    throttled: int


class WeightBudget:
    """Spend at most `limit_per_minute` weight in any 60 s window; callers wait for room, in order."""

    def __init__(self, limit_per_minute: int, window_s: float = 60.0) -> None:
        self.limit = limit_per_minute
        self.window_s = window_s
        self._spent: collections.deque[tuple[float, int]] = collections.deque()
        self._used = 0
        self._lock = trio.StrictFIFOLock()
        self._paused_until = 0.0
        self.waits = 0
        self.throttled = 0

    def _expire(self, now: float) -> None:
        while self._spent and self._spent[0][0] <= now - self.window_s:
            self._used -= self._spent.popleft()[1]

    def used(self) -> int:
        self._expire(trio.current_time())
        return self._used

    async def acquire(self, weight: int) -> None:
        """Wait until `weight` fits in the window, then record it as spent."""
        weight = min(weight, self.limit)
        async with self._lock:
            while True:
                now = trio.current_time()
                if now < self._paused_until:
                    self.waits += 1
                    await trio.sleep_until(self._paused_until)
                    continue
                self._expire(now)
                if self._used + weight <= self.limit:
                    break
                self.waits += 1
                await trio.sleep_until(self._spent[0][0] + self.window_s)
            self._spent.append((trio.current_time(), weight))
            self._used += weight

    def pause(self, seconds: float) -> None:
        """The venue said slow down (429/418 with Retry-After): nobody sends for `seconds`."""
        self.throttled += 1
        self._paused_until = max(self._paused_until, trio.current_time() + seconds)

    def statistics(self) -> BudgetStatistics:
        return BudgetStatistics(self.limit, self.used(), self.waits, self.throttled)


class RestClient:
    """GET requests to one exchange market's REST base URL, budgeted."""

    def __init__(self, base_url: str, budget: WeightBudget, client: httpx.AsyncClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.budget = budget
        self._client = client or httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S)
        self.requests = 0
        self.errors = 0

    async def get(self, path: str, params: dict[str, str | int], weight: int = 1) -> bytes:
        """The response body of a 200; anything else raises `RestError` naming the URL and status."""
        await self.budget.acquire(weight)
        url = self.base_url + path
        self.requests += 1
        try:
            response = await self._client.get(url, params=params)
        except httpx.HTTPError as exc:
            self.errors += 1
            raise RestError(f"GET {url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code in (418, 429):
            self.errors += 1
            retry = float(response.headers.get("Retry-After", "60") or 60)
            self.budget.pause(retry)
            log.warning("exchange asked us to slow down", extra={"url": url, "retry_after_s": retry})
            raise RestError(f"GET {url}: HTTP {response.status_code} (rate limited, retry after {retry:g} s)")
        if response.status_code != 200:
            self.errors += 1
            raise RestError(f"GET {url}: HTTP {response.status_code}: {response.text[:200]}")
        return response.content

    async def aclose(self) -> None:
        await self._client.aclose()
