"""API rate limits in Redis: one budget per API token, per user, or per client address.

A request made with an API token spends the token's budget; a session request spends its user's;
an anonymous one spends its client address's. Budgets are counted over a moving window by the
``limits`` library (the engine under Flask-Limiter and slowapi): Redis keeps the times of the last
N requests of each budget, and a request is admitted only if fewer than N were admitted in the W
seconds before it. So no span of W seconds ever holds more than N requests, where a fixed window
lets 2N through across a window's end. One Lua script per request checks and records, atomically,
so concurrent requests on several processes never over-admit.

Every answer that spent a budget carries ``RateLimit-Limit``, ``RateLimit-Remaining``,
``RateLimit-Reset`` (seconds until the oldest request counted leaves the window) and
``RateLimit-Policy`` (``600;w=60``); a refusal is a 429 problem with ``Retry-After``.

When Redis cannot be reached the request is let through, without rate-limit headers: a rate limit
protects the service, and refusing every request would be the outage it protects against. The
failure is logged once, and Redis is not asked again for RETRY_AFTER_OUTAGE seconds, so an outage
does not add a connection timeout to every request.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import redis
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from limits import RateLimitItemPerSecond
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from portal.config import parse_rate

if TYPE_CHECKING:  # DRF's views module imports this one (DEFAULT_THROTTLE_CLASSES) as it loads
    from rest_framework.views import APIView

log = logging.getLogger(__name__)

# The REDIS_URL database is shared with Celery, Channels and the cache: keep to our own prefix.
KEY_PREFIX = "nubis:ratelimit"
_UNIT_WORDS = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}
# A Redis that does not answer must not hold a request up for long; after a failure, requests go
# through unlimited for this many seconds before Redis is tried again.
REDIS_TIMEOUT = 0.5
RETRY_AFTER_OUTAGE = 5.0
# Where the throttle leaves the budget's state for RateLimitHeadersMiddleware.
_STATE_ATTR = "nubis_rate_limit"


class RateLimited(exceptions.Throttled):
    """429 naming the budget that ran out; the problem type is ``rate_limit``."""

    default_code = "rate_limit"

    def __init__(self, wait: int, detail: str) -> None:
        # Throttled would append its own "Expected available in …" sentence; the detail says it.
        exceptions.APIException.__init__(self, detail, self.default_code)
        self.wait = wait


@dataclass(frozen=True)
class BudgetState:
    """What a request left of its budget: the RateLimit-* headers of its answer."""

    limit: int
    window: int
    remaining: int
    reset: int  # seconds until the oldest request counted leaves the window

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset),
            "RateLimit-Policy": f"{self.limit};w={self.window}",
        }


@lru_cache(maxsize=32)
def _item(text: str) -> RateLimitItemPerSecond:
    requests, window = parse_rate(text)
    return RateLimitItemPerSecond(requests, window)


@lru_cache(maxsize=4)
def _limiter(url: str) -> MovingWindowRateLimiter:
    """One limiter per Redis URL (read per request, so a test can point it elsewhere)."""
    storage = RedisStorage(
        url, key_prefix=KEY_PREFIX, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT
    )
    return MovingWindowRateLimiter(storage)


class _Outage:
    """Remembers a Redis failure for RETRY_AFTER_OUTAGE seconds, and logs it once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.until = 0.0

    def ongoing(self) -> bool:
        return time.monotonic() < self.until

    def begin(self, exc: Exception) -> None:
        with self._lock:
            if not self.ongoing():
                log.warning("rate limits not enforced for %.0f s: Redis failed: %s", RETRY_AFTER_OUTAGE, exc)
            self.until = time.monotonic() + RETRY_AFTER_OUTAGE

    def end(self) -> None:
        self.until = 0.0


outage = _Outage()


def describe(requests: int, window: int, scope: str) -> str:
    """Say a budget in words: ``600 requests per minute per token``."""
    period = _UNIT_WORDS.get(window, f"{window} seconds")
    noun = "request" if requests == 1 else "requests"
    return f"{requests} {noun} per {period} per {scope}"


def budget_of(request: Request) -> tuple[str, str, str]:
    """(scope, identity, rate) of the budget this request spends."""
    token = getattr(request, "auth", None)
    token_id = getattr(token, "pk", None)
    if token is not None and token_id is not None:
        return "token", str(token_id), settings.NUBIS_API_RATE_TOKEN
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return "user", str(user.pk), settings.NUBIS_API_RATE_USER
    # Hashed: the key names a budget, it need not spell out who called.
    # The peer address (daphne applies X-Forwarded-For only with NUBIS_TRUST_PROXY_HEADERS).
    ip = request.META.get("REMOTE_ADDR") or "unknown"
    return "address", hashlib.sha256(ip.encode()).hexdigest()[:32], settings.NUBIS_API_RATE_ANON


def spend(scope: str, identity: str, rate: str) -> tuple[bool, BudgetState]:
    """Count one request against a budget: (admitted, the budget's state after it)."""
    item = _item(rate)
    limiter = _limiter(settings.REDIS_URL)
    admitted = limiter.hit(item, scope, identity)
    reset_at, remaining = limiter.get_window_stats(item, scope, identity)
    reset = max(0, math.ceil(reset_at - time.time()))
    state = BudgetState(item.amount, item.get_expiry(), max(0, remaining), reset)
    return admitted, state


class ApiRateThrottle(BaseThrottle):
    """Refuse a request over its budget with 429, ``Retry-After`` and the rule ``rate_limit``."""

    def allow_request(self, request: Request, view: APIView) -> bool:
        if outage.ongoing():
            return True
        scope, identity, rate = budget_of(request)
        try:
            admitted, state = spend(scope, identity, rate)
        except redis.RedisError as exc:
            outage.begin(exc)
            return True
        outage.end()
        setattr(request._request, _STATE_ATTR, state)
        if admitted:
            return True
        wait = max(1, state.reset)
        # APIView turns .wait into Retry-After; the problem handler copies it and names the rule.
        raise RateLimited(wait, f"{describe(state.limit, state.window, scope)}; retry in {wait} s")

    def wait(self) -> Any:
        return None  # allow_request raises with its own wait; DRF never asks


class RateLimitHeadersMiddleware:
    """Put the RateLimit-* headers on every answer whose request spent a budget."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        state: BudgetState | None = getattr(request, _STATE_ATTR, None)
        if state is not None:
            for name, value in state.headers().items():
                response[name] = value
        return response
