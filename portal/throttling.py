"""API rate limits in Redis: one budget per API token, per user, or per client address.

A request made with an API token spends the token's budget; a session request spends its user's;
an anonymous one spends its client address's. The count is a fixed window: one Redis counter per
budget and window, incremented and given its expiry in one MULTI/EXEC, so concurrent requests on
several processes never over-admit. (A fixed window admits at most twice the rate across a window
boundary; that is the price of one round trip per request.)

When Redis cannot be reached the request is let through: a rate limit protects the service, and
refusing every request would be the outage it protects against.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import redis
from django.conf import settings
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from portal.config import parse_rate
from portal.redis import redis_client

if TYPE_CHECKING:  # DRF's views module imports this one (DEFAULT_THROTTLE_CLASSES) as it loads
    from rest_framework.views import APIView

log = logging.getLogger(__name__)

# The REDIS_URL database is shared with Celery, Channels and the cache: keep to our own prefix.
KEY_PREFIX = "nubis:ratelimit:"
_UNIT_WORDS = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}


class RateLimited(exceptions.Throttled):
    """429 naming the budget that ran out; the problem type is ``rate_limit``."""

    default_code = "rate_limit"

    def __init__(self, wait: int, detail: str) -> None:
        # Throttled would append its own "Expected available in …" sentence; the detail says it.
        exceptions.APIException.__init__(self, detail, self.default_code)
        self.wait = wait


@lru_cache(maxsize=32)
def _rate(text: str) -> tuple[int, int]:
    return parse_rate(text)


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
    # The peer address (daphne applies X-Forwarded-For when run with --proxy-headers).
    ip = request.META.get("REMOTE_ADDR") or "unknown"
    return "address", hashlib.sha256(ip.encode()).hexdigest()[:32], settings.NUBIS_API_RATE_ANON


def spend(scope: str, identity: str, requests: int, window: int) -> tuple[bool, float]:
    """Count one request against a budget; (allowed, seconds until the window ends)."""
    now = time.time()
    index = int(now // window)
    key = f"{KEY_PREFIX}{scope}:{identity}:{window}:{index}"
    pipe = redis_client().pipeline(transaction=True)
    pipe.incr(key)
    pipe.expire(key, window + 1)
    count, _ = pipe.execute()
    return int(count) <= requests, (index + 1) * window - now


class ApiRateThrottle(BaseThrottle):
    """Refuse a request over its budget with 429, ``Retry-After`` and the rule ``rate_limit``."""

    def allow_request(self, request: Request, view: APIView) -> bool:
        scope, identity, rate = budget_of(request)
        requests, window = _rate(rate)
        try:
            allowed, remaining = spend(scope, identity, requests, window)
        except redis.RedisError as exc:
            log.warning("rate limit not enforced, Redis failed: %s", exc)
            return True
        if allowed:
            return True
        wait = max(1, math.ceil(remaining))
        # APIView turns .wait into Retry-After; the problem handler copies it and names the rule.
        raise RateLimited(wait, f"{describe(requests, window, scope)}; retry in {wait} s")

    def wait(self) -> Any:
        return None  # allow_request raises with its own wait; DRF never asks
