"""Persona cases of the staff API under /api/v1/admin/, and of the API routes added with it
(merged into routes.ROUTES)."""

from __future__ import annotations

from tests.isolation.cases import Case, const, exp, tenant_path
from tests.isolation.routes_staff import drs_pass_id, drs_placement_id, drs_recommendation_id, one_waiting
from tests.isolation.world import World

STAFF_READ = exp(401, 403, 403, 403, 403, 200, 200)
# Changing a host or a quota needs its model permission too: the harness's staff user only views.
SUPERUSER_WRITE = exp(401, 403, 403, 403, 403, 403, 200)
SUPERUSER_CREATE = exp(401, 403, 403, 403, 403, 403, 201)


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
    "api-admin-drs": [
        Case("GET", const("/api/v1/admin/drs/"), STAFF_READ),
        Case(
            "PATCH",
            const("/api/v1/admin/drs/"),
            SUPERUSER_WRITE,
            data=lambda w: {"threshold": 4},
            action="drs.settings",
        ),
    ],
    "api-admin-drs-passes": [
        Case("GET", const("/api/v1/admin/drs/passes/"), STAFF_READ),
        Case("POST", const("/api/v1/admin/drs/passes/"), SUPERUSER_CREATE, action="drs.pass"),
    ],
    "api-admin-drs-what-if": [
        Case(
            "POST",
            const("/api/v1/admin/drs/what-if/"),
            exp(401, 403, 403, 403, 403, 202, 202),
            data=lambda w: {"maintenance": ["harness-host"]},
            action="drs.what_if",
        )
    ],
    "api-admin-drs-pass": [Case("GET", lambda w: f"/api/v1/admin/drs/passes/{drs_pass_id(w)}/", STAFF_READ)],
    "api-admin-drs-pass-apply": [
        Case(
            "POST",
            lambda w: f"/api/v1/admin/drs/passes/{drs_pass_id(w)}/apply/",
            SUPERUSER_WRITE,
            action="drs.apply_all",
        )
    ],
    "api-admin-drs-recommendations": [Case("GET", const("/api/v1/admin/drs/recommendations/"), STAFF_READ)],
    "api-admin-drs-recommendation-apply": [
        Case(
            "POST",
            lambda w: f"/api/v1/admin/drs/recommendations/{drs_recommendation_id(w)}/apply/",
            SUPERUSER_WRITE,
            action="drs.apply",
        )
    ],
    "api-admin-drs-placements": [Case("GET", const("/api/v1/admin/drs/placements/"), STAFF_READ)],
    "api-admin-drs-placement-apply": [
        Case(
            "POST",
            lambda w: f"/api/v1/admin/drs/placements/{drs_placement_id(w)}/apply/",
            SUPERUSER_WRITE,
            action="drs.place",
        )
    ],
    "api-admin-drs-placement-reject": [
        Case(
            "POST",
            lambda w: f"/api/v1/admin/drs/placements/{drs_placement_id(w)}/reject/",
            SUPERUSER_WRITE,
            data=lambda w: {"reason": "not here"},
            action="drs.place_reject",
        )
    ],
    "api-admin-drs-placements-apply": [
        Case(
            "POST",
            one_waiting("/api/v1/admin/drs/placements/apply/"),
            SUPERUSER_WRITE,
            action="drs.place",
        )
    ],
    "api-admin-instance-pin": [
        Case(
            "PUT",
            lambda w: f"/api/v1/admin/instances/{w.vms['a-vm'].uuid}/drs-pin/",
            SUPERUSER_WRITE,
            data=lambda w: {"pinned": True},
            action="instance.drs_pin",
        )
    ],
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
