"""Tenant pages for images, under /t/<tenant>/images/: the list, an upload form and delete.

The upload is a plain HTML form (multipart). Its file is never held in memory nor spooled to
/tmp by Django's default handlers: a handler of our own (ImageUploadHandler) writes each chunk
straight into a hidden file in the upload directory, hashing it, and stops at the tenant's
image_gib quota left (checked on the request's Content-Length before a byte is read, and again
as the bytes come). For that, the view sets its handler before anything reads the body, so it is
exempt from the CSRF middleware (which would parse the body with the default handlers) and checks
the CSRF token itself, after setting the handler (Django's documented pattern).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils.datastructures import MultiValueDict
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_http_methods

from compute.models import DiskFormat, Image, ImageState
from compute.selectors import images_for
from compute.services import image_upload as svc
from compute.ui.networks import Forms, confirm_delete, page, run
from core.errors import ServiceError
from security.audit import Actor
from tenants.access import require_role, tenant_for_request
from tenants.models import Role, Tenant

IMAGE_FORMS: Forms = {
    "upload": ("name", "disk_format", "os_name", "login_user", "image", "body", "image_gib")
}
FILE_FIELD = "image"
MULTIPART_SLACK = 64 * 1024  # the form's other fields and boundaries around the file


class StagedFile(UploadedFile):
    """The uploaded file as the handler left it: a path in the upload directory, its hash and size."""

    def __init__(self, path: Path, sha256: str, size: int, name: str) -> None:
        super().__init__(file=None, name=name, size=size)
        self.path = path
        self.sha256 = sha256


class ImageUploadHandler(FileUploadHandler):
    """Write the form's image file to a staged file in chunks, hashing it, within ``room`` bytes."""

    def __init__(self, request: HttpRequest, room: int) -> None:
        super().__init__(request)
        self.room = room
        self.path: Path | None = None
        self.out: Any = None
        self.digest = hashlib.sha256()
        self.size = 0

    def handle_raw_input(self, *args: Any, **kwargs: Any) -> None:
        content_length = args[2] if len(args) > 2 else kwargs.get("content_length")
        if content_length and content_length > self.room + MULTIPART_SLACK:
            raise svc.UploadTooLarge(
                "image_gib",
                "quota",
                f"the upload of {content_length} bytes is larger than the {self.room} bytes the tenant "
                "may still store (its image_gib quota left, or NUBIS_IMAGE_MAX_GIB)",
            )

    def new_file(self, field_name: str, *args: Any, **kwargs: Any) -> None:
        super().new_file(field_name, *args, **kwargs)
        if field_name != FILE_FIELD or self.path is not None:
            raise ServiceError(FILE_FIELD, "invalid", "the form takes one file, in the field 'image'")
        self.path = svc.staging_path()
        self.out = self.path.open("wb")

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        self.size += len(raw_data)
        if self.size > self.room:
            raise svc.UploadTooLarge(
                "image_gib",
                "quota",
                f"the image is larger than the {self.room} bytes the tenant may still store",
            )
        self.digest.update(raw_data)
        self.out.write(raw_data)

    def file_complete(self, file_size: int) -> StagedFile | None:
        if self.out is None or self.path is None:
            return None
        self.out.close()
        return StagedFile(self.path, self.digest.hexdigest(), self.size, self.file_name or "image")

    def discard(self) -> None:
        """Remove the staged file (an upload that failed, or one the service did not adopt)."""
        if self.out is not None:
            self.out.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _images_page(
    request: HttpRequest, tenant: Tenant, role: Role, error: ServiceError | None = None
) -> HttpResponse:
    images = images_for(tenant).select_related("tenant").order_by("name")
    context = {
        "tenant": tenant,
        "role": role,
        "images": images,
        "formats": DiskFormat.values,
        "room": svc.upload_room(tenant),
        "defaults": {"disk_format": "qcow2"},
    }
    return page(request, "compute/images.html", context, IMAGE_FORMS, error=error, form="upload")


@login_required
@require_http_methods(["GET"])
def images_page(request: HttpRequest, tenant: str) -> HttpResponse:
    """The images the tenant may use: its own uploads and the public ones."""
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    return _images_page(request, obj, role)


@csrf_exempt  # checked below, once the handler that streams the file is in place
@login_required
@require_http_methods(["POST"])
def image_upload(request: HttpRequest, tenant: str) -> HttpResponse:
    """Upload an image from the form (members and owners)."""
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    require_role(role, Role.MEMBER, obj)
    handler = ImageUploadHandler(request, svc.upload_room(obj))
    request.upload_handlers = [handler]
    try:
        return _upload(request, obj, role, handler)
    except ServiceError as exc:  # from the handler, while the CSRF check first read the form
        request._post, request._files = QueryDict(), MultiValueDict()  # type: ignore[attr-defined]
        return _images_page(request, obj, role, exc)
    finally:
        handler.discard()  # a no-op once the service moved the file to its place


@csrf_protect
def _upload(request: HttpRequest, tenant: Tenant, role: Role, handler: ImageUploadHandler) -> HttpResponse:
    try:
        staged = request.FILES.get(FILE_FIELD)
    except ServiceError as exc:
        return _images_page(request, tenant, role, exc)
    if not isinstance(staged, StagedFile):
        return _images_page(
            request, tenant, role, ServiceError(FILE_FIELD, "required", "choose an image file")
        )
    form = request.POST
    return run(
        request,
        lambda: svc.image_upload_staged(
            actor=Actor.from_request(request),
            tenant=tenant,
            name=form.get("name", "").strip(),
            disk_format=form.get("disk_format", ""),
            os_name=form.get("os_name", "").strip(),
            cloud_init=form.get("cloud_init") == "on",
            login_user=form.get("login_user", "").strip(),
            staged=staged.path,
            sha256=staged.sha256,
            size=staged.size or 0,
        ),
        lambda image: f"Uploaded image {image.name} ({image.size_bytes} bytes, SHA-256 {image.sha256}).",
        lambda _: redirect("ui-images", tenant=tenant.slug),
        lambda exc: _images_page(request, tenant, role, exc),
    )


@login_required
@require_http_methods(["GET", "POST"])
def image_delete(request: HttpRequest, tenant: str, pk: int) -> HttpResponse:
    """Confirm, then delete one of the tenant's uploaded images (members and owners)."""
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    image = get_object_or_404(Image.objects.filter(tenant=obj, state=ImageState.ACTIVE), pk=pk)
    require_role(role, Role.MEMBER, obj)
    back = reverse("ui-images", args=[obj.slug])
    return confirm_delete(
        request,
        obj,
        what="image",
        name=image.name,
        consequence="Its file is removed and its space given back to the tenant's image quota.",
        remedy="Delete the instances made from it first.",
        back=back,
        in_use=lambda: svc.image_in_use(image),
        delete=lambda: svc.image_delete(actor=Actor.from_request(request), image=image),
        done=back,
    )
