"""Django admin for host aggregates and the placement decision records."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.utils.html import format_html

from compute.admin import ReadOnlyMixin
from scheduler.models import Aggregate, PlacementDecision
from tenants.admin import TenantOwnedAdmin


@admin.register(Aggregate)
class AggregateAdmin(admin.ModelAdmin):
    list_display = ["name", "tenant", "cpu_ratio", "ram_ratio", "disk_ratio"]
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
