"""The audit trail in Django admin: staff read all of it; nobody edits it."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from security.models import AuditRecord


@admin.register(AuditRecord)
class AuditRecordAdmin(admin.ModelAdmin):
    list_display = [
        "seq",
        "at",
        "actor_name",
        "tenant_slug",
        "action",
        "target_repr",
        "source",
        "source_ip",
        "outcome",
    ]
    list_filter = ["outcome", "source", "action"]
    search_fields = ["actor_name", "tenant_slug", "action", "target_repr"]
    date_hierarchy = "at"
    ordering = ["-seq"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_active and request.user.is_staff
