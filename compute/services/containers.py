"""Agent-side work for container instances: their root filesystem, config.json and live limits."""

from __future__ import annotations

import shlex
from functools import lru_cache
from pathlib import Path
from typing import Any

from django.conf import settings

from compute.containers.oci_spec import USERNS_SIZE, oci_config
from compute.containers.rootfs import INIT, RootfsError, unpack, verify
from compute.drivers.base import DriverError
from compute.drivers.container import ContainerDriver
from compute.drivers.oci import CGROUP_ROOT
from compute.models import Image, Instance

CPU_PERIOD = 100_000  # microseconds; the quota is a share of it
UID_BASE = 200_000  # first host uid given to containers; each tenant gets its own 65536-id range


@lru_cache(maxsize=1)
def container_driver() -> ContainerDriver:
    return ContainerDriver(Path(settings.NUBIS_INSTANCE_DIR), settings.NUBIS_DOMAIN_PREFIX)


def uid_base_for(tenant_id: int) -> int:
    """Host uid that is root in this tenant's containers: tenants never share an id range."""
    return UID_BASE + USERNS_SIZE * (tenant_id % 30_000)


# (path, size, mtime, sha256) of tarballs already verified by this process: hashed again only
# when the file changes.
_verified: set[tuple[str, int, int, str]] = set()


def verify_rootfs(image: Image) -> None:
    """The tarball must match the manifest beside it and the checksum the registry recorded."""
    tarball = Path(image.disk_path)
    manifest = tarball.parent / "manifest.json"
    try:
        st = tarball.stat()
    except OSError as exc:
        raise DriverError(f"image {image.name}: {tarball}: {exc.strerror}") from None
    stamp = (str(tarball), st.st_size, st.st_mtime_ns, image.sha256)
    if stamp in _verified:
        return
    try:
        if manifest.exists():
            verify(tarball, manifest)
        verify(tarball, {"sha256": image.sha256, "size_bytes": image.size_bytes})
    except RootfsError as exc:
        raise DriverError(f"image {image.name}: {exc}") from None
    _verified.add(stamp)


def prepared_rootfs(instance: Instance) -> Path:
    """The image's tree, unpacked once per image and uid range, owned by the tenant's mapped root."""
    image = instance.image
    userns = settings.NUBIS_CONTAINER_USERNS
    base = uid_base_for(instance.tenant_id) if userns else 0
    root = Path(settings.NUBIS_ROOTFS_DIR)
    dest = root / f"{image.sha256[:20]}-{base}"
    # Checked on every create, not only when unpacked: the tarball is the image of record.
    verify_rootfs(image)
    if dest.exists():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # the mapped root must be able to reach its tree
    try:
        return unpack(Path(image.disk_path), dest, base, base)
    except RootfsError as exc:
        raise DriverError(str(exc)) from None


def blkio_weight_supported() -> bool:
    """runc fails when asked for a weight the host's I/O scheduler does not offer (no BFQ here)."""
    return any(
        (CGROUP_ROOT / p).exists() for p in ("blkio/blkio.weight", "blkio/blkio.bfq.weight", "io.weight")
    )


def limits_of(instance: Instance) -> dict[str, Any]:
    """The cgroup limits an instance's flavor and its current memory give its container."""
    flavor = instance.flavor
    return {
        "memory_bytes": instance.current_ram_mib << 20,
        "swap_bytes": flavor.swap_mib << 20,
        "cpu_quota": flavor.cpu_cap_pct * CPU_PERIOD // 100,
        "cpu_period": CPU_PERIOD,
        "cpu_shares": 1024 * instance.vcpus,
        "pids_max": flavor.pids_max,
        "blkio_weight": flavor.blkio_weight if blkio_weight_supported() else None,
    }


def container_config(instance: Instance, rootfs: Path) -> dict[str, Any]:
    """config.json of the instance's container; runc gives it a fresh network namespace (the
    port is plugged in once it runs: see compute.services.ports)."""
    userns = settings.NUBIS_CONTAINER_USERNS
    return oci_config(
        name=instance.domain_name,
        hostname=instance.name,
        args=shlex.split(instance.image.cmdline or INIT),
        rootfs=str(rootfs),
        user_namespace=userns,
        uid_base=uid_base_for(instance.tenant_id),
        **limits_of(instance),
    )
