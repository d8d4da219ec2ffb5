"""Django admin for tenants, memberships, quotas (with usage bars), the claim ledger and tokens."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Q, QuerySet, Sum
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from security.audit import Actor
from tenants.models import RESOURCES, ApiToken, Membership, Quota, QuotaClaim, Role, Tenant


class TenantOwnedAdmin(admin.ModelAdmin):
    """Staff see every tenant's rows: the admin is the deliberate global reader."""

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        qs = self.model.objects.unscoped()
        ordering = self.get_ordering(request)
        return qs.order_by(*ordering) if ordering else qs


def _is_last_owner(membership: Membership | None) -> bool:
    if membership is None or membership.pk is None or membership.role != Role.OWNER:
        return False
    owners = Membership.objects.filter(tenant_id=membership.tenant_id, role=Role.OWNER)
    return not owners.exclude(pk=membership.pk).exists()


class MembershipForm(forms.ModelForm):
    """Admins may not demote a tenant's last owner either."""

    class Meta:
        model = Membership
        fields = ["user", "tenant", "role"]

    def clean_role(self) -> str:
        role = self.cleaned_data["role"]
        if role != Role.OWNER and _is_last_owner(self.instance):
            raise forms.ValidationError(
                "This is the tenant's last owner; make someone else owner first.", "last_owner"
            )
        return str(role)


class MembershipInlineFormSet(forms.BaseInlineFormSet):
    """Editing a tenant's members inline must leave it with an owner."""

    def clean(self) -> None:
        super().clean()
        if self.instance.pk is None:
            return
        had_owner = Membership.objects.filter(tenant=self.instance, role=Role.OWNER).exists()
        kept = [
            f.cleaned_data
            for f in self.forms
            if f.cleaned_data
            and not f.cleaned_data.get("DELETE")
            and f.cleaned_data.get("role") == Role.OWNER
        ]
        if had_owner and not kept:
            raise forms.ValidationError("A tenant must keep at least one owner.", "last_owner")


class MembershipInline(admin.TabularInline):
    model = Membership
    form = MembershipForm
    formset = MembershipInlineFormSet
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "active", "created"]
    list_filter = ["active"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    form = MembershipForm
    list_display = ["user", "tenant", "role", "created"]
    list_filter = ["role"]
    search_fields = ["user__username", "tenant__name"]
    autocomplete_fields = ["user", "tenant"]

    def has_delete_permission(self, request: HttpRequest, obj: Membership | None = None) -> bool:
        return super().has_delete_permission(request, obj) and not _is_last_owner(obj)


def _usage_bar(used: int, limit: int) -> str:
    """A <meter> (no style attribute: the admin runs under the CSP): green, amber from 70%, red from 90%."""
    pct = 100 if limit == 0 and used else (0 if limit == 0 else min(100, round(used * 100 / limit)))
    return format_html(
        '<div title="{} of {}"><meter min="0" max="{}" value="{}" low="{}" high="{}" optimum="0">{}%</meter>'
        " <small>{} / {}</small></div>",
        used,
        limit,
        max(limit, used, 1),
        used,
        limit * 0.7,
        limit * 0.9,
        pct,
        used,
        limit,
    )


def _bar_column(resource: str) -> Any:
    def column(self: QuotaAdmin, quota: Quota) -> str:
        return _usage_bar(int(getattr(quota, f"used_{resource}", 0) or 0), quota.limit(resource))

    column.short_description = resource.replace("_", " ")  # type: ignore[attr-defined]
    column.__name__ = f"usage_{resource}"
    return column


@admin.register(Quota)
class QuotaAdmin(TenantOwnedAdmin):
    """Each row shows the current usage against every limit as a bar."""

    list_display = ["tenant", *[f"usage_{r}" for r in RESOURCES], "max_priority"]
    list_select_related = ["tenant"]
    search_fields = ["tenant__name", "tenant__slug"]
    readonly_fields = ["tenant", "current_usage", "updated"]
    fields = ["tenant", *[f"max_{r}" for r in RESOURCES], "max_priority", "current_usage", "updated"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        active = Q(tenant__quotaclaims__released_at__isnull=True)
        sums = {f"used_{r}": Sum(f"tenant__quotaclaims__{r}", filter=active) for r in RESOURCES}
        return super().get_queryset(request).annotate(**sums)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # every tenant gets its quota when it is created

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a quota lives and dies with its tenant

    @admin.display(description="current usage")
    def current_usage(self, quota: Quota) -> str:
        rows = format_html_join(
            "",
            "<tr><th>{}</th><td>{}</td></tr>",
            ((r, _usage_bar(int(getattr(quota, f"used_{r}", 0) or 0), quota.limit(r))) for r in RESOURCES),
        )
        return format_html("<table>{}</table>", rows)


for _resource in RESOURCES:
    setattr(QuotaAdmin, f"usage_{_resource}", _bar_column(_resource))


@admin.register(QuotaClaim)
class QuotaClaimAdmin(TenantOwnedAdmin):
    """The usage ledger; read-only, since claims change only through quota_claim and quota_release."""

    list_display = ["id", "tenant", "reason", *RESOURCES, "created", "released_at"]
    list_filter = [("released_at", admin.EmptyFieldListFilter)]
    search_fields = ["tenant__slug", "reason"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(TenantOwnedAdmin):
    """Tokens can be read and revoked here; they are created by their owners in the UI or API."""

    list_display = [
        "name",
        "prefix",
        "tenant",
        "role",
        "created_by",
        "created",
        "expires_at",
        "revoked_at",
        "last_used_at",
    ]
    list_filter = ["role", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix", "tenant__slug", "created_by__username"]
    readonly_fields = [
        "name",
        "prefix",
        "tenant",
        "role",
        "created_by",
        "created",
        "expires_at",
        "last_used_at",
        "revoked_at",
    ]
    exclude = ["key_hash"]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Revoke the selected tokens", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        from tenants.services.tokens import token_revoke

        actor = Actor.from_request(request)
        count = 0
        for token in queryset.filter(revoked_at__isnull=True):
            token_revoke(actor=actor, token=token)
            count += 1
        self.message_user(
            request, f"Revoked {count} token(s) at {timezone.now():%H:%M:%S}.", messages.SUCCESS
        )
