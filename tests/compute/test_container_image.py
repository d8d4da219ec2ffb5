"""The container image: a busybox root filesystem tarball whose manifest is checked, in the registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import call_command

from compute.containers.rootfs import RootfsError, sha256_of, verify
from compute.models import Image, ImageKind
from compute.services.images import ImageCorrupt, verify_image
from compute.services.instances import instance_create
from core.errors import ServiceError
from security.audit import Actor
from tests.factories import make_tenant

pytestmark = pytest.mark.django_db


def test_build_container_image_registers_a_verified_rootfs(settings, tmp_path) -> None:
    settings.NUBIS_IMAGE_DIR = tmp_path
    call_command("build_container_image")
    image = Image.objects.get(name="busybox")
    tarball = Path(image.disk_path)
    assert image.kind == ImageKind.ROOTFS
    assert image.sha256 == sha256_of(tarball)
    manifest = json.loads((tarball.parent / "manifest.json").read_text())
    assert manifest["sha256"] == image.sha256
    verify_image(image)
    # Built again: the cached, verified build is reused, so the registry entry is unchanged.
    call_command("build_container_image")
    assert Image.objects.get(name="busybox").sha256 == image.sha256


def test_a_tarball_that_no_longer_matches_is_refused(settings, tmp_path) -> None:
    settings.NUBIS_IMAGE_DIR = tmp_path
    call_command("build_container_image")
    image = Image.objects.get(name="busybox")
    tarball = Path(image.disk_path)
    with tarball.open("ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(RootfsError, match="does not match the manifest"):
        verify(tarball, tarball.parent / "manifest.json")
    with pytest.raises(ImageCorrupt, match="checksum mismatch"):
        verify_image(image)


def test_a_rootfs_cannot_boot_a_vm(settings, tmp_path) -> None:
    from compute.models import Flavor

    settings.NUBIS_IMAGE_DIR = tmp_path
    call_command("build_container_image")
    Flavor.objects.create(name="f", vcpus=1, ram_mib=128, disk_gib=1)
    with pytest.raises(ServiceError, match="container root filesystem") as exc:
        instance_create(
            actor=Actor.system("t"), tenant=make_tenant("t"), name="x", flavor="f", image="busybox"
        )
    assert exc.value.field == "image"
