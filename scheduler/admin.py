"""Django admin for host aggregates and the placement decision records."""

from __future__ import annotations

import json
from contextvars import ContextVar
from typing import Any

from django.contrib import admin
from django.utils.html import format_html

from compute.admin import ReadOnlyMixin
from scheduler.admission import queue_statuses
from scheduler.models import Aggregate, PlacementDecision, QueueEntry, QueueState
from tenants.admin import TenantOwnedAdmin


@admin.register(Aggregate)
class AggregateAdmin(admin.ModelAdmin):
    list_display = ["name", "tenant", "cpu_ratio", "ram_ratio", "disk_ratio"]
    list_select_related = ["tenant"]
    search_fields = ["name"]
    filter_horizontal = ["hosts"]
    autocomplete_fields = ["tenant"]


@admin.register(PlacementDecision)
class PlacementDecisionAdmin(ReadOnlyMixin, TenantOwnedAdmin):
    list_display = ["instance", "tenant", "host", "outcome", "created"]
    search_fields = ["instance__name", "instance__uuid", "tenant__slug"]
    list_select_related = ["instance", "tenant", "host"]
    readonly_fields = ["explanation"]
    exclude = ["record"]

    @admin.display(description="outcome")
    def outcome(self, obj: PlacementDecision) -> str:
        return str(obj.record.get("error") or f"placed on {obj.record.get('host', '')}")

    @admin.display(description="explanation")
    def explanation(self, obj: PlacementDecision) -> Any:
        return format_html("<pre>{}</pre>", json.dumps(obj.record, indent=2))


_STATUSES: ContextVar[dict[int, dict[str, Any]]] = ContextVar("queue_statuses", default={})  # noqa: B039


@admin.register(QueueEntry)
class QueueEntryAdmin(ReadOnlyMixin, TenantOwnedAdmin):
    """The admission queue: who waits, since when, why, and where each stands now."""

    list_display = ["instance", "tenant", "priority", "state", "enqueued_at", "position", "reason"]
    list_filter = ["state", "priority"]
    search_fields = ["instance__name", "tenant__slug"]
    list_select_related = ["instance", "tenant"]

    def changelist_view(self, request: Any, extra_context: Any = None) -> Any:
        # Ranked once per page (the admin object is shared between requests: a context variable).
        _STATUSES.set(queue_statuses(list(QueueEntry.objects.unscoped().filter(state=QueueState.WAITING))))
        return super().changelist_view(request, extra_context)

    @admin.display(description="place now")
    def position(self, obj: QueueEntry) -> Any:
        status = _STATUSES.get().get(obj.instance_id)
        return status["position"] if status else "-"
