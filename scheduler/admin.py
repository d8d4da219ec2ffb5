"""Django admin for host aggregates, the placement decision records, the queue and DRS."""

from __future__ import annotations

import json
from contextvars import ContextVar
from typing import Any

from django.contrib import admin, messages
from django.utils.html import format_html

from compute.admin import ReadOnlyMixin
from compute.services.drs import drs_apply, drs_apply_all
from compute.services.drs_placement import drs_place
from core.errors import ServiceError
from scheduler.admission import queue_statuses
from scheduler.models import (
    Aggregate,
    DrsPass,
    DrsPlacement,
    DrsRecommendation,
    DrsSettings,
    PlacementDecision,
    PlacementState,
    QueueEntry,
    QueueState,
    RecommendationState,
)
from security.audit import Actor, audit_log
from security.models import Source
from tenants.admin import TenantOwnedAdmin


@admin.register(Aggregate)
class AggregateAdmin(admin.ModelAdmin):
    list_display = ["name", "tenant", "cpu_ratio", "ram_ratio", "disk_ratio", "drs_automation"]
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


# -- DRS -------------------------------------------------------------------------------------------
@admin.register(DrsSettings)
class DrsSettingsAdmin(admin.ModelAdmin):
    """The cluster's balancer: automation level, threshold, pass interval, cooldown, concurrency."""

    list_display = ["__str__", "enabled", "automation", "threshold", "interval_seconds", "last_pass_at"]
    readonly_fields = ["last_pass_at"]

    def has_add_permission(self, request: Any) -> bool:
        return not DrsSettings.objects.exists()  # one row: the cluster's

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def save_model(self, request: Any, obj: DrsSettings, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        audit_log(
            actor=Actor.from_request(request, source=Source.ADMIN),
            action="drs.settings",
            target=obj,
            detail={name: getattr(obj, name) for name in form.changed_data},
        )


class RecommendationInline(admin.TabularInline):
    model = DrsRecommendation
    fields = ("order", "instance", "source", "target", "live", "cost", "automatic", "state", "reason")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(DrsPass)
class DrsPassAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["pk", "kind", "automation", "threshold", "moves", "std_before", "std_after", "created"]
    list_filter = ["kind", "automation"]
    readonly_fields = ["details"]
    exclude = ["summary"]
    inlines = [RecommendationInline]
    actions = ["apply_all"]

    @admin.display(description="summary")
    def details(self, obj: DrsPass) -> Any:
        return format_html("<pre>{}</pre>", json.dumps(obj.summary, indent=2))

    @admin.action(description="Apply every waiting recommendation of the selected passes")
    def apply_all(self, request: Any, queryset: Any) -> None:
        if not request.user.has_perm("compute.change_host"):
            self.message_user(request, "Applying moves needs the change_host permission.", messages.ERROR)
            return
        actor = Actor.from_request(request, source=Source.ADMIN)
        approved = sum(drs_apply_all(actor=actor, drs_pass=p, user=request.user) for p in queryset)
        self.message_user(request, f"{approved} recommendation(s) approved; they start a few at a time.")


@admin.register(DrsRecommendation)
class DrsRecommendationAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["pk", "drs_pass", "instance", "source", "target", "live", "automatic", "state", "created"]
    list_filter = ["state", "automatic", "live"]
    list_select_related = ["instance", "source", "target", "drs_pass"]
    search_fields = ["instance__name", "instance__uuid"]
    readonly_fields = ["why"]
    exclude = ["explanation"]
    actions = ["apply"]

    @admin.display(description="explanation")
    def why(self, obj: DrsRecommendation) -> Any:
        return format_html("<pre>{}</pre>", json.dumps(obj.explanation, indent=2))

    @admin.action(description="Apply the selected recommendations")
    def apply(self, request: Any, queryset: Any) -> None:
        if not request.user.has_perm("compute.change_host"):
            self.message_user(request, "Applying moves needs the change_host permission.", messages.ERROR)
            return
        actor = Actor.from_request(request, source=Source.ADMIN)
        for rec in queryset.filter(state__in=[RecommendationState.PROPOSED, RecommendationState.APPROVED]):
            try:
                done = drs_apply(actor=actor, recommendation=rec, user=request.user)
            except ServiceError as exc:
                self.message_user(request, f"{rec}: {exc.message}", messages.ERROR)
                continue
            self.message_user(request, f"{rec.instance}: {done.get_state_display()} {done.reason}".strip())


@admin.register(DrsPlacement)
class DrsPlacementAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """New instances held for staff placement (manual mode); the staff DRS page places or refuses them."""

    list_display = ["pk", "instance", "target", "host", "state", "created", "deadline"]
    list_filter = ["state"]
    list_select_related = ["instance", "target", "host"]
    search_fields = ["instance__name", "instance__uuid"]
    readonly_fields = ["why"]
    exclude = ["explanation"]
    actions = ["place"]

    @admin.display(description="decision")
    def why(self, obj: DrsPlacement) -> Any:
        return format_html("<pre>{}</pre>", json.dumps(obj.explanation, indent=2))

    @admin.action(description="Place the selected instances on their recommended hosts")
    def place(self, request: Any, queryset: Any) -> None:
        if not request.user.has_perm("compute.change_host"):
            self.message_user(request, "Placing instances needs the change_host permission.", messages.ERROR)
            return
        actor = Actor.from_request(request, source=Source.ADMIN)
        for held in queryset.filter(state=PlacementState.WAITING):
            try:
                done = drs_place(actor=actor, placement=held, user=request.user)
            except ServiceError as exc:
                self.message_user(request, f"{held.instance}: {exc.message}", messages.ERROR)
                continue
            self.message_user(request, f"{held.instance}: placed on {done.host}")
