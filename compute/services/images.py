"""The image registry: register built images and verify their checksums before use."""

from __future__ import annotations

from compute.guest.builder import GuestImage, files_sha256, files_stamp
from compute.guest.debian import BOOT_MODE, DebianImage
from compute.models import DiskFormat, Image, ImageKind

# (path, size, mtime) of files already verified in this process, so large images are hashed once.
_verified: dict[tuple[str, ...], str] = {}


class ImageCorrupt(Exception):
    """An image's files do not match its recorded checksum."""


def _stamp(paths: list[str]) -> tuple[str, ...]:
    try:
        return files_stamp(paths)
    except OSError as exc:
        raise ImageCorrupt(f"image file {exc.filename} is missing") from None


def verify_image(image: Image) -> None:
    """Raise ImageCorrupt unless the image's files hash to its recorded SHA-256."""
    paths = image.files()
    stamp = _stamp(paths)
    if _verified.get(stamp) == image.sha256:
        return
    actual, _ = files_sha256(paths)
    if actual != image.sha256:
        raise ImageCorrupt(
            f"image {image.name} checksum mismatch: expected {image.sha256[:16]}…, got {actual[:16]}…"
        )
    _verified[stamp] = image.sha256


def image_register(built: GuestImage) -> Image:
    """Record a built guest image as a public image (updating it if rebuilt)."""
    image, _ = Image.objects.update_or_create(
        tenant=None,
        name=built.name,
        defaults={
            "kind": ImageKind.KERNEL,
            "os_name": built.os_name,
            "kernel_path": built.kernel,
            "initrd_path": built.initrd,
            "disk_path": built.disk,
            "cmdline": built.cmdline,
            "sha256": built.sha256,
            "size_bytes": built.size_bytes,
            "public": True,
            "tenant": None,
        },
    )
    return image


def image_register_debian(built: DebianImage, boot_mode: str = BOOT_MODE) -> Image:
    """Record the built Debian cloud image as a public image (updating it if rebuilt).

    ``boot_mode`` "disk": it boots from its disk through its own boot loader, as an uploaded image
    does; "kernel": QEMU loads its kernel and initramfs directly (the checksum then covers them too).
    """
    kernel_boot = boot_mode == "kernel"
    image, _ = Image.objects.update_or_create(
        tenant=None,
        name=built.name,
        defaults={
            "kind": ImageKind.KERNEL if kernel_boot else ImageKind.DISK,
            "os_name": built.os_name,
            "kernel_path": built.kernel if kernel_boot else "",
            "initrd_path": built.initrd if kernel_boot else "",
            "disk_path": built.disk,
            "cmdline": built.cmdline if kernel_boot else "",
            "sha256": built.sha256_kernel_boot if kernel_boot else built.sha256,
            "size_bytes": built.size_bytes,
            "disk_format": DiskFormat.QCOW2,
            "virtual_size_bytes": built.virtual_size_bytes,
            "cloud_init": True,
            "login_user": built.login_user,
            "public": True,
        },
    )
    return image
