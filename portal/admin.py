"""Admin for login lockouts: staff see the failed-login counters of django-axes and unlock them.

An account or address is locked while its failed attempts (within the cool-off) reach the limit;
deleting those attempt rows unlocks it. The "Unlock" action does that for the selected rows and
leaves an ``auth.unlock`` audit record; it needs the ``axes.delete_accessattempt`` permission
(superusers have it; grant it to the staff who may unlock).
"""

from __future__ import annotations

from axes.admin import AccessAttemptAdmin
from axes.models import AccessAttempt
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from security.audit import Actor, audit_log
from security.models import Source


@admin.register(AccessAttempt)
class LoginLockoutAdmin(AccessAttemptAdmin):
    actions = ["unlock"]

    @admin.action(description="Unlock: forget these failed logins", permissions=["delete"])
    def unlock(self, request: HttpRequest, queryset: QuerySet[AccessAttempt]) -> None:
        with transaction.atomic():
            rows = list(queryset.values_list("username", "ip_address", "failures_since_start"))
            queryset.delete()
            audit_log(
                actor=Actor.from_request(request, source=Source.ADMIN),
                action="auth.unlock",
                target_type="axes.accessattempt",
                target_repr=", ".join(sorted({str(u) for u, _, _ in rows}))[:200],
                detail={"unlocked": [{"username": u, "ip": ip, "failures": f} for u, ip, f in rows]},
            )
        usernames = sorted({str(u) for u, _, _ in rows if u})
        addresses = sorted({str(ip) for _, ip, _ in rows if ip})
        self.message_user(
            request,
            f"Unlocked: accounts {', '.join(usernames) or '-'}; addresses {', '.join(addresses) or '-'}.",
            messages.SUCCESS,
        )
