"""Images: the list a tenant may use, uploads of its own (a streamed body), and their deletion.

Upload wire format (one request, like Glance's create + upload in one): ``POST …/images/`` with
``Content-Type: application/octet-stream``, the image bytes as the body and the options in the
query string: ``name`` (required), ``disk_format`` (``qcow2`` or ``raw``, required), ``os_name``,
``cloud_init`` (``true``/``false``, default false) and ``login_user``. The body is streamed to the
image store, never held whole; it is not JSON, so portal.body_limits leaves it to this view
(``streamed_body_methods``), which bounds it by the tenant's ``image_gib`` quota and
NUBIS_IMAGE_MAX_GIB. Answers 201 with the image, or 400/409/413 naming the field and reason.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from compute.api.serializers import ImageSerializer
from compute.api.views.base import TenantView
from compute.models import Image, ImageKind, ImageState
from compute.selectors import images_for
from compute.services import image_upload as uploads
from core.errors import ServiceError
from core.pagination import Filter, ListSchema, ListSpec, paginated
from security.audit import Actor
from tenants.models import Role, Tenant

IMAGES = ListSpec(
    orderings={"name": ("name",), "created": ("created",)},
    default="name",
    filters=(Filter("name"), Filter("kind", choices=ImageKind.values), Filter("os_name")),
)
UPLOAD_MEDIA_TYPE = "application/octet-stream"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def upload_parameters() -> list[OpenApiParameter]:
    def q(name: str, required: bool, help: str, kind: Any = str) -> OpenApiParameter:
        return OpenApiParameter(name, kind, OpenApiParameter.QUERY, required=required, description=help)

    return [
        q("name", True, "The image's name: unique among the images the tenant sees."),
        q("disk_format", True, "qcow2 or raw: given to QEMU explicitly, never probed.", str),
        q("os_name", False, "What it runs (shown in lists)."),
        q("cloud_init", False, "Whether its guests read a NoCloud seed (default false).", bool),
        q("login_user", False, "The user cloud-init gives the SSH keys to."),
    ]


def _flag(request: Request, name: str) -> bool:
    raw = str(request.query_params.get(name, "")).strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ServiceError(name, "invalid", f"{name} must be true or false, got {raw!r}")


def _length(request: Request) -> int | None:
    """The declared body length; None for a chunked body of unknown length."""
    declared = request.META.get("CONTENT_LENGTH") or ""
    if not declared:
        if "HTTP_TRANSFER_ENCODING" in request.META:
            return None
        raise ServiceError("body", "empty", "the image is empty (no body)")
    try:
        length = int(declared)
    except ValueError:
        raise ServiceError(
            "body", "invalid", f"Content-Length {declared!r} is not a number of bytes"
        ) from None
    if length <= 0:
        raise ServiceError("body", "empty", "the image is empty (0 bytes)")
    return length


def tenant_images(tenant: Tenant) -> QuerySet[Image]:
    return images_for(tenant).select_related("tenant")


class ImageListView(TenantView):
    schema = ListSchema()
    # The POST body is the image, streamed by the view: portal.body_limits and the idempotency
    # layer do not read it (the upload's name is unique, so a retried upload is refused, not doubled).
    streamed_body_methods = ("POST",)

    @extend_schema(parameters=IMAGES.parameters(), responses=paginated(ImageSerializer))
    def get(self, request: Request, tenant: str) -> Response:
        page = IMAGES.page(request, tenant_images(self.tenant(request, tenant)))
        return page.response(ImageSerializer(page.rows, many=True).data)

    @extend_schema(
        parameters=upload_parameters(),
        request={UPLOAD_MEDIA_TYPE: OpenApiTypes.BINARY},
        responses={201: ImageSerializer},
    )
    def post(self, request: Request, tenant: str) -> Response:
        obj = self.tenant(request, tenant, Role.MEMBER)
        content_type = (request.content_type or "").split(";")[0].strip().lower()
        if content_type != UPLOAD_MEDIA_TYPE:
            raise UnsupportedUpload(content_type)
        params = request.query_params
        image = uploads.image_upload(
            actor=Actor.from_request(request),
            tenant=obj,
            name=str(params.get("name", "")),
            disk_format=str(params.get("disk_format", "")),
            os_name=str(params.get("os_name", "")),
            cloud_init=_flag(request, "cloud_init"),
            login_user=str(params.get("login_user", "")),
            length=_length(request),
            # Django's request is a file-like object over the body, read in chunks by the service.
            stream=request._request,  # type: ignore[arg-type]
        )
        return Response(ImageSerializer(image).data, status=status.HTTP_201_CREATED)


class UnsupportedUpload(ServiceError):
    status = 415

    def __init__(self, content_type: str) -> None:
        named = f"Content-Type {content_type!r}" if content_type else "a body without a Content-Type"
        super().__init__(
            "Content-Type",
            "unsupported_media_type",
            f"{named} is not accepted: an image upload is {UPLOAD_MEDIA_TYPE}",
        )


class ImageDetailView(TenantView):
    @extend_schema(responses=ImageSerializer)
    def get(self, request: Request, tenant: str, pk: int) -> Response:
        image = get_object_or_404(tenant_images(self.tenant(request, tenant)), pk=pk)
        return Response(ImageSerializer(image).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, tenant: str, pk: int) -> Response:
        obj, role = self.tenant_and_role(request, tenant)
        # Only the tenant's own uploads: a public image of nobody (or of another tenant) is 404.
        image = get_object_or_404(Image.objects.filter(tenant=obj, state=ImageState.ACTIVE), pk=pk)
        self.require(role, Role.MEMBER, obj)
        uploads.image_delete(actor=Actor.from_request(request), image=image)
        return Response(status=status.HTTP_204_NO_CONTENT)
