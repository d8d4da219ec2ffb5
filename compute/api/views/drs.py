"""The staff API of DRS: its settings, its passes with their recommendations, applying them, pins."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from compute.api.views.admin import StaffOnly
from compute.models import Instance
from compute.services.drs import (
    drs_apply,
    drs_apply_all,
    drs_pass_run,
    drs_settings_update,
    drs_what_if,
    instance_drs_pin,
)
from compute.services.drs_placement import drs_place, drs_place_all, drs_place_reject, host_named
from core.pagination import Filter, ListSchema, ListSpec, paginated
from scheduler.drs import LEVELS
from scheduler.models import (
    Automation,
    DrsPass,
    DrsPassKind,
    DrsPlacement,
    DrsRecommendation,
    DrsSettings,
    PlacementState,
    RecommendationState,
)
from security.audit import Actor
from tenants.access import require_model_permission

MOVE_PERMISSION = "compute.change_host"  # a recommendation applied is a migration
SETTINGS_PERMISSION = "scheduler.change_drssettings"


class DrsSettingsSerializer(serializers.ModelSerializer[DrsSettings]):
    threshold_name = serializers.SerializerMethodField()

    class Meta:
        model = DrsSettings
        fields = [
            "enabled",
            "automation",
            "threshold",
            "threshold_name",
            "interval_seconds",
            "cooldown_seconds",
            "max_concurrent",
            "max_moves",
            "window_seconds",
            "placement_timeout_seconds",
            "last_pass_at",
        ]
        read_only_fields = ["last_pass_at", "threshold_name"]

    def get_threshold_name(self, obj: DrsSettings) -> str:
        level = LEVELS.get(obj.threshold)
        return level.name if level else ""


class DrsSettingsUpdateSerializer(serializers.Serializer[Any]):
    enabled = serializers.BooleanField(required=False)
    automation = serializers.ChoiceField(choices=Automation.choices, required=False)
    threshold = serializers.IntegerField(min_value=1, max_value=5, required=False)
    interval_seconds = serializers.IntegerField(min_value=30, max_value=86400, required=False)
    cooldown_seconds = serializers.IntegerField(min_value=0, max_value=7 * 86400, required=False)
    max_concurrent = serializers.IntegerField(min_value=1, max_value=64, required=False)
    max_moves = serializers.IntegerField(min_value=1, max_value=1000, required=False)
    window_seconds = serializers.IntegerField(min_value=5, max_value=86400, required=False)
    placement_timeout_seconds = serializers.IntegerField(min_value=60, max_value=7 * 86400, required=False)


class RecommendationSerializer(serializers.ModelSerializer[DrsRecommendation]):
    drs_pass = serializers.IntegerField(source="drs_pass_id", read_only=True)
    instance = serializers.UUIDField(  # type: ignore[assignment]  # the API's name for it
        source="instance.uuid", read_only=True
    )
    instance_name = serializers.CharField(source="instance.name", read_only=True)
    tenant = serializers.CharField(source="instance.tenant.slug", read_only=True)
    source = serializers.CharField(  # type: ignore[assignment]  # the API's name for it
        source="source.name", read_only=True
    )
    target = serializers.CharField(source="target.name", read_only=True)

    class Meta:
        model = DrsRecommendation
        fields = [
            "id",
            "drs_pass",
            "order",
            "instance",
            "instance_name",
            "tenant",
            "instance_ids",
            "source",
            "target",
            "live",
            "cost",
            "automatic",
            "state",
            "reason",
            "explanation",
            "operations",
            "created",
            "updated",
        ]
        read_only_fields = fields


class DrsPassSerializer(serializers.ModelSerializer[DrsPass]):
    requested_by = serializers.CharField(source="requested_by.username", read_only=True, default=None)

    class Meta:
        model = DrsPass
        fields = [
            "id",
            "kind",
            "automation",
            "threshold",
            "requested_by",
            "std_before",
            "std_after",
            "moves",
            "summary",
            "changes",
            "error",
            "created",
            "finished",
        ]
        read_only_fields = fields


class DrsPassDetailSerializer(DrsPassSerializer):
    recommendations = RecommendationSerializer(many=True, read_only=True)

    class Meta(DrsPassSerializer.Meta):
        fields = [*DrsPassSerializer.Meta.fields, "recommendations"]
        read_only_fields = fields


class CapacitySerializer(serializers.Serializer[Any]):
    cpus = serializers.IntegerField(min_value=1, max_value=1 << 24, required=False)
    ram_mib = serializers.IntegerField(min_value=1, max_value=1 << 30, required=False)


class WhatIfSerializer(serializers.Serializer[Any]):
    maintenance = serializers.ListField(
        child=serializers.CharField(max_length=100),
        required=False,
        max_length=100,
        help_text="Hosts to empty.",
    )
    capacity = serializers.DictField(
        child=CapacitySerializer(), required=False, help_text="{host name: {cpus, ram_mib}}: a new size."
    )
    add_flavor = serializers.CharField(max_length=64, required=False, default="")
    add_count = serializers.IntegerField(min_value=0, max_value=10000, required=False, default=0)
    add_kind = serializers.ChoiceField(choices=["vm", "container"], required=False, default="vm")
    busy = serializers.FloatField(min_value=0.01, max_value=1.0, required=False, default=1.0)
    threshold = serializers.IntegerField(
        min_value=1, max_value=5, required=False, allow_null=True, default=None
    )


class PinSerializer(serializers.Serializer[Any]):
    pinned = serializers.BooleanField()


def _recommendations() -> Any:
    return DrsRecommendation.objects.select_related("instance__tenant", "source", "target")


class AdminDrsView(APIView):
    """Staff: the cluster's DRS settings (GET; PATCH with change_drssettings) and the latest pass."""

    permission_classes = [StaffOnly]

    @extend_schema(responses=DrsSettingsSerializer)
    def get(self, request: Request) -> Response:
        data = dict(DrsSettingsSerializer(DrsSettings.current()).data)
        latest = DrsPass.objects.exclude(kind=DrsPassKind.WHAT_IF).first()
        data["latest_pass"] = DrsPassSerializer(latest).data if latest else None
        return Response(data)

    @extend_schema(request=DrsSettingsUpdateSerializer, responses=DrsSettingsSerializer)
    def patch(self, request: Request) -> Response:
        require_model_permission(request, SETTINGS_PERMISSION)
        body = DrsSettingsUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        changed = drs_settings_update(actor=Actor.from_request(request), **body.validated_data)
        return Response(DrsSettingsSerializer(changed).data)


PASSES = ListSpec(
    orderings={"created": ("created", "pk")},
    default="-created",
    filters=(Filter("kind", choices=DrsPassKind.values),),
)


class AdminDrsPassListView(APIView):
    """Staff: the passes, newest first (GET); run one now (POST, with change_host)."""

    permission_classes = [StaffOnly]
    schema = ListSchema()

    @extend_schema(parameters=PASSES.parameters(), responses=paginated(DrsPassSerializer))
    def get(self, request: Request) -> Response:
        page = PASSES.page(request, DrsPass.objects.select_related("requested_by"))
        return page.response(DrsPassSerializer(page.rows, many=True).data)

    @extend_schema(request=None, responses={201: DrsPassDetailSerializer})
    def post(self, request: Request) -> Response:
        require_model_permission(request, MOVE_PERMISSION)
        done = drs_pass_run(
            kind=DrsPassKind.REQUESTED, actor=Actor.from_request(request), requested_by=request.user
        )
        if done is None:  # a requested pass always runs; never reached
            raise RuntimeError("the requested DRS pass did not run")
        return Response(DrsPassDetailSerializer(done).data, status=status.HTTP_201_CREATED)


class AdminDrsPassView(APIView):
    """Staff: one pass with its recommendations and their explanations."""

    permission_classes = [StaffOnly]

    @extend_schema(responses=DrsPassDetailSerializer)
    def get(self, request: Request, pk: int) -> Response:
        drs_pass = get_object_or_404(
            DrsPass.objects.prefetch_related("recommendations__instance__tenant"), pk=pk
        )
        return Response(DrsPassDetailSerializer(drs_pass).data)


class AdminDrsPassApplyView(APIView):
    """Staff with change_host: apply every waiting recommendation of a pass (they start a few at a time)."""

    permission_classes = [StaffOnly]

    @extend_schema(request=None, responses=DrsPassDetailSerializer)
    def post(self, request: Request, pk: int) -> Response:
        drs_pass = get_object_or_404(DrsPass, pk=pk)
        require_model_permission(request, MOVE_PERMISSION)
        drs_apply_all(actor=Actor.from_request(request), drs_pass=drs_pass, user=request.user)
        return Response(DrsPassDetailSerializer(drs_pass).data)


RECOMMENDATIONS = ListSpec(
    orderings={"created": ("created", "pk")},
    default="-created",
    filters=(
        Filter("state", choices=RecommendationState.values),
        Filter("drs_pass", path="drs_pass_id", kind="int"),
    ),
)


class AdminDrsRecommendationListView(APIView):
    """Staff: recommendations, newest first, by state or pass."""

    permission_classes = [StaffOnly]
    schema = ListSchema()

    @extend_schema(parameters=RECOMMENDATIONS.parameters(), responses=paginated(RecommendationSerializer))
    def get(self, request: Request) -> Response:
        page = RECOMMENDATIONS.page(request, _recommendations())
        return page.response(RecommendationSerializer(page.rows, many=True).data)


class AdminDrsRecommendationApplyView(APIView):
    """Staff with change_host: apply one recommendation: it starts now (or when a slot frees)."""

    permission_classes = [StaffOnly]

    @extend_schema(request=None, responses=RecommendationSerializer)
    def post(self, request: Request, pk: int) -> Response:
        rec = get_object_or_404(_recommendations(), pk=pk)
        require_model_permission(request, MOVE_PERMISSION)
        done = drs_apply(actor=Actor.from_request(request), recommendation=rec, user=request.user)
        return Response(RecommendationSerializer(done).data)


class AdminDrsWhatIfView(APIView):
    """Staff: a pass on a copy of today's cluster in the simulator, with changes; nothing moves.

    202: the control worker computes it; ``GET …/drs/passes/<id>/`` has the prediction once
    ``finished`` is set (or the ``error``)."""

    permission_classes = [StaffOnly]

    @extend_schema(request=WhatIfSerializer, responses={202: DrsPassSerializer})
    def post(self, request: Request) -> Response:
        body = WhatIfSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        done = drs_what_if(
            actor=Actor.from_request(request),
            requested_by=request.user,
            maintenance=data.get("maintenance") or [],
            capacity={name: dict(sizes) for name, sizes in (data.get("capacity") or {}).items()},
            add_flavor=data["add_flavor"],
            add_count=data["add_count"],
            add_kind=data["add_kind"],
            busy=data["busy"],
            threshold_level=data["threshold"],
        )
        return Response(DrsPassSerializer(done).data, status=status.HTTP_202_ACCEPTED)


class AdminInstancePinView(APIView):
    """Staff with change_host: pin an instance (DRS never moves it) or unpin it."""

    permission_classes = [StaffOnly]

    @extend_schema(request=PinSerializer, responses=PinSerializer)
    def put(self, request: Request, uuid: str) -> Response:
        instance = get_object_or_404(Instance.objects.unscoped(), uuid=uuid)
        require_model_permission(request, MOVE_PERMISSION)
        body = PinSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        done = instance_drs_pin(
            actor=Actor.from_request(request), instance=instance, pinned=body.validated_data["pinned"]
        )
        return Response({"pinned": done.drs_pinned})


class PlacementSerializer(serializers.ModelSerializer[DrsPlacement]):
    instance = serializers.UUIDField(  # type: ignore[assignment]  # the API's name for it
        source="instance.uuid", read_only=True
    )
    instance_name = serializers.CharField(source="instance.name", read_only=True)
    kind = serializers.CharField(source="instance.kind", read_only=True)
    flavor = serializers.CharField(source="instance.flavor.name", read_only=True)
    tenant = serializers.CharField(source="instance.tenant.slug", read_only=True)
    target = serializers.CharField(source="target.name", read_only=True)
    host = serializers.CharField(source="host.name", read_only=True, default=None)
    decided_by = serializers.CharField(source="decided_by.username", read_only=True, default=None)
    candidates = serializers.SerializerMethodField()

    class Meta:
        model = DrsPlacement
        fields = [
            "id",
            "instance",
            "instance_name",
            "kind",
            "flavor",
            "tenant",
            "target",
            "candidates",
            "host",
            "state",
            "reason",
            "explanation",
            "decided_by",
            "created",
            "deadline",
            "updated",
        ]
        read_only_fields = fields

    def get_candidates(self, obj: DrsPlacement) -> list[dict[str, Any]]:
        """The decision's best hosts with their weights, best first (the target is the first)."""
        return [{"host": c["host"], "weight": c["weight"]} for c in obj.explanation.get("top", [])]


class PlaceSerializer(serializers.Serializer[Any]):
    host = serializers.CharField(
        max_length=100, required=False, help_text="A host's name; default: the recommended one."
    )


class PlacedSerializer(serializers.Serializer[Any]):
    placed = serializers.IntegerField(help_text="How many were placed.")
    not_placed = serializers.ListField(
        child=serializers.CharField(), help_text="Why each of the others could not be (they keep waiting)."
    )


class RejectSerializer(serializers.Serializer[Any]):
    reason = serializers.CharField(max_length=500, help_text="Why; the instance's owners read it.")


def _placements() -> Any:
    return DrsPlacement.objects.select_related(
        "instance__tenant", "instance__flavor", "target", "host", "decided_by"
    )


PLACEMENTS = ListSpec(
    orderings={"created": ("created", "pk")},
    default="-created",
    filters=(Filter("state", choices=PlacementState.values),),
)


class AdminDrsPlacementListView(APIView):
    """Staff: new instances held for staff placement (DRS manual mode), newest first, by state."""

    permission_classes = [StaffOnly]
    schema = ListSchema()

    @extend_schema(parameters=PLACEMENTS.parameters(), responses=paginated(PlacementSerializer))
    def get(self, request: Request) -> Response:
        page = PLACEMENTS.page(request, _placements())
        return page.response(PlacementSerializer(page.rows, many=True).data)


class AdminDrsPlacementApplyView(APIView):
    """Staff with change_host: place a waiting instance on the recommended host or on ``host``
    (the filters check it again); its create then runs there."""

    permission_classes = [StaffOnly]

    @extend_schema(request=PlaceSerializer, responses=PlacementSerializer)
    def post(self, request: Request, pk: int) -> Response:
        held = get_object_or_404(_placements(), pk=pk)
        require_model_permission(request, MOVE_PERMISSION)
        body = PlaceSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        host = host_named(body.validated_data.get("host", ""))
        done = drs_place(actor=Actor.from_request(request), placement=held, host=host, user=request.user)
        return Response(PlacementSerializer(_placements().get(pk=done.pk)).data)


class AdminDrsPlacementRejectView(APIView):
    """Staff with change_host: refuse a waiting instance; it fails with the reason given."""

    permission_classes = [StaffOnly]

    @extend_schema(request=RejectSerializer, responses=PlacementSerializer)
    def post(self, request: Request, pk: int) -> Response:
        held = get_object_or_404(_placements(), pk=pk)
        require_model_permission(request, MOVE_PERMISSION)
        body = RejectSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        done = drs_place_reject(
            actor=Actor.from_request(request),
            placement=held,
            reason=body.validated_data["reason"],
            user=request.user,
        )
        return Response(PlacementSerializer(_placements().get(pk=done.pk)).data)


class AdminDrsPlacementApplyAllView(APIView):
    """Staff with change_host: place every waiting instance on its recommended host. Those that no
    longer fit there keep waiting; ``not_placed`` says why."""

    permission_classes = [StaffOnly]

    @extend_schema(request=None, responses=PlacedSerializer, operation_id="admin_drs_placements_apply_all")
    def post(self, request: Request) -> Response:
        require_model_permission(request, MOVE_PERMISSION)
        placed, errors = drs_place_all(actor=Actor.from_request(request), user=request.user)
        return Response(PlacedSerializer({"placed": placed, "not_placed": errors}).data)
