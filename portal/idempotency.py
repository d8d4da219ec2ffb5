"""Idempotent POSTs for the API: a retry carrying the same ``Idempotency-Key`` gets the first answer.

The first request with a key claims it in Redis (``SET NX``) and runs; its answer is then stored
under the key for NUBIS_IDEMPOTENCY_TTL seconds with a fingerprint of the request (method, path,
SHA-256 of the body). A later request with the same key and fingerprint gets the stored answer,
marked ``Idempotent-Replayed: true``, and runs nothing; one with another fingerprint is refused
(422). A duplicate that arrives while the first still runs waits for it and replays its answer, or
gets 409 after NUBIS_IDEMPOTENCY_WAIT seconds.

Keys belong to a principal: the API token (by a hash, never the token itself) or the session
user. Anonymous requests are never replayed. Server errors (5xx) are not stored, and neither is
429 (rate limited: the request did not run, and a retry after Retry-After must be able to): the
key is released, so a retry runs again. Other client errors are stored: a retry gets the same
refusal.

Redis unavailable. A keyed POST to a route that has no other protection against running twice is
refused with 503 naming the header (and ``Retry-After``): running it could not be told apart from
a retry later. A route whose view de-duplicates by the key in the database says so with a class
attribute, ``idempotent_in_database = True`` (the instance create: compute.services.instances keeps
the key on its Operation, unique per tenant, and serialises same-key creates); it runs with Redis
down, unrecorded here, and the database answers its retries and concurrent twins.

Redis lost its data (FLUSHALL, or a restart without persistence). The stored answers and pending
claims are gone, so a retry (or a twin of a request still running) is neither replayed nor held
back here; it runs again:
- an instance create (``POST …/instances/``) returns the Operation the first request made, from
  the database, as it stands now, with ``Idempotent-Replayed: true``: no second instance;
- any other POST runs again, and its own rules answer: 409 for a name already in use (a network,
  a security or server group, a snapshot) or a member already added, 409 for an action the
  instance's state or its unfinished operation refuses; what no such rule stops runs again (a new
  API token, a new VNC ticket, a reboot once the first one finished).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import redis
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, resolve

from core.redis import redis_client
from portal.api_errors import problem
from portal.body_limits import streams_body

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
KEY_PREFIX = "nubis:idem:"
API_PREFIX = "/api/v1/"
REPLAYED_HEADER = "Idempotent-Replayed"
KEPT_HEADERS = ("Location", "Retry-After")
POLL_SECONDS = 0.05
_KEY_RULE = re.compile(r"[\x20-\x7e]{1,255}")

# Store the answer / release the claim only while the claim is still ours: if the pending marker
# expired and another request claimed the key, this request must not overwrite or free its claim.
_FINISH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    if ARGV[2] == '' then return redis.call('DEL', KEYS[1]) end
    return redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
return 0
"""


def problem_response(
    status: int, title: str, detail: str, rule: str, retry_after: int | None = None
) -> HttpResponse:
    """A problem+json answer naming the Idempotency-Key header (the middleware runs outside DRF)."""
    errors = [{"field": HEADER, "rule": rule, "message": detail}]
    body = problem(status, title, detail, rule, errors).data
    response = HttpResponse(json.dumps(body), status=status, content_type="application/problem+json")
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    return response


def principal_of(request: HttpRequest) -> str | None:
    """Whose key space the request uses: a token (hashed), a user, or None for anonymous.

    The credentials are read as the API's authentication classes read them, in their order: an
    ``Authorization: Bearer`` (or ``Token``) header first, then the session's user, which Django's
    AuthenticationMiddleware has already resolved. Nothing else authenticates an API request.
    """
    header = request.headers.get("Authorization", "").split()
    if len(header) == 2 and header[0].lower() in ("bearer", "token"):
        return "token:" + hashlib.sha256(header[1].encode()).hexdigest()
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    return None


def fingerprint_of(request: HttpRequest) -> str:
    """Method, path with query string and SHA-256 of the body, as one string."""
    digest = hashlib.sha256(request.body).hexdigest()
    return f"{request.method} {request.get_full_path()} {digest}"


def storable(response: HttpResponse) -> bool:
    """Whether a retry should get this answer again rather than run once more."""
    if response.streaming:
        return False
    return response.status_code < 500 and response.status_code != 429


def serialize(response: HttpResponse, fingerprint: str) -> str:
    return json.dumps(
        {
            "state": "done",
            "fingerprint": fingerprint,
            "status": response.status_code,
            "content_type": response.get("Content-Type", ""),
            "headers": {name: response[name] for name in KEPT_HEADERS if name in response},
            "body": base64.b64encode(response.content).decode("ascii"),
        }
    )


def replay(stored: dict[str, Any]) -> HttpResponse:
    response = HttpResponse(
        base64.b64decode(stored["body"]), status=stored["status"], content_type=stored["content_type"] or None
    )
    for name, value in stored["headers"].items():
        response[name] = value
    response[REPLAYED_HEADER] = "true"
    return response


def deduplicated_in_database(request: HttpRequest) -> bool:
    """Whether the view of the request's route de-duplicates by the key in the database itself."""
    try:
        match = resolve(request.path_info, getattr(request, "urlconf", None))
    except Resolver404:
        return False
    view = getattr(match.func, "view_class", None) or getattr(match.func, "cls", None)
    return bool(getattr(view, "idempotent_in_database", False))


class IdempotencyMiddleware:
    """Replay the stored answer to a retried API POST instead of running it again."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST" or not request.path.startswith(API_PREFIX) or streams_body(request):
            return self.get_response(request)  # a streamed body (an upload) is never read whole here
        key = request.headers.get(HEADER)
        if key is None:
            return self.get_response(request)
        if not _KEY_RULE.fullmatch(key):
            detail = f"{HEADER} must be 1 to 255 printable ASCII characters"
            return problem_response(400, "Invalid request", detail, "format")
        principal = principal_of(request)
        if principal is None:
            return self.get_response(request)
        redis_key = f"{KEY_PREFIX}{principal}:{key}"
        fingerprint = fingerprint_of(request)
        try:
            claimed = self.claim(redis_key, fingerprint)
        except redis.RedisError as exc:
            if deduplicated_in_database(request):
                log.warning(
                    "idempotency store unavailable (%s): %s runs, de-duplicated by its database",
                    exc,
                    request.path,
                )
                return self.get_response(request)
            log.error("idempotency store unavailable: %s", exc)
            detail = f"{HEADER} cannot be honoured now: the idempotency store is unavailable"
            return problem_response(503, "Service Unavailable", detail, "unavailable", 5)
        if isinstance(claimed, HttpResponse):
            return claimed
        return self.run(request, redis_key, claimed, fingerprint)

    def claim(self, redis_key: str, fingerprint: str) -> str | HttpResponse:
        """Claim the key (returns the claim), or replay / wait for / refuse what it already holds."""
        client = redis_client()
        wait = float(settings.NUBIS_IDEMPOTENCY_WAIT)
        deadline = time.monotonic() + wait
        claim = json.dumps({"state": "pending", "fingerprint": fingerprint, "owner": uuid.uuid4().hex})
        # The claim outlives the longest wait, so a duplicate never runs while the first still does;
        # it still expires, so a process killed mid-request does not lock the key for a day.
        claim_ttl = max(60, int(wait * 2))
        while True:
            if client.set(redis_key, claim, nx=True, ex=claim_ttl):
                return claim
            raw = cast("bytes | None", client.get(redis_key))
            if raw is None:
                continue  # released or expired between SET and GET: try to claim it again
            stored = json.loads(raw)
            if stored["fingerprint"] != fingerprint:
                detail = f"{HEADER} was already used for a different request (method, path or body)"
                return problem_response(422, "Unprocessable Content", detail, "reused")
            if stored["state"] == "done":
                return replay(stored)
            if time.monotonic() >= deadline:
                detail = f"a request with this {HEADER} is still in progress; retry later"
                return problem_response(409, "Conflict", detail, "in_progress", 1)
            time.sleep(POLL_SECONDS)

    def run(self, request: HttpRequest, redis_key: str, claim: str, fingerprint: str) -> HttpResponse:
        """Run the request under our claim; store its answer, or release the key for a retry."""
        finish = redis_client().register_script(_FINISH)
        try:
            response = self.get_response(request)
        except BaseException:
            finish(keys=[redis_key], args=[claim, "", 0])
            raise
        value = serialize(response, fingerprint) if storable(response) else ""
        try:
            finish(keys=[redis_key], args=[claim, value, settings.NUBIS_IDEMPOTENCY_TTL])
        except redis.RedisError as exc:
            # The request ran: its answer goes out even if it cannot be kept for a retry.
            log.error("idempotency answer not stored: %s", exc)
        return response
