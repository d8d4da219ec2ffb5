"""Agent-side work for container instances: their root filesystem, config.json and live limits."""

from __future__ import annotations

import logging
import re
import shlex
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from django.conf import settings

from compute.containers.oci_spec import USERNS_SIZE, oci_config
from compute.containers.rootfs import (
    INIT,
    RootfsError,
    file_stamp,
    is_home,
    make_dirs,
    remove_trees,
    retire,
    tree_lock,
    trees,
    unpack,
    verify_image_files,
)
from compute.drivers.base import ContainerDriver, DriverError
from compute.drivers.container import RuncDriver
from compute.drivers.oci import OciDriver
from compute.models import Image, Instance, InstanceKind, InstanceState
from core.redis import redis_client

logger = logging.getLogger(__name__)

CPU_PERIOD = 100_000  # microseconds; the quota is a share of it
UID_BASE = 200_000  # first host uid given to containers; each tenant gets its own 65536-id range


@lru_cache(maxsize=1)
def container_driver() -> ContainerDriver:
    return RuncDriver(
        Path(settings.NUBIS_INSTANCE_DIR),
        settings.NUBIS_DOMAIN_PREFIX,
        OciDriver(cgroup_parent=settings.NUBIS_CGROUP_PARENT),
    )


def uid_base_for(tenant_id: int) -> int:
    """Host uid that is root in this tenant's containers: tenants never share an id range."""
    return UID_BASE + USERNS_SIZE * (tenant_id % 30_000)


# (path, size, mtime, sha256) of tarballs already verified by this process: hashed again only
# when the file changes.
_verified: set[tuple[str, int, int, str]] = set()


def verify_rootfs(image: Image) -> None:
    """The tarball must match the manifest beside it and the checksum the registry recorded."""
    tarball = Path(image.disk_path)
    try:
        size, mtime_ns = file_stamp(tarball)
    except OSError as exc:
        raise DriverError(f"image {image.name}: {tarball}: {exc.strerror}") from None
    stamp = (str(tarball), size, mtime_ns, image.sha256)
    if stamp in _verified:
        return
    try:
        verify_image_files(tarball, image.sha256, image.size_bytes)
    except RootfsError as exc:
        raise DriverError(f"image {image.name}: {exc}") from None
    _verified.add(stamp)


def rootfs_home() -> Path:
    """This deployment's unpacked trees: ``NUBIS_ROOTFS_DIR/<domain prefix>``.

    The prefix already says what a deployment owns on a host (its domains, containers and
    namespaces). Deployments that share NUBIS_ROOTFS_DIR (the test runs share
    /var/cache/nubis/images) each keep their trees apart, and each collects only its own: tenant
    ids, and so uid ranges and tree names, repeat from one deployment to the next.
    """
    prefix = re.sub(r"[^A-Za-z0-9_.-]", "_", settings.NUBIS_DOMAIN_PREFIX).lstrip(".") or "nubis"
    return Path(settings.NUBIS_ROOTFS_DIR) / prefix


def rootfs_name(sha256: str, uid_base: int) -> str:
    """A tree's name in rootfs_home(): its image and the uid range that owns it."""
    return f"{sha256[:20]}-{uid_base}"


def prepared_rootfs(instance: Instance) -> Path:
    """The image's tree, unpacked once per image and uid range, owned by the tenant's mapped root.

    Picked or unpacked under the home's shared lock: the collector (rootfs_collect) takes it
    exclusively and only then reads which instances exist, so it either ran before this and the
    tree is unpacked again here, or it runs after and sees this instance's row (committed before
    its create task ran) using the tree.
    """
    image = instance.image
    userns = settings.NUBIS_CONTAINER_USERNS
    base = uid_base_for(instance.tenant_id) if userns else 0
    root = Path(settings.NUBIS_ROOTFS_DIR)
    home = rootfs_home()
    dest = home / rootfs_name(image.sha256, base)
    # Checked on every create, not only when unpacked: the tarball is the image of record.
    verify_rootfs(image)
    make_dirs(root, home)
    try:
        with tree_lock(home, exclusive=False):
            return unpack(Path(image.disk_path), dest, base, base)
    except (RootfsError, OSError) as exc:
        raise DriverError(str(exc)) from None


def _unused_key(host_name: str, home: Path, name: str) -> str:
    return f"nubis:rootfs-unused:{host_name}:{home.name}:{name}"


def rootfs_collect(host_name: str, grace: int | None = None) -> list[str]:
    """Remove this deployment's unpacked trees that no instance has used for ``grace`` seconds.

    A tree is in use while any container instance of this deployment (on any host: agents on one
    machine share the directory) is not deleted; stopped ones keep theirs for their next start.
    When a tree was first seen unused is kept in Redis, and forgotten when it is used again.
    Returns the names removed. See prepared_rootfs for why a create racing this never fails.
    """
    grace = settings.NUBIS_ROOTFS_GRACE if grace is None else grace
    home = rootfs_home()
    if not is_home(home):
        return []
    client = redis_client()
    removed: list[str] = []
    trash: list[Path] = []
    with tree_lock(home, exclusive=True):
        used: set[str] = set()
        rows = (
            Instance.objects.unscoped()
            .filter(kind=InstanceKind.CONTAINER)
            .exclude(state=InstanceState.DELETED)
            .values_list("tenant_id", "image__sha256")
        )
        for tenant_id, sha256 in rows:
            # Both variants: a container made before NUBIS_CONTAINER_USERNS changed keeps its tree.
            used |= {rootfs_name(sha256, uid_base_for(tenant_id)), rootfs_name(sha256, 0)}
        now = time.time()
        in_use: list[str] = []
        for name, is_dir in trees(home):
            if name.startswith("."):
                # A partial unpack or a tree being deleted: no unpack runs while the lock is ours,
                # so it is what an agent killed in the middle left behind.
                if is_dir:
                    trash.append(home / name)
                continue
            if name in used:
                in_use.append(_unused_key(host_name, home, name))
                continue
            key = _unused_key(host_name, home, name)
            first: bytes | None = client.get(key)  # type: ignore[assignment]
            if first is None:
                client.set(key, now, ex=max(7 * 86400, 2 * grace))
                if grace > 0:
                    continue
            elif now - float(first) < grace:
                continue
            # Out of sight at once (renamed under the lock); deleted after it is released.
            trash.append(retire(home, name))
            client.delete(key)
            removed.append(name)
        if in_use:
            client.delete(*in_use)  # used again: its grace starts over when it is next unused
    remove_trees(trash)
    if removed:
        logger.info("rootfs: removed unused trees %s from %s", removed, home)
    return removed


def limits_of(instance: Instance) -> dict[str, Any]:
    """The cgroup limits an instance's flavor and its current memory and CPU give its container."""
    flavor = instance.flavor
    return {
        "memory_bytes": instance.current_ram_mib << 20,
        "swap_bytes": flavor.swap_mib << 20,
        "cpu_quota": instance.cpu_grant_pct * CPU_PERIOD // 100,  # the flavor's cap, unless dynamic
        "cpu_period": CPU_PERIOD,
        "cpu_shares": 1024 * instance.vcpus,
        "pids_max": flavor.pids_max,
        "blkio_weight": flavor.blkio_weight if container_driver().blkio_weight_supported() else None,
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
        cgroup_parent=settings.NUBIS_CGROUP_PARENT,
        **limits_of(instance),
    )
