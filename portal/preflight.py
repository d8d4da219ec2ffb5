"""The checks a portal process runs: /readyz and `serve` and the Celery worker before they start.

The database and Redis (core.preflight), and for a compute host the stores (whether QEMU and the
containers' mapped root reach them). libvirt is the compute layer's to check
(compute.services.preflight, used by the agent and by `manage.py preflight`): the web process never
loads it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from django.conf import settings

from core import preflight
from core.preflight import CheckResult, check_database, check_redis
from portal import stores

__all__ = ["CHECKS", "DEFAULT_CHECKS", "CheckResult", "require", "run_checks"]


def check_stores() -> CheckResult:
    """QEMU must reach the image and instance stores, containers' mapped root their unpacked trees.

    A directory in the way (a checkout under /root, mode 0700) fails every instance at its first
    create; this says so before anything starts, naming the directory and the fix.
    """
    started = time.perf_counter()
    wanted = [
        ("NUBIS_IMAGE_DIR", Path(settings.NUBIS_IMAGE_DIR), stores.guest_users(containers=False)),
        ("NUBIS_INSTANCE_DIR", Path(settings.NUBIS_INSTANCE_DIR), stores.guest_users(containers=False)),
        ("NUBIS_ROOTFS_DIR", Path(settings.NUBIS_ROOTFS_DIR), stores.guest_users(qemu=False)),
    ]
    for setting, path, users in wanted:
        found = stores.unreachable(path, users)
        if found is not None:
            user, blocker = found
            detail = (
                f"{setting} {path} cannot be reached by {user.label}: {stores.describe(blocker)}; "
                f"run chmod o+x {blocker}, or set {setting} to a directory every user can enter "
                f"(e.g. {stores.SYSTEM_STORES}/{path.name})"
            )
            return CheckResult("stores", setting, False, detail, (time.perf_counter() - started) * 1000)
    who = " and ".join(u.label for u in stores.guest_users())
    places = ", ".join(str(path) for _, path, _ in wanted)
    detail = f"{places} reachable by {who}"
    return CheckResult("stores", "NUBIS_INSTANCE_DIR", True, detail, (time.perf_counter() - started) * 1000)


CHECKS: dict[str, Callable[[], CheckResult]] = {
    "database": check_database,
    "redis": check_redis,
    "stores": check_stores,
}
# What /readyz reports: the services a portal process depends on. `stores` is for a compute host
# (scripts/up asks for it by name).
DEFAULT_CHECKS = ["database", "redis"]


def run_checks(names: list[str] | None = None) -> list[CheckResult]:
    """Run the named checks (DEFAULT_CHECKS by default) in a fixed order."""
    return [CHECKS[name]() for name in (names or DEFAULT_CHECKS)]


def require(names: list[str]) -> None:
    """Exit with one clear line per failed dependency; used before a server or worker starts."""
    preflight.require(CHECKS[name] for name in names)
