"""Build a guest image from Debian packages (cached) and register it in the image registry.

Without options: the tiny test guest (kernel + busybox initramfs). ``--debian``: the Debian 12 cloud
image (debootstrap, cloud-init, a bootable qcow2 disk).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from compute.guest.builder import BuildError, build_guest_image
from compute.guest.debian import DEBIAN_NAME, build_debian_image
from compute.models import Image
from compute.services.images import image_register, image_register_debian


class Command(BaseCommand):
    help = (
        "Build a tiny bootable Linux guest (Debian kernel + busybox initramfs + ext4 disk) and register "
        "it; with --debian, the Debian 12 cloud image (cloud-init, SSH, qemu-guest-agent)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--debian", action="store_true", help="build the Debian 12 cloud image (about 3 minutes)"
        )
        parser.add_argument(
            "--name", default=None, help=f"image name (default nubis-tiny, or {DEBIAN_NAME} with --debian)"
        )
        parser.add_argument("--force", action="store_true", help="rebuild even if a cached build exists")
        parser.add_argument("--dir", default=None, help="image directory (default NUBIS_IMAGE_DIR)")

    def handle(self, *args: Any, **options: Any) -> None:
        directory = Path(options["dir"] or settings.NUBIS_IMAGE_DIR)
        image: Image
        try:
            if options["debian"]:
                debian = build_debian_image(
                    directory, options["name"] or DEBIAN_NAME, force=options["force"], log=self.stdout.write
                )
                image = image_register_debian(debian)
            else:
                built = build_guest_image(
                    directory, options["name"] or "nubis-tiny", force=options["force"], log=self.stdout.write
                )
                image = image_register(built)
        except BuildError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"registered image {image.name!r} (id {image.pk}, {image.kind}, sha256 {image.sha256[:12]}…)"
        )
