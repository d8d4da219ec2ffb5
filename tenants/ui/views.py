"""Tenant pages of the web UI: home, quota usage, settings (members and tokens), audit trail."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.dateparse import parse_datetime
from django.utils.timezone import make_aware
from django.views.decorators.http import require_GET, require_POST

from core.errors import ServiceError
from security.audit import Actor
from security.models import AuditRecord
from tenants.access import tenant_for_request
from tenants.models import ApiToken, Membership, Role, Tenant
from tenants.selectors import quota_report, visible_tokens
from tenants.services import members as member_services
from tenants.services import tokens as token_services


def _remember(request: HttpRequest, tenant: Tenant) -> None:
    request.session["tenant"] = tenant.slug


@login_required
@require_GET
def quota_page(request: HttpRequest, tenant: str) -> HttpResponse:
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    return render(request, "tenants/quota.html", {"tenant": obj, "role": role, "quota": quota_report(obj)})


def _settings(
    request: HttpRequest,
    tenant: Tenant,
    role: Role,
    *,
    error: ServiceError | None = None,
    new_token: tuple[ApiToken, str] | None = None,
    status: int = 200,
) -> HttpResponse:
    members = Membership.objects.filter(tenant=tenant).select_related("user").order_by("user__username")
    tokens = visible_tokens(tenant, request, role) if role.at_least(Role.MEMBER) else ApiToken.objects.none()
    context: dict[str, Any] = {
        "tenant": tenant,
        "role": role,
        "members": members,
        "tokens": tokens,
        "roles": Role.choices,
        "is_owner": role.at_least(Role.OWNER),
        "is_member": role.at_least(Role.MEMBER),
        "error": error,
        "new_token": new_token,
    }
    return render(request, "tenants/settings.html", context, status=status)


@login_required
@require_GET
def settings_page(request: HttpRequest, tenant: str) -> HttpResponse:
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    return _settings(request, obj, role)


def _act(request: HttpRequest, tenant: Tenant, role: Role, action: Any, success: str) -> HttpResponse:
    """Run a service call; redirect with a message on success, re-render with the error otherwise."""
    try:
        action()
    except ServiceError as exc:
        return _settings(request, tenant, role, error=exc, status=exc.status)
    messages.success(request, success)
    return redirect("tenant-settings", tenant=tenant.slug)


@login_required
@require_POST
def member_add(request: HttpRequest, tenant: str) -> HttpResponse:
    obj, role = tenant_for_request(request, tenant, Role.OWNER)
    username = request.POST.get("username", "").strip()
    new_role = request.POST.get("role", Role.MEMBER)
    return _act(
        request,
        obj,
        role,
        lambda: member_services.membership_add(
            actor=Actor.from_request(request), tenant=obj, username=username, role=new_role
        ),
        f"Added {username} as {new_role}.",
    )


def _membership(request: HttpRequest, tenant: str, pk: int) -> tuple[Tenant, Role, Membership]:
    obj, role = tenant_for_request(request, tenant, Role.OWNER)
    return (
        obj,
        role,
        get_object_or_404(Membership.objects.select_related("user", "tenant"), tenant=obj, pk=pk),
    )


@login_required
@require_POST
def member_role(request: HttpRequest, tenant: str, pk: int) -> HttpResponse:
    obj, role, membership = _membership(request, tenant, pk)
    new_role = request.POST.get("role", "")
    return _act(
        request,
        obj,
        role,
        lambda: member_services.membership_set_role(
            actor=Actor.from_request(request), membership=membership, role=new_role
        ),
        f"{membership.user} is now {new_role}.",
    )


@login_required
@require_POST
def member_remove(request: HttpRequest, tenant: str, pk: int) -> HttpResponse:
    obj, role, membership = _membership(request, tenant, pk)
    return _act(
        request,
        obj,
        role,
        lambda: member_services.membership_remove(actor=Actor.from_request(request), membership=membership),
        f"Removed {membership.user}.",
    )


def _parse_expiry(raw: str) -> datetime | None:
    if not raw:
        return None
    value = parse_datetime(raw)
    if value is None:
        raise ServiceError("expires_at", "datetime", f"{raw!r} is not a date and time (YYYY-MM-DDTHH:MM)")
    return value if value.tzinfo else make_aware(value)


@login_required
@require_POST
def token_create(request: HttpRequest, tenant: str) -> HttpResponse:
    obj, role = tenant_for_request(request, tenant, Role.MEMBER)
    try:
        created = token_services.token_create(
            actor=Actor.from_request(request),
            tenant=obj,
            creator_id=int(request.user.pk or 0),
            creator_role=role,
            name=request.POST.get("name", ""),
            role=request.POST.get("role", Role.VIEWER),
            expires_at=_parse_expiry(request.POST.get("expires_at", "").strip()),
        )
    except ServiceError as exc:
        return _settings(request, obj, role, error=exc, status=exc.status)
    # The secret is rendered into this one response and kept nowhere else.
    return _settings(request, obj, role, new_token=created, status=201)


@login_required
@require_POST
def token_revoke(request: HttpRequest, tenant: str, pk: int) -> HttpResponse:
    obj, role = tenant_for_request(request, tenant, Role.MEMBER)
    token = get_object_or_404(visible_tokens(obj, request, role), pk=pk)
    return _act(
        request,
        obj,
        role,
        lambda: token_services.token_revoke(actor=Actor.from_request(request), token=token),
        f"Revoked token {token.name}.",
    )


@login_required
@require_GET
def audit_page(request: HttpRequest, tenant: str) -> HttpResponse:
    obj, role = tenant_for_request(request, tenant, Role.OWNER)
    page = Paginator(AuditRecord.objects.for_tenant(obj.pk).order_by("-seq"), 50).get_page(
        request.GET.get("page")
    )
    return render(request, "tenants/audit.html", {"tenant": obj, "role": role, "page": page})
