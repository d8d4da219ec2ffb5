"""Build a container root filesystem (cached) and register it in the image registry.

The busybox one always; with --debian, a minimal Debian made by debootstrap where it is installed.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from compute.containers.rootfs import (
    DEBIAN_SUITE,
    INIT,
    RECIPE,
    RootfsError,
    build_busybox_rootfs,
    build_debian_rootfs,
    pack,
    verify,
)
from compute.models import Image, ImageKind


class Command(BaseCommand):
    help = "Build a root filesystem tarball with its manifest, and register it as a container image."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", help="image name (default busybox, or debian-12 with --debian)")
        parser.add_argument(
            "--debian", action="store_true", help=f"a minimal Debian {DEBIAN_SUITE} by debootstrap"
        )
        parser.add_argument("--force", action="store_true", help="rebuild even if a verified build exists")

    def handle(self, *args: Any, **options: Any) -> None:
        debian = options["debian"]
        name = options["name"] or ("debian-12" if debian else "busybox")
        recipe = f"debian-{DEBIAN_SUITE}-{RECIPE}" if debian else RECIPE
        directory = Path(settings.NUBIS_IMAGE_DIR) / f"{name}-rootfs"
        tarball, manifest_path = directory / "rootfs.tar.gz", directory / "manifest.json"
        try:
            if options["force"] or not manifest_path.exists():
                raise RootfsError("no cached build")
            verify(tarball, manifest_path)
            if json.loads(manifest_path.read_text()).get("recipe") != recipe:
                raise RootfsError("cached build is of an older recipe")
            self.stdout.write(f"using cached root filesystem {tarball}")
        except RootfsError:
            with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=settings.NUBIS_IMAGE_DIR) as tmp:
                try:
                    target = Path(tmp) / "rootfs"
                    if debian:
                        rootfs = build_debian_rootfs(target, log=self.stdout.write)
                    else:
                        rootfs = build_busybox_rootfs(target)
                    pack(rootfs, tarball, recipe)
                except (RootfsError, OSError) as exc:
                    raise CommandError(f"build {name}: {exc}") from None
            self.stdout.write(f"built root filesystem {tarball}")
        manifest = json.loads(manifest_path.read_text())
        if debian:
            version = [f"Debian {DEBIAN_SUITE} (minbase)"]
        else:
            version = subprocess.run(
                ["/bin/busybox"], capture_output=True, text=True, check=False
            ).stdout.splitlines()[0:1]
        image, _ = Image.objects.update_or_create(
            tenant=None,
            name=name,
            defaults={
                "kind": ImageKind.ROOTFS,
                "os_name": version[0][:100] if version else "busybox",
                "disk_path": str(tarball),
                "cmdline": INIT,
                "sha256": manifest["sha256"],
                "size_bytes": manifest["size_bytes"],
                "public": True,
                "tenant": None,
            },
        )
        self.stdout.write(f"registered image {image.name!r} (id {image.pk}, sha256 {image.sha256[:12]}…)")
