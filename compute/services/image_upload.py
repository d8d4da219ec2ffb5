"""Images tenants upload: claim the quota, stream the bytes to the store, check them, then use them.

An upload goes through three steps, and a failure at any of them leaves nothing behind (no row,
no file, no claim):

1. ``image_upload_begin`` (one short transaction): the options are checked, the image row is
   made in state ``uploading`` and the tenant's ``image_gib`` quota is claimed for it, before a
   byte of the body is read. A declared Content-Length is claimed whole (rounded up to GiB), so an
   upload over the quota is refused on its headers; a body of unknown length (chunked) claims all
   the quota the tenant has left, up to the global bound, and may not write more than that.
2. ``image_receive``: the body is read in chunks of CHUNK bytes, written to a hidden file next to
   its final path and hashed (SHA-256) as it goes; never more than the claim allows.
3. ``image_check`` (compute.guest.image_check) refuses what must not boot; then, in a second
   transaction, the claim is set to the real size and the image becomes ``active``.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q

from compute.guest.image_check import ImageFacts, check_image
from compute.models import DiskFormat, Image, ImageKind, ImageState, Instance
from compute.services.networks import in_use
from core.errors import Conflict, QuotaExceeded, ServiceError
from security.audit import Actor, audit_log
from tenants.models import QuotaClaim, Tenant
from tenants.services.quotas import quota_claim, quota_of, quota_release, usage_of

GIB = 1 << 30
CHUNK = 1 << 20  # bytes read from the body at a time: the most an upload holds in memory
NAME_RULE = "1-100 letters, digits, dots, hyphens or underscores, starting with a letter"
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,99}")
_LOGIN_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


class UploadTooLarge(ServiceError):
    """The body is larger than the upload may be (the quota or the global bound): 413."""

    status = 413


def gib_of(size: int) -> int:
    """Whole GiB needed to hold ``size`` bytes (at least 1)."""
    return max(1, -(-size // GIB))


def max_upload_bytes() -> int:
    return int(settings.NUBIS_IMAGE_MAX_GIB) * GIB


def _check_options(name: str, disk_format: str, os_name: str, login_user: str) -> None:
    if not _NAME.fullmatch(name or ""):
        raise ServiceError("name", "name", f"invalid image name {name!r}: {NAME_RULE}")
    if disk_format not in DiskFormat.values:
        raise ServiceError(
            "disk_format", "choice", f"disk_format must be one of {', '.join(DiskFormat.values)}"
        )
    if len(os_name) > 100:
        raise ServiceError("os_name", "max_length", "os_name is at most 100 characters")
    if login_user and not _LOGIN_USER.fullmatch(login_user):
        raise ServiceError(
            "login_user", "format", f"invalid login_user {login_user!r}: a Linux user name of 1-32 characters"
        )


def upload_refusal(tenant: Tenant, length: int) -> UploadTooLarge | None:
    """What an upload of ``length`` bytes would be refused with on its length alone (None: room).

    The same answer image_upload_begin gives, asked by the HTTP server before it takes the body
    (portal.early_refusal); it claims nothing.
    """
    try:
        gib = _claim_gib(tenant, length)
    except UploadTooLarge as too_large:
        return too_large
    quota = quota_of(tenant).limit("image_gib")
    used = usage_of(tenant)["image_gib"]
    if used + gib > quota:
        over = QuotaExceeded("image_gib", quota, used, gib)
        return UploadTooLarge(over.field, over.rule, over.message)
    return None


def _claim_gib(tenant: Tenant, length: int | None) -> int:
    """The GiB to claim before reading a body of ``length`` bytes (None: unknown length)."""
    bound = max_upload_bytes()
    if length is not None:
        if length > bound:
            raise UploadTooLarge(
                "body",
                "max_size",
                f"the image is {length} bytes, over the upload limit of {settings.NUBIS_IMAGE_MAX_GIB} GiB "
                "(NUBIS_IMAGE_MAX_GIB)",
            )
        return gib_of(length)
    left = quota_of(tenant).limit("image_gib") - usage_of(tenant)["image_gib"]
    if left <= 0:
        quota = quota_of(tenant).limit("image_gib")
        exc = QuotaExceeded("image_gib", quota, quota - left, 1)
        raise UploadTooLarge(exc.field, exc.rule, exc.message)
    return min(left, int(settings.NUBIS_IMAGE_MAX_GIB))


@transaction.atomic
def image_upload_begin(
    *,
    actor: Actor,
    tenant: Tenant,
    name: str,
    disk_format: str,
    length: int | None,
    os_name: str = "",
    cloud_init: bool = False,
    login_user: str = "",
) -> tuple[Image, QuotaClaim]:
    """Make the image row (uploading) and claim its quota, before any of the body is read.

    Raises ServiceError naming the option, QuotaExceeded (image_gib) or UploadTooLarge.
    """
    _check_options(name, disk_format, os_name, login_user)
    if length is not None and length <= 0:
        raise ServiceError("body", "empty", "the image is empty (0 bytes)")
    # One name, one image, among what the tenant sees: its own (even uploading) and the public ones.
    taken = Image.objects.filter(Q(tenant=tenant) | Q(public=True), name=name).exclude(
        state=ImageState.DELETED
    )
    if taken.exists():
        raise ServiceError("name", "unique", f"an image named {name!r} already exists")
    directory = Path(settings.NUBIS_IMAGE_UPLOAD_DIR)
    path = directory / f"{uuid.uuid4().hex}.{disk_format}"
    try:
        with transaction.atomic():
            image = Image.objects.create(
                name=name,
                kind=ImageKind.DISK,
                os_name=os_name or "uploaded image",
                disk_path=str(path),
                disk_format=disk_format,
                cloud_init=cloud_init,
                login_user=login_user,
                sha256="",
                state=ImageState.UPLOADING,
                public=False,
                tenant=tenant,
                created_by_id=actor.user_id,
            )
    except IntegrityError:
        raise ServiceError("name", "unique", f"an image named {name!r} already exists") from None
    gib = _claim_gib(tenant, length)
    try:
        claim = quota_claim(tenant, {"image_gib": gib}, f"image upload {name}", holder=image)
    except QuotaExceeded as exc:
        # 413: the body is too large for what the tenant may store, said before reading it.
        raise UploadTooLarge(exc.field, exc.rule, exc.message) from None
    return image, claim


def image_receive(image: Image, stream: BinaryIO, length: int | None, limit: int) -> tuple[str, int]:
    """Copy the body to the image's file in CHUNK-sized reads, hashing it: (sha256, bytes).

    Reads at most ``length`` bytes (when known); more than ``limit`` bytes is UploadTooLarge. The
    file appears at its path only when whole.
    """
    path = Path(image.disk_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    digest = hashlib.sha256()
    size = 0
    with partial.open("wb") as out:
        while length is None or size < length:
            want = CHUNK if length is None else min(CHUNK, length - size)
            chunk = stream.read(want)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise UploadTooLarge(
                    "body",
                    "quota",
                    f"the image is larger than the {limit // GIB} GiB the upload may take "
                    "(the tenant's image_gib quota left, or NUBIS_IMAGE_MAX_GIB)",
                )
            digest.update(chunk)
            out.write(chunk)
    if length is not None and size < length:
        raise ServiceError("body", "incomplete", f"the body ended after {size} of {length} bytes")
    partial.rename(path)
    return digest.hexdigest(), size


@transaction.atomic
def image_upload_finish(
    *, actor: Actor, image: Image, claim: QuotaClaim, sha256: str, facts: ImageFacts
) -> Image:
    """Make the checked image active; its claim becomes the real size (never more than claimed)."""
    locked = Image.objects.select_for_update().get(pk=image.pk, state=ImageState.UPLOADING)
    gib = gib_of(facts.actual_size)
    if gib != claim.image_gib:
        quota_release(claim, "image upload: the claim is set to its real size")
        owner = Tenant.objects.get(pk=claim.tenant_id)
        quota_claim(owner, {"image_gib": gib}, f"image {locked.name}", holder=locked, enforce=False)
    locked.sha256 = sha256
    locked.size_bytes = facts.actual_size
    locked.virtual_size_bytes = facts.virtual_size
    locked.state = ImageState.ACTIVE
    locked.save(update_fields=["sha256", "size_bytes", "virtual_size_bytes", "state"])
    audit_log(
        actor=actor,
        action="image.upload",
        target=locked,
        tenant=locked.tenant,
        detail={"format": locked.disk_format, "size": facts.actual_size, "sha256": sha256},
    )
    return locked


def _claims_of(image: Image) -> Any:
    if image.tenant_id is None:  # a built image holds no claim
        return []
    return QuotaClaim.objects.for_tenant(image.tenant_id).filter(
        holder_type__app_label="compute",
        holder_type__model="image",
        holder_id=str(image.pk),
        released_at__isnull=True,
    )


def image_upload_abort(image: Image, reason: str) -> None:
    """Undo a failed upload: the claim released, the file and the row gone (safe to repeat)."""
    path = Path(image.disk_path)
    for leftover in (path, path.with_name(f".{path.name}.partial")):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
    with transaction.atomic():
        for claim in _claims_of(image):
            quota_release(claim, f"image upload failed: {reason}"[:200])
        Image.objects.filter(pk=image.pk, state=ImageState.UPLOADING).delete()


def image_upload(
    *,
    actor: Actor,
    tenant: Tenant,
    name: str,
    disk_format: str,
    stream: BinaryIO,
    length: int | None,
    os_name: str = "",
    cloud_init: bool = False,
    login_user: str = "",
) -> Image:
    """Upload an image: claim, stream, check, activate; on any failure nothing stays."""
    image, claim = image_upload_begin(
        actor=actor,
        tenant=tenant,
        name=name,
        disk_format=disk_format,
        length=length,
        os_name=os_name,
        cloud_init=cloud_init,
        login_user=login_user,
    )
    return _complete(
        actor,
        image,
        claim,
        lambda: image_receive(image, stream, length, min(claim.image_gib * GIB, max_upload_bytes())),
    )


def image_upload_staged(
    *,
    actor: Actor,
    tenant: Tenant,
    name: str,
    disk_format: str,
    staged: Path,
    sha256: str,
    size: int,
    os_name: str = "",
    cloud_init: bool = False,
    login_user: str = "",
) -> Image:
    """Adopt a body an upload handler already streamed into the upload directory (the UI's form):
    claim its size, move it to its place, check it, activate it; on any failure nothing stays."""
    try:
        image, claim = image_upload_begin(
            actor=actor,
            tenant=tenant,
            name=name,
            disk_format=disk_format,
            length=size,
            os_name=os_name,
            cloud_init=cloud_init,
            login_user=login_user,
        )
    except BaseException:
        staged.unlink(missing_ok=True)
        raise

    def adopt() -> tuple[str, int]:
        staged.rename(image.disk_path)
        return sha256, size

    return _complete(actor, image, claim, adopt)


def staging_path() -> Path:
    """Where an upload handler writes a body before its image row exists (hidden, in the upload dir)."""
    directory = Path(settings.NUBIS_IMAGE_UPLOAD_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f".staged-{uuid.uuid4().hex}.partial"


def upload_room(tenant: Tenant) -> int:
    """The most bytes an upload of the tenant may hold now: its image_gib left, the global bound."""
    left = quota_of(tenant).limit("image_gib") - usage_of(tenant)["image_gib"]
    return max(0, min(left * GIB, max_upload_bytes()))


def _complete(actor: Actor, image: Image, claim: QuotaClaim, receive: Callable[[], tuple[str, int]]) -> Image:
    try:
        sha256, _size = receive()
        facts = check_image(
            Path(image.disk_path), image.disk_format, int(settings.NUBIS_IMAGE_MAX_VIRTUAL_GIB) * GIB
        )
        return image_upload_finish(actor=actor, image=image, claim=claim, sha256=sha256, facts=facts)
    except BaseException as exc:
        image_upload_abort(image, str(exc) or type(exc).__name__)
        raise


def image_in_use(image: Image) -> ServiceError | None:
    """The refusal to delete an image live instances were made from, naming them."""
    if image.tenant_id is None:  # a built image: not the tenants' to delete
        return None
    return in_use(
        "image", f"image {image.name!r}", Instance.objects.for_tenant(image.tenant_id).filter(image=image)
    )


@transaction.atomic
def image_delete(*, actor: Actor, image: Image) -> None:
    """Delete an uploaded image no live instance uses: its claim released, its file removed.

    The row goes too, unless instances (deleted ones, kept for history) still name it: then it
    stays as ``deleted`` under a freed name.
    """
    locked = Image.objects.select_for_update().get(pk=image.pk)
    if locked.tenant_id is None or locked.state != ImageState.ACTIVE:
        raise ServiceError(
            "image", "state", f"image {locked.name!r} is not an uploaded image that can be deleted"
        )
    if locked.public:
        # Other tenants' instances may be made from it: staff make it private first.
        raise Conflict(
            "image", "public", f"image {locked.name!r} is public; staff must make it private first"
        )
    refusal = image_in_use(locked)
    if refusal is not None:
        raise refusal
    for claim in _claims_of(locked):
        quota_release(claim, f"image {locked.name} deleted")
    audit_log(actor=actor, action="image.delete", target=locked, tenant=locked.tenant)
    path = Path(locked.disk_path)
    if Instance.objects.unscoped().filter(image=locked).exists():
        locked.state = ImageState.DELETED
        locked.public = False
        locked.name = f"{locked.name[:70]}.deleted-{locked.pk}"
        locked.save(update_fields=["state", "public", "name"])
    else:
        locked.delete()
    transaction.on_commit(lambda: path.unlink(missing_ok=True))


@transaction.atomic
def image_set_public(*, actor: Actor, image: Image, public: bool) -> Image:
    """Staff share an image with every tenant (or stop sharing it); an upload keeps its owner."""
    locked = Image.objects.select_for_update().get(pk=image.pk)
    if locked.state != ImageState.ACTIVE:
        raise ServiceError("image", "state", f"image {locked.name!r} is {locked.state}, not active")
    if not public and locked.tenant_id is None:
        raise ServiceError("public", "owner", f"image {locked.name!r} belongs to no tenant: it stays public")
    if public and not locked.public:
        clash = Image.objects.filter(public=True, name=locked.name).exclude(pk=locked.pk).exists()
        if clash:
            raise ServiceError("name", "unique", f"a public image named {locked.name!r} already exists")
    if locked.public != public:
        locked.public = public
        locked.save(update_fields=["public"])
        audit_log(
            actor=actor,
            action="image.publish" if public else "image.unpublish",
            target=locked,
            tenant=locked.tenant,
        )
    return locked


def uploads_sweep(now: float | None = None) -> list[str]:
    """Undo uploads their web process left unfinished (it died mid-body): an image still uploading
    whose row and files have not changed for NUBIS_IMAGE_UPLOAD_STALE_SECONDS loses its row, file
    and claim; a staged form upload's file that old goes too. Returns the names of what it undid."""
    stale = float(settings.NUBIS_IMAGE_UPLOAD_STALE_SECONDS)
    now = time.time() if now is None else now
    undone: list[str] = []
    for image in Image.objects.filter(state=ImageState.UPLOADING):
        path = Path(image.disk_path)
        touched = [image.created.timestamp()]
        for candidate in (path, path.with_name(f".{path.name}.partial")):
            with contextlib.suppress(FileNotFoundError):
                touched.append(candidate.stat().st_mtime)
        if now - max(touched) > stale:
            image_upload_abort(image, f"no byte came for {stale:.0f} s: the upload was cut off")
            undone.append(image.name)
    directory = Path(settings.NUBIS_IMAGE_UPLOAD_DIR)
    for staged in directory.glob(".staged-*.partial") if directory.is_dir() else ():
        with contextlib.suppress(FileNotFoundError):
            if now - staged.stat().st_mtime > stale:
                staged.unlink()
                undone.append(staged.name)
    return undone
