"""Persona cases of the staff API under /api/v1/admin/, and of the API routes added with it
(merged into routes.ROUTES)."""

from __future__ import annotations

from tests.isolation.cases import Case, const, exp, tenant_path
from tests.isolation.world import World

STAFF_READ = exp(401, 403, 403, 403, 403, 200, 200)
# Changing a host or a quota needs its model permission too: the harness's staff user only views.
SUPERUSER_WRITE = exp(401, 403, 403, 403, 403, 403, 200)


def _host(w: World) -> str:
    return f"/api/v1/admin/hosts/{w.vms['a-vm'].host_id}/maintenance/"


_snapshots, _snapshots_b = tenant_path("snapshots/")

ROUTES: dict[str, list[Case]] = {
    "api-tenant-snapshots": [
        Case("GET", _snapshots, exp(401, 200, 200, 200, 404, 404, 404), b_path=_snapshots_b, lists=True)
    ],
    "api-admin-hosts": [Case("GET", const("/api/v1/admin/hosts/"), STAFF_READ)],
    "api-admin-host-maintenance": [
        Case("POST", _host, SUPERUSER_WRITE, data=lambda w: {"on": True}, action="host.maintenance")
    ],
    "api-admin-queue": [Case("GET", const("/api/v1/admin/queue/"), STAFF_READ)],
    "api-admin-quotas": [Case("GET", const("/api/v1/admin/quotas/"), STAFF_READ)],
    "api-admin-quota": [
        Case("GET", lambda w: f"/api/v1/admin/tenants/{w.a.slug}/quota/", STAFF_READ),
        Case(
            "PATCH",
            lambda w: f"/api/v1/admin/tenants/{w.a.slug}/quota/",
            SUPERUSER_WRITE,
            data=lambda w: {"limits": {"vcpus": 40}, "max_priority": 2},
            action="quota.update",
        ),
    ],
}
