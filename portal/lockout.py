"""Login lockout (django-axes): the page a locked-out login gets, and the audit of lockouts.

django-axes counts failed logins on every path that goes through ``django.contrib.auth``'s
``authenticate()`` (the portal's /login/ and the admin's /admin/login/), per account and per
client address (settings.AXES_LOCKOUT_PARAMETERS). Once either reaches the limit, every login
for it is refused, a correct password included, until the cool-off has passed or a staff member
unlocks it in the admin (portal.admin). API tokens and sessions never call ``authenticate()``:
they are not logins, and nothing here touches them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from axes.helpers import get_client_username, get_cool_off
from axes.models import AccessAttempt
from axes.signals import user_locked_out
from django.conf import settings
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from security.audit import Actor, audit_log
from security.models import Outcome

TEMPLATE = "registration/locked_out.html"


@dataclass(frozen=True)
class Lock:
    """One reason logins are refused: an account or a client address over the failure limit."""

    kind: str  # "account" or "address"
    value: str
    until: datetime | None  # None: no cool-off configured, only a staff unlock ends it

    @property
    def seconds_left(self) -> int | None:
        if self.until is None:
            return None
        return max(0, math.ceil((self.until - timezone.now()).total_seconds()))


def _lock_on(field: str, value: str, limit: int, cool_off: timedelta | None) -> datetime | bool | None:
    """When the lock on ``field == value`` ends (None: never by itself), or False if not locked.

    django-axes counts the failures of the attempt rows seen within the cool-off window. Rows
    leave the window oldest first, so the lock ends when the row that brings the count (newest
    first) to the limit leaves it.
    """
    rows = AccessAttempt.objects.filter(**{field: value})
    now = timezone.now()
    if cool_off is not None:
        rows = rows.filter(attempt_time__gte=now - cool_off)
    total = 0
    for attempt_time, failures in rows.order_by("-attempt_time").values_list(
        "attempt_time", "failures_since_start"
    ):
        total += failures
        if total >= limit:
            return None if cool_off is None else attempt_time + cool_off
    return False


def locks_for(username: str | None, ip_address: str | None) -> list[Lock]:
    """The locks that hold now for this account and this client address."""
    limit = int(settings.AXES_FAILURE_LIMIT)
    cool_off = get_cool_off()
    locks = []
    for kind, field, value in (("account", "username", username), ("address", "ip_address", ip_address)):
        if not value:
            continue
        until = _lock_on(field, value, limit, cool_off)
        if until is not False:
            locks.append(Lock(kind, value, until))  # type: ignore[arg-type]
    return locks


def lockout_response(request: HttpRequest, *_: Any) -> HttpResponse:
    """The page a refused login gets (AXES_LOCKOUT_CALLABLE): what is locked, until when, who can unlock.

    django-axes calls this with (request, response, credentials) from a synchronous middleware
    chain and with (request, credentials) from an asynchronous one: the credentials are read from
    the request, where both put them.
    """
    credentials = getattr(request, "axes_credentials", None)
    username = get_client_username(request, credentials)
    ip_address = getattr(request, "axes_ip_address", None)
    locks = locks_for(username, ip_address)
    ends = [lock.seconds_left for lock in locks if lock.seconds_left is not None]
    permanent = any(lock.until is None for lock in locks)
    retry_after = None if permanent or not ends else max(ends)
    context = {
        "locks": locks,
        "failure_limit": settings.AXES_FAILURE_LIMIT,
        "cool_off_minutes": math.ceil(get_cool_off().total_seconds() / 60) if get_cool_off() else None,
        "retry_after": retry_after,
        "retry_minutes": math.ceil(retry_after / 60) if retry_after is not None else None,
        "until": max((lock.until for lock in locks if lock.until), default=None),
        "admin_path": "/admin/login/" in request.path,
    }
    response = render(request, TEMPLATE, context, status=429)  # Too Many Requests
    if retry_after is not None:
        response["Retry-After"] = str(max(retry_after, 1))
    return response


@receiver(user_locked_out)
def _audit_lockout(
    sender: Any, request: HttpRequest, username: str | None, ip_address: str | None, **_: Any
) -> None:
    """Record the failed login that started a lockout (``auth.lockout``).

    django-axes also sends this signal for each attempt refused while the lock holds; those are
    already recorded as refused logins (``auth.login``, denied), and count no failure (its
    ``axes_failures_since_start`` stays None).
    """
    failures = getattr(request, "axes_failures_since_start", None)
    if failures is None:
        return
    name = (username or "")[:150]
    audit_log(
        actor=Actor.from_request(request),
        action="auth.lockout",
        outcome=Outcome.DENIED,
        target_type="auth.user",
        target_repr=name,
        detail={
            "username": name,
            "ip": ip_address,
            "failures": failures,
            "limit": settings.AXES_FAILURE_LIMIT,
            "locked": [lock.kind for lock in locks_for(username, ip_address)],
        },
    )
