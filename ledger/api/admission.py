"""Admission control of both APIs (issue 16 part 9): under overload a request is answered at once
with 429 or 503 and a `Retry-After`, never queued without bound.

- **In flight**: at most `max_in_flight` requests are handled at once; a request beyond waits for
  a place at most `queue_wait_seconds`, then is a 503 `overloaded` (the broker, the database or
  the CPU not keeping up shows here: the requests in flight take longer and the bound is met).
- **Per key**: each Bearer key (a publisher's, the admin's, an ISP's) has a token bucket of
  `key_rate` requests/s and `key_burst` at once; beyond it a 429 `rate_limited`, with the
  seconds until a token is back. The pages (no key) have only the global bound: their callers
  are browsers that share addresses.
- Any 503 of the handlers (the broker or the database unreachable) gets a `Retry-After` too.

`/metrics` is never shed (the operator must see the overload). Sheds are counted by reason
(`*_shed_total{reason}`) and the requests in flight are a gauge (`*_in_flight`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI reads the defaults below without loading aiohttp
    from aiohttp import web
    from aiohttp.typedefs import Handler
    from prometheus_client import Counter, Gauge

MAX_IN_FLIGHT_DEFAULT = 128
QUEUE_WAIT_SECONDS_DEFAULT = 0.5
# The ISPs' identity component: a sign-in costs a scrypt hash (~50 ms of a core, in asyncio's
# thread pool); beyond a few per core at once they only queue there (200 clients on 2 cores
# queued sign-ins 8 s at the median without a bound).
IDP_MAX_IN_FLIGHT_DEFAULT = 16
KEY_RATE_DEFAULT = 200.0  # requests/s per key
KEY_BURST_DEFAULT = 400
RETRY_AFTER_OVERLOADED = 1  # seconds: a 503's Retry-After
KEYS_KEPT = 10_000  # token buckets kept (the least recently used forgotten beyond)
OVERLOADED, RATE_LIMITED = "overloaded", "rate_limited"


@dataclass(frozen=True)
class Limits:
    max_in_flight: int = MAX_IN_FLIGHT_DEFAULT
    queue_wait_seconds: float = QUEUE_WAIT_SECONDS_DEFAULT
    key_rate: float = KEY_RATE_DEFAULT  # 0: no per-key limit
    key_burst: int = KEY_BURST_DEFAULT

    def __post_init__(self) -> None:
        if self.max_in_flight < 1 or self.queue_wait_seconds < 0:
            raise ValueError("max_in_flight must be at least 1 and queue_wait_seconds >= 0")
        if self.key_rate < 0 or (self.key_rate > 0 and self.key_burst < 1):
            raise ValueError("key_rate must be >= 0 and key_burst at least 1")


@dataclass(frozen=True)
class AdmissionMetrics:
    shed: Counter  # labels: reason
    in_flight: Gauge


@dataclass
class TokenBucket:
    """`rate` tokens a second up to `burst`; `take` answers 0 (admitted) or the seconds until a
    token is back."""

    rate: float
    burst: int
    tokens: float = field(init=False)
    at: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens, self.at = float(self.burst), time.monotonic()

    def take(self, now: float) -> float:
        self.tokens = min(float(self.burst), self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class Admission:
    def __init__(self, limits: Limits, metrics: AdmissionMetrics) -> None:
        self.limits, self.metrics = limits, metrics
        self.places = asyncio.Semaphore(limits.max_in_flight)
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        for reason in (OVERLOADED, RATE_LIMITED):  # a series from 0, for rate() and the alert
            metrics.shed.labels(reason)

    def key_wait(self, key: str, now: float) -> float:
        """0 when the key may go on, else the seconds until it may."""
        if self.limits.key_rate <= 0:
            return 0.0
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = TokenBucket(self.limits.key_rate, self.limits.key_burst)
            if len(self.buckets) > KEYS_KEPT:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(key)
        return bucket.take(now)

    async def enter(self) -> bool:
        """A place among those in flight, waited for at most queue_wait_seconds."""
        try:
            await asyncio.wait_for(self.places.acquire(), self.limits.queue_wait_seconds)
        except TimeoutError:
            return False
        return True


def shed_response(status: int, code: str, message: str, retry_after: int) -> web.Response:
    from aiohttp import web

    return web.json_response(
        {"error": {"code": code, "message": message, "retry_after_seconds": retry_after}},
        status=status, headers={"Retry-After": str(retry_after)},
    )  # fmt: skip


def retry_after(seconds: float) -> int:
    return max(1, math.ceil(seconds))


async def admitted(
    admission: Admission, request: web.Request, handle: Handler
) -> web.StreamResponse:
    """The request handled by `handle` if admitted; a 429 or 503 with Retry-After if not."""
    from ledger.api.validation import bearer_key

    if request.path == "/metrics":
        return await handle(request)
    key = bearer_key(request)
    if key is not None:
        wait = admission.key_wait(key, time.monotonic())
        if wait > 0:
            admission.metrics.shed.labels(RATE_LIMITED).inc()
            after = retry_after(wait)
            return shed_response(429, RATE_LIMITED, (
                f"more than {admission.limits.key_rate:g} requests/s with this key: send it again"
                f" in {after} s"), after)  # fmt: skip
    if not await admission.enter():
        admission.metrics.shed.labels(OVERLOADED).inc()
        return shed_response(503, OVERLOADED, (
            f"the API is handling {admission.limits.max_in_flight} requests already: nothing was"
            f" changed; send it again in {RETRY_AFTER_OVERLOADED} s"),
            RETRY_AFTER_OVERLOADED)  # fmt: skip
    admission.metrics.in_flight.inc()
    try:
        response = await handle(request)
    finally:
        admission.metrics.in_flight.dec()
        admission.places.release()
    if response.status == 503 and "Retry-After" not in response.headers:
        response.headers["Retry-After"] = str(RETRY_AFTER_OVERLOADED)
    return response
