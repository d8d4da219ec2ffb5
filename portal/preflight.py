"""Checks that the services Nubis depends on answer: used by /readyz and before start-up."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection

from portal import config, stores


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one dependency check."""

    name: str
    setting: str
    ok: bool
    detail: str
    millis: float

    def line(self) -> str:
        status = "ok" if self.ok else "FAIL"
        return f"{self.name}: {status} ({self.detail}; {self.millis:.0f} ms)"


def _timed(name: str, setting: str, probe: Callable[[], str]) -> CheckResult:
    started = time.perf_counter()
    try:
        detail = probe()
        ok = True
    except Exception as exc:  # any failure of a dependency is reported, not raised
        detail = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
        ok = False
    return CheckResult(name, setting, ok, detail, (time.perf_counter() - started) * 1000)


def check_database() -> CheckResult:
    """Run a trivial query on the default database."""

    def probe() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        name = settings.DATABASES["default"]["NAME"]
        return f"{connection.vendor} {name}"

    return _timed("database", "DATABASE_URL", probe)


def check_redis() -> CheckResult:
    """PING the Redis that Celery, Channels and the cache share."""

    def probe() -> str:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
            info: dict[str, Any] = client.info("server")  # type: ignore[assignment]
            version = info.get("redis_version", "?")
        finally:
            client.close()
        return f"redis {version} at {config.redact(settings.REDIS_URL)}"

    return _timed("redis", "REDIS_URL", probe)


def check_libvirt() -> CheckResult:
    """Open a read-only libvirt connection and read the hypervisor's version."""

    def probe() -> str:
        import libvirt

        conn = libvirt.openReadOnly(settings.LIBVIRT_URI)
        try:
            version = conn.getLibVersion()
            hv = conn.getType()
        finally:
            conn.close()
        major, minor, micro = version // 1_000_000, (version // 1000) % 1000, version % 1000
        return f"libvirt {major}.{minor}.{micro} {hv} at {settings.LIBVIRT_URI}"

    return _timed("libvirt", "LIBVIRT_URI", probe)


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
    "libvirt": check_libvirt,
    "stores": check_stores,
}
# What /readyz and a bare `manage.py preflight` report: the services a portal process depends on.
# `stores` is for a compute host (scripts/up asks for it by name).
DEFAULT_CHECKS = ["database", "redis", "libvirt"]


def run_checks(names: list[str] | None = None) -> list[CheckResult]:
    """Run the named checks (DEFAULT_CHECKS by default) in a fixed order."""
    return [CHECKS[name]() for name in (names or DEFAULT_CHECKS)]


def require(names: list[str]) -> None:
    """Exit with one clear line per failed dependency; used before a server or worker starts."""
    failures = [result for result in run_checks(names) if not result.ok]
    if failures:
        first = failures[0]
        others = "".join(f"; also {f.setting}: {f.detail}" for f in failures[1:])
        config.fail(first.setting, f"cannot reach the {first.name}: {first.detail}{others}")
