"""Operations: the asynchronous work the API accepted, and how it ended."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from compute.api.serializers import OperationSerializer
from compute.api.views.base import TenantView
from compute.models import (
    Operation,
    OperationKind,
    OperationState,
)
from core.pagination import Filter, ListSchema, ListSpec, paginated

OPERATIONS = ListSpec(
    orderings={"created": ("created",), "state": ("state",), "kind": ("kind",)},
    default="-created",
    filters=(
        Filter("state", choices=OperationState.values),
        Filter("kind", choices=OperationKind.values),
        Filter("instance", "instance__uuid", kind="uuid", help="Only operations on this instance (its id)"),
    ),
)


class OperationListView(TenantView):
    schema = ListSchema()

    @extend_schema(parameters=OPERATIONS.parameters(), responses=paginated(OperationSerializer))
    def get(self, request: Request, tenant: str) -> Response:
        obj = self.tenant(request, tenant)
        page = OPERATIONS.page(request, Operation.objects.for_tenant(obj).select_related("instance"))
        return page.response(OperationSerializer(page.rows, many=True).data)


class OperationDetailView(TenantView):
    @extend_schema(responses=OperationSerializer)
    def get(self, request: Request, tenant: str, pk: str) -> Response:
        obj = self.tenant(request, tenant)
        operation = get_object_or_404(Operation.objects.for_tenant(obj).select_related("instance"), uuid=pk)
        return Response(OperationSerializer(operation).data)
