"""Flavors and images a tenant may use."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from compute.api.serializers import FlavorSerializer, ImageSerializer
from compute.api.views.base import TenantView
from compute.models import (
    CpuMode,
    ImageKind,
    IoModel,
)
from compute.selectors import flavors_for, images_for
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


IMAGES = ListSpec(
    orderings={"name": ("name",), "created": ("created",)},
    default="name",
    filters=(Filter("name"), Filter("kind", choices=ImageKind.values), Filter("os_name")),
)


class FlavorListView(TenantView):
    schema = ListSchema()

    @extend_schema(parameters=FLAVORS.parameters(), responses=paginated(FlavorSerializer))
    def get(self, request: Request, tenant: str) -> Response:
        page = FLAVORS.page(request, flavors_for(self.tenant(request, tenant)))
        return page.response(FlavorSerializer(page.rows, many=True).data)


class ImageListView(TenantView):
    schema = ListSchema()

    @extend_schema(parameters=IMAGES.parameters(), responses=paginated(ImageSerializer))
    def get(self, request: Request, tenant: str) -> Response:
        page = IMAGES.page(request, images_for(self.tenant(request, tenant)))
        return page.response(ImageSerializer(page.rows, many=True).data)
