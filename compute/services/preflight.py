"""The compute layer's own start-up check: the host's libvirt daemon answers.

Used by the compute agent before it starts (with core's database and Redis checks) and by
`manage.py preflight`; never by the web process, which does not load libvirt.
"""

from __future__ import annotations

from django.conf import settings

from compute.drivers.libvirt import daemon_version
from core import preflight
from core.preflight import CheckResult


def check_libvirt() -> CheckResult:
    """Open a read-only libvirt connection and read the daemon's and hypervisor's versions."""
    return preflight.timed(
        "libvirt", "LIBVIRT_URI", lambda: f"{daemon_version(settings.LIBVIRT_URI)} at {settings.LIBVIRT_URI}"
    )


def require_agent() -> None:
    """Exit with one clear line unless the database, Redis and libvirt all answer."""
    preflight.require([preflight.check_database, preflight.check_redis, check_libvirt])
