"""Flavors a tenant may use (images: compute.api.views.images)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from compute.api.serializers import FlavorSerializer
from compute.api.views.base import TenantView
from compute.models import (
    CpuMode,
    IoModel,
)
from compute.selectors import flavors_for
from core.pagination import Filter, ListSchema, ListSpec, paginated

FLAVORS = ListSpec(
    orderings={
        "vcpus": ("vcpus", "ram_mib", "name"),
        "ram_mib": ("ram_mib", "vcpus", "name"),
        "name": ("name",),
    },
    default="vcpus",
    filters=(
        Filter("name"),
        Filter("cpu_mode", choices=CpuMode.values),
        Filter("io_model", choices=IoModel.values),
    ),
)


class FlavorListView(TenantView):
    schema = ListSchema()

    @extend_schema(parameters=FLAVORS.parameters(), responses=paginated(FlavorSerializer))
    def get(self, request: Request, tenant: str) -> Response:
        page = FLAVORS.page(request, flavors_for(self.tenant(request, tenant)))
        return page.response(FlavorSerializer(page.rows, many=True).data)
