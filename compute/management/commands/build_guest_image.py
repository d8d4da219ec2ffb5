"""Build the tiny test guest from Debian packages (cached) and register it in the image registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from compute.guest.builder import BuildError, build_guest_image
from compute.services.images import image_register


class Command(BaseCommand):
    help = (
        "Build a tiny bootable Linux guest (Debian kernel + busybox initramfs + ext4 disk) and register it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", default="nubis-tiny", help="image name (default nubis-tiny)")
        parser.add_argument("--force", action="store_true", help="rebuild even if a cached build exists")
        parser.add_argument("--dir", default=None, help="image directory (default NUBIS_IMAGE_DIR)")

    def handle(self, *args: Any, **options: Any) -> None:
        directory = Path(options["dir"] or settings.NUBIS_IMAGE_DIR)
        try:
            built = build_guest_image(
                directory, options["name"], force=options["force"], log=self.stdout.write
            )
        except BuildError as exc:
            raise CommandError(str(exc)) from None
        image = image_register(built)
        self.stdout.write(f"registered image {image.name!r} (id {image.pk}, sha256 {image.sha256[:12]}…)")
