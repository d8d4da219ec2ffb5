"""Audit what Django itself does: logins, logouts, and every change made in the admin."""

from __future__ import annotations

from typing import Any

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.contrib.contenttypes.models import ContentType
from django.db.models.signals import post_save
from django.dispatch import receiver
from django.http import HttpRequest

from security.audit import Actor, audit_log
from security.models import Outcome, Source

_ADMIN_VERBS = {ADDITION: "add", CHANGE: "change", DELETION: "delete"}


@receiver(user_logged_in)
def _logged_in(sender: Any, request: HttpRequest | None, user: Any, **_: Any) -> None:
    if request is not None:
        audit_log(actor=Actor.from_request(request), action="auth.login", target=user)


@receiver(user_logged_out)
def _logged_out(sender: Any, request: HttpRequest | None, user: Any, **_: Any) -> None:
    if request is not None and user is not None:
        actor = Actor.from_request(request)
        actor = Actor(user.get_username(), actor.source, user.pk, None, actor.ip)
        audit_log(actor=actor, action="auth.logout", target=user)


@receiver(user_login_failed)
def _login_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **_: Any
) -> None:
    if request is not None:
        username = str(credentials.get("username", ""))[:150]
        audit_log(
            actor=Actor.from_request(request),
            action="auth.login",
            outcome=Outcome.DENIED,
            target_type="auth.user",
            target_repr=username,
            detail={"username": username},
        )


@receiver(post_save, sender=LogEntry)
def _admin_change(sender: Any, instance: LogEntry, created: bool, **_: Any) -> None:
    """Mirror each admin LogEntry (written inside the admin's transaction) into the audit chain."""
    if not created:
        return
    from security.audit import current_request

    ctx = current_request.get()
    ip = ctx.ip if ctx is not None else None
    user: AbstractBaseUser = instance.user  # type: ignore[assignment]
    content_type: ContentType | None = instance.content_type  # type: ignore[assignment]
    target = None
    model = content_type.model_class() if content_type is not None else None
    if model is not None and instance.object_id is not None:
        target = model._base_manager.filter(pk=instance.object_id).first()
    label = content_type.model if content_type is not None else "object"
    audit_log(
        actor=Actor(user.get_username(), Source.ADMIN, user.pk, None, ip),
        action=f"admin.{label}.{_ADMIN_VERBS.get(instance.action_flag, 'act')}",
        target=target,
        target_type=f"{content_type.app_label}.{content_type.model}" if content_type is not None else "",
        target_id=str(instance.object_id or ""),
        target_repr=instance.object_repr,
        detail={"change": instance.get_change_message()},
    )
