"""The persona table: for every route, what each persona must get.

Every URL pattern, API route, websocket route and admin view must appear here (admin views by
the per-model rules at the bottom); test_harness fails on any route that does not.
"""

from __future__ import annotations

from tests.isolation.cases import (
    API_OWNER_WRITE,
    API_TENANT_READ,
    EVERYONE_200,
    INSTANCE,
    MEMBERSHIP,
    NETWORK,
    OPERATION,
    SECURITY_GROUP,
    SECURITY_RULE,
    SERVER_GROUP,
    SNAPSHOT,
    TOKEN,
    UI_OWNER_POST,
    UI_TENANT_READ,
    Case,
    const,
    exp,
    object_case,
    tenant_path,
)
from tests.isolation.routes_admin_api import ROUTES as _ADMIN_API
from tests.isolation.routes_floating import ROUTES as _FLOATING
from tests.isolation.routes_floating_ui import ROUTES as _FLOATING_UI
from tests.isolation.routes_images import ROUTES as _IMAGES
from tests.isolation.routes_images import UPLOAD_CASE as _IMAGE_UPLOAD
from tests.isolation.routes_instances_ui import ROUTES as _INSTANCES_UI
from tests.isolation.routes_keypairs import ROUTES as _KEYPAIRS
from tests.isolation.routes_networks_ui import ROUTES as _NETWORKS_UI
from tests.isolation.routes_staff import ROUTES as _STAFF
from tests.isolation.routes_volumes import ROUTES as _VOLUMES
from tests.isolation.world import PERSONAS as PERSONAS_ALL
from tests.isolation.world import World

__all__ = ["ADMIN_MODELS", "ADMIN_SITE", "ROUTES", "WEBSOCKETS", "Case", "all_http_cases"]

_api_tenant, _api_tenant_b = tenant_path()
_api_quota, _api_quota_b = tenant_path("quota/")
_api_members, _api_members_b = tenant_path("members/")
_api_tokens, _api_tokens_b = tenant_path("tokens/")
_api_audit, _api_audit_b = tenant_path("audit/")
_ui_home, _ui_home_b = tenant_path(api=False)
_ui_quota, _ui_quota_b = tenant_path("quota/", api=False)
_ui_settings, _ui_settings_b = tenant_path("settings/", api=False)
_ui_member_add, _ui_member_add_b = tenant_path("members/add/", api=False)
_ui_token_create, _ui_token_create_b = tenant_path("tokens/create/", api=False)
_ui_audit, _ui_audit_b = tenant_path("audit/", api=False)

ROUTES: dict[str, list[Case]] = {
    # --- portal shell ---------------------------------------------------------------------
    "dashboard": [Case("GET", const("/"), exp(302, 302, 302, 302, 302, 200, 200))],
    "login": [
        Case("GET", const("/login/"), exp(200, 302, 302, 302, 302, 302, 302)),
        # Wrong credentials: the login is refused (audited as such); logged-in users are sent on.
        Case(
            "POST",
            const("/login/"),
            exp(200, 302, 302, 302, 302, 302, 302),
            json=False,
            data=lambda w: {"username": "x", "password": "y"},
        ),
    ],
    "logout": [Case("POST", const("/logout/"), exp(302, 302, 302, 302, 302, 302, 302), json=False)],
    "healthz": [Case("GET", const("/healthz"), EVERYONE_200)],
    "readyz": [Case("GET", const("/readyz"), EVERYONE_200)],
    "api-root": [Case("GET", const("/api/v1/"), EVERYONE_200)],
    "api-schema": [Case("GET", const("/api/schema/"), EVERYONE_200)],
    "api-docs": [Case("GET", const("/api/docs/"), EVERYONE_200)],
    # --- tenants API ----------------------------------------------------------------------
    "api-tenants": [
        Case("GET", const("/api/v1/tenants/"), exp(401, 200, 200, 200, 200, 200, 200), lists=True)
    ],
    "api-tenant": [Case("GET", _api_tenant, API_TENANT_READ, b_path=_api_tenant_b)],
    "api-quota": [Case("GET", _api_quota, API_TENANT_READ, b_path=_api_quota_b)],
    "api-members": [
        Case("GET", _api_members, API_TENANT_READ, b_path=_api_members_b, lists=True),
        Case(
            "POST",
            _api_members,
            exp(401, 403, 403, 201, 404, 404, 404),
            b_path=_api_members_b,
            data=lambda w: {"username": w.newcomer.username, "role": "viewer"},
            action="member.add",
        ),
    ],
    "api-member": [
        object_case("GET", API_TENANT_READ, MEMBERSHIP, "extra", guessed=False),
        object_case(
            "PATCH",
            API_OWNER_WRITE,
            MEMBERSHIP,
            "extra",
            data=lambda w: {"role": "viewer"},
            action="member.role",
            guessed=False,
        ),
        object_case(
            "DELETE",
            exp(401, 403, 403, 204, 404, 404, 404),
            MEMBERSHIP,
            "extra",
            action="member.remove",
            guessed=False,
        ),
    ],
    "api-tokens": [
        Case("GET", _api_tokens, exp(401, 403, 200, 200, 404, 404, 404), b_path=_api_tokens_b, lists=True),
        Case(
            "POST",
            _api_tokens,
            exp(401, 403, 201, 201, 404, 404, 404),
            b_path=_api_tokens_b,
            data=lambda w: {"name": "automation", "role": "viewer"},
            action="token.create",
        ),
    ],
    "api-token": [
        object_case("GET", exp(401, 403, 200, 200, 404, 404, 404), TOKEN, "token", guessed=False),
        object_case(
            "DELETE",
            exp(401, 403, 200, 200, 404, 404, 404),
            TOKEN,
            "token",
            action="token.revoke",
            guessed=False,
        ),
    ],
    "api-audit": [
        Case("GET", _api_audit, exp(401, 403, 403, 200, 404, 404, 404), b_path=_api_audit_b, lists=True)
    ],
    "api-admin-tenants": [
        Case("GET", const("/api/v1/admin/tenants/"), exp(401, 403, 403, 403, 403, 200, 200)),
        Case(
            "POST",
            const("/api/v1/admin/tenants/"),
            exp(401, 403, 403, 403, 403, 201, 201),
            data=lambda w: {"name": "Tenant C", "slug": "tenant-c"},
            action="tenant.create",
        ),
    ],
    # --- tenant pages ---------------------------------------------------------------------
    "tenant-home": [Case("GET", _ui_home, UI_TENANT_READ, b_path=_ui_home_b, lists=True)],
    "tenant-quota": [Case("GET", _ui_quota, UI_TENANT_READ, b_path=_ui_quota_b, lists=True)],
    "tenant-settings": [Case("GET", _ui_settings, UI_TENANT_READ, b_path=_ui_settings_b, lists=True)],
    "tenant-member-add": [
        Case(
            "POST",
            _ui_member_add,
            UI_OWNER_POST,
            b_path=_ui_member_add_b,
            json=False,
            data=lambda w: {"username": w.newcomer.username, "role": "member"},
            action="member.add",
        ),
    ],
    "tenant-member-role": [
        object_case(
            "POST",
            UI_OWNER_POST,
            MEMBERSHIP,
            "extra",
            "role/",
            api=False,
            data=lambda w: {"role": "viewer"},
            action="member.role",
            guessed=False,
        ),
    ],
    "tenant-member-remove": [
        object_case(
            "POST",
            UI_OWNER_POST,
            MEMBERSHIP,
            "extra",
            "remove/",
            api=False,
            action="member.remove",
            guessed=False,
        ),
    ],
    "tenant-token-create": [
        Case(
            "POST",
            _ui_token_create,
            exp(302, 403, 201, 201, 404, 404, 404),
            b_path=_ui_token_create_b,
            json=False,
            data=lambda w: {"name": "ui token", "role": "viewer"},
            action="token.create",
        ),
    ],
    "tenant-token-revoke": [
        object_case(
            "POST",
            exp(302, 403, 302, 302, 404, 404, 404),
            TOKEN,
            "token",
            "revoke/",
            api=False,
            action="token.revoke",
            guessed=False,
        ),
    ],
    "instance-console": [
        object_case("GET", exp(302, 403, 200, 200, 404, 404, 404), INSTANCE, "vm", "console/", api=False),
    ],
    "tenant-audit": [
        Case("GET", _ui_audit, exp(302, 403, 403, 200, 404, 404, 404), b_path=_ui_audit_b, lists=True)
    ],
}


API_MEMBER_ACT: dict[str, int | str] = exp(401, 403, 202, 202, 404, 404, 404)
API_MEMBER_CREATE: dict[str, int | str] = exp(401, 403, 201, 201, 404, 404, 404)
API_MEMBER_OK: dict[str, int | str] = exp(401, 403, 200, 200, 404, 404, 404)
API_MEMBER_GONE: dict[str, int | str] = exp(401, 403, 204, 204, 404, 404, 404)
API_MEMBER_CONFLICT: dict[str, int | str] = exp(401, 403, 409, 409, 404, 404, 404)
API_MEMBER_READ: dict[str, int | str] = exp(401, 403, 200, 200, 404, 404, 404)
# Read by the host's agent (compute.services.host_rpc): the harness host has none, so members get
# as far as asking it, and a 503 that names the host.
API_MEMBER_AGENT: dict[str, int | str] = exp(401, 403, 503, 503, 404, 404, 404)
# Moving an instance between hosts: staff with compute.change_host only (the harness's staff user
# only views); the harness's host is a lone host (no address), so the superuser's move is refused.
API_STAFF_MOVE: dict[str, int | str] = exp(401, 403, 403, 403, 404, 403, 409)
_api_flavors, _api_flavors_b = tenant_path("flavors/")
_api_images, _api_images_b = tenant_path("images/")
_api_instances, _api_instances_b = tenant_path("instances/")
_api_operations, _api_operations_b = tenant_path("operations/")
_api_networks, _api_networks_b = tenant_path("networks/")
_api_groups, _api_groups_b = tenant_path("security-groups/")
_api_sgroups, _api_sgroups_b = tenant_path("server-groups/")
_api_queue, _api_queue_b = tenant_path("queue/")


# A snapshot's URL goes through its instance's: a-snap is under a-vm, b-snap under b-vm.
_IN_VM = (INSTANCE, "vm")

ROUTES.update(
    {
        "api-flavors": [Case("GET", _api_flavors, API_TENANT_READ, b_path=_api_flavors_b, lists=True)],
        "api-images": [
            Case("GET", _api_images, API_TENANT_READ, b_path=_api_images_b, lists=True),
            _IMAGE_UPLOAD,
        ],
        "api-instances": [
            Case("GET", _api_instances, API_TENANT_READ, b_path=_api_instances_b, lists=True),
            Case(
                "POST",
                _api_instances,
                API_MEMBER_ACT,
                b_path=_api_instances_b,
                action="instance.create",
                data=lambda w: {"name": "new-vm", "flavor": "h.small", "image": "h-image"},
            ),
        ],
        "api-instance": [
            object_case("GET", API_TENANT_READ, INSTANCE, "vm"),
            object_case("DELETE", API_MEMBER_ACT, INSTANCE, "vm", action="instance.delete"),
        ],
        "api-instance-start": [
            object_case("POST", API_MEMBER_ACT, INSTANCE, "off", "start/", action="instance.start")
        ],
        "api-instance-stop": [
            object_case("POST", API_MEMBER_ACT, INSTANCE, "vm", "stop/", action="instance.stop")
        ],
        "api-instance-reboot": [
            object_case("POST", API_MEMBER_ACT, INSTANCE, "vm", "reboot/", action="instance.reboot")
        ],
        "api-instance-resize": [
            object_case(
                "POST",
                API_MEMBER_ACT,
                INSTANCE,
                "vm",
                "resize/",
                action="instance.memory",
                data=lambda w: {"memory_mib": 96},
            ),
        ],
        "api-instance-migrate": [
            object_case("POST", API_STAFF_MOVE, INSTANCE, "vm", "migrate/", data=lambda w: {"host": ""})
        ],
        "api-instance-vnc": [
            object_case("POST", API_MEMBER_READ, INSTANCE, "vm", "console/vnc/", action="instance.console")
        ],
        "api-instance-serial": [object_case("GET", API_MEMBER_AGENT, INSTANCE, "vm", "console/serial/")],
        "api-instance-terminal": [
            object_case(
                "POST", API_MEMBER_READ, INSTANCE, "vm", "console/terminal/", action="instance.console"
            )
        ],
        "api-snapshots": [
            object_case("GET", API_TENANT_READ, INSTANCE, "vm", "snapshots/", lists=True),
            object_case(
                "POST",
                API_MEMBER_ACT,
                INSTANCE,
                "vm",
                "snapshots/",
                action="snapshot.create",
                data=lambda w: {"name": "snap2"},
            ),
        ],
        "api-snapshot": [
            object_case("GET", API_TENANT_READ, SNAPSHOT, "snap", parent=_IN_VM),
            object_case("DELETE", API_MEMBER_ACT, SNAPSHOT, "snap", parent=_IN_VM, action="snapshot.delete"),
        ],
        "api-snapshot-revert": [
            object_case(
                "POST", API_MEMBER_ACT, SNAPSHOT, "snap", "revert/", parent=_IN_VM, action="snapshot.revert"
            )
        ],
        "api-operations": [
            Case("GET", _api_operations, API_TENANT_READ, b_path=_api_operations_b, lists=True)
        ],
        "api-instance-placement": [object_case("GET", API_TENANT_READ, INSTANCE, "vm", "placement/")],
        "api-instance-logs": [object_case("GET", API_MEMBER_AGENT, INSTANCE, "box", "logs/")],
        # a-box is stopped: members get as far as the state check.
        "api-instance-exec": [
            object_case(
                "POST", API_MEMBER_CONFLICT, INSTANCE, "box", "exec/", data=lambda w: {"argv": ["true"]}
            )
        ],
        "api-instance-metrics": [object_case("GET", API_TENANT_READ, INSTANCE, "vm", "metrics/", lists=True)],
        "api-instance-groups": [
            object_case(
                "PUT",
                API_MEMBER_OK,
                INSTANCE,
                "box",
                "security-groups/",
                data=lambda w: {"security_groups": ["a-sg", "a-spare"]},
                action="instance.security_groups",
            )
        ],
        "api-networks": [
            Case("GET", _api_networks, API_TENANT_READ, b_path=_api_networks_b, lists=True),
            Case(
                "POST",
                _api_networks,
                API_MEMBER_CREATE,
                b_path=_api_networks_b,
                data=lambda w: {"name": "new-net", "cidr": "10.97.0.0/24"},
                action="network.create",
            ),
        ],
        "api-network": [
            object_case("GET", API_TENANT_READ, NETWORK, "net"),
            object_case(
                "PATCH",
                API_MEMBER_OK,
                NETWORK,
                "net",
                data=lambda w: {"nat_egress": True},
                action="network.update",
            ),
            object_case("DELETE", API_MEMBER_GONE, NETWORK, "spare", action="network.delete"),
            object_case("DELETE", API_MEMBER_CONFLICT, NETWORK, "net"),  # a-box is on it
        ],
        "api-secgroups": [
            Case("GET", _api_groups, API_TENANT_READ, b_path=_api_groups_b, lists=True),
            Case(
                "POST",
                _api_groups,
                API_MEMBER_CREATE,
                b_path=_api_groups_b,
                data=lambda w: {"name": "new-sg", "description": "web"},
                action="secgroup.create",
            ),
        ],
        "api-secgroup": [
            object_case("GET", API_TENANT_READ, SECURITY_GROUP, "sg"),
            object_case("DELETE", API_MEMBER_GONE, SECURITY_GROUP, "spare", action="secgroup.delete"),
            object_case("DELETE", API_MEMBER_CONFLICT, SECURITY_GROUP, "sg"),  # a-box uses it
        ],
        "api-secgroup-rules": [
            object_case(
                "POST",
                API_MEMBER_CREATE,
                SECURITY_GROUP,
                "sg",
                "rules/",
                data=lambda w: {"protocol": "tcp", "port_min": 80, "cidr": "0.0.0.0/0"},
                action="secgroup.rule_create",
            )
        ],
        "api-secgroup-rule": [
            object_case(
                "DELETE",
                API_MEMBER_GONE,
                SECURITY_RULE,
                "rule",
                parent=(SECURITY_GROUP, "sg"),
                action="secgroup.rule_delete",
            )
        ],
        "api-servergroups": [
            Case("GET", _api_sgroups, API_TENANT_READ, b_path=_api_sgroups_b, lists=True),
            Case(
                "POST",
                _api_sgroups,
                API_MEMBER_CREATE,
                b_path=_api_sgroups_b,
                data=lambda w: {"name": "new-grp", "policy": "affinity"},
                action="servergroup.create",
            ),
        ],
        "api-servergroup": [
            object_case("GET", API_TENANT_READ, SERVER_GROUP, "grp"),
            object_case("DELETE", API_MEMBER_GONE, SERVER_GROUP, "lone", action="servergroup.delete"),
            object_case("DELETE", API_MEMBER_CONFLICT, SERVER_GROUP, "grp"),  # a-vm is in it
        ],
        "api-queue": [Case("GET", _api_queue, API_TENANT_READ, b_path=_api_queue_b, lists=True)],
        "api-operation": [object_case("GET", API_TENANT_READ, OPERATION, "vm")],
    }
)

# Route tables kept in modules of their own.
for _extra in (
    _ADMIN_API,
    _FLOATING,
    _FLOATING_UI,
    _INSTANCES_UI,
    _NETWORKS_UI,
    _STAFF,
    _KEYPAIRS,
    _VOLUMES,
    _IMAGES,
):
    if set(_extra) & set(ROUTES):
        raise ValueError(f"routes listed twice: {sorted(set(_extra) & set(ROUTES))}")
    ROUTES.update(_extra)

# --- websockets: "accept" or a close code; accepted sockets must join only their own tenants.
WEBSOCKETS: dict[str, dict[str, int | str]] = {
    "ws-events": {
        "anon": 4401,
        **dict.fromkeys(("a_viewer", "a_member", "a_owner", "b_member", "staff", "superuser"), "accept"),
    },
    # Serial console of A's VM: members and owners of A only.
    "ws-serial": {**dict.fromkeys(PERSONAS_ALL, 4403), "a_member": "accept", "a_owner": "accept"},
    # VNC of A's VM with a token a_member got for it: only a_member passes (then finds no VNC server: 4409).
    "ws-vnc": {**dict.fromkeys(PERSONAS_ALL, 4403), "a_member": 4409},
    # The interactive serial console, the same way (a "serial" token a_member got for A's VM).
    "ws-terminal": {**dict.fromkeys(PERSONAS_ALL, 4403), "a_member": 4409},
}

# --- Django admin: every registered model, with what its ModelAdmin allows to a superuser.
# Staff hold only view permissions (see world.py); everyone else is bounced to the admin login.
# "protected": deleting is allowed, but what the world holds keeps the row (PROTECT foreign keys).
ADMIN_MODELS: dict[str, dict[str, bool]] = {
    "auth.group": {"add": True, "delete": True},
    "auth.user": {"add": True, "delete": True},
    "tenants.tenant": {"add": True, "delete": True, "protected": True},
    "tenants.membership": {"add": True, "delete": True},
    "tenants.quota": {"add": False, "delete": False},
    "tenants.quotaclaim": {"add": False, "delete": False},
    "tenants.apitoken": {"add": False, "delete": True},
    "security.auditrecord": {"add": False, "delete": False},
    "compute.host": {"add": False, "delete": True, "protected": True},
    "compute.flavor": {"add": True, "delete": True, "protected": True},
    "compute.image": {"add": True, "delete": True, "protected": True},
    "compute.instance": {"add": False, "delete": False},
    "compute.operation": {"add": False, "delete": False},
    "compute.snapshot": {"add": False, "delete": False},
    "compute.network": {"add": False, "delete": False},
    "scheduler.aggregate": {"add": True, "delete": True},
    "scheduler.placementdecision": {"add": False, "delete": False},
    "scheduler.queueentry": {"add": False, "delete": False},
    # The settings are one row (the world makes it): nobody adds a second or deletes it.
    "scheduler.drssettings": {"add": False, "delete": False},
    "scheduler.drspass": {"add": False, "delete": False},
    "scheduler.drsrecommendation": {"add": False, "delete": False},
    "scheduler.drsplacement": {"add": False, "delete": False},
    "compute.servergroup": {"add": False, "delete": False},
    "compute.securitygroup": {"add": False, "delete": False},
    "compute.floatingpool": {"add": True, "delete": True, "protected": True},
    "compute.floatingip": {"add": False, "delete": False},
    "compute.portforward": {"add": False, "delete": False},
    "compute.keypair": {"add": False, "delete": False},
    "compute.volume": {"add": False, "delete": False},
    "django_celery_beat.periodictask": {"add": True, "delete": True},
    "django_celery_beat.intervalschedule": {"add": True, "delete": True},
    "django_celery_beat.crontabschedule": {"add": True, "delete": True},
    "django_celery_beat.solarschedule": {"add": True, "delete": True},
    "django_celery_beat.clockedschedule": {"add": True, "delete": True},
    # Login lockouts (portal.admin): deleting the failed attempts unlocks.
    "axes.accessattempt": {"add": False, "delete": True},
}

ADMIN_STAFF_ONLY: dict[str, int | str] = exp(302, 302, 302, 302, 302, 200, 200)
ADMIN_SUPERUSER_ONLY: dict[str, int | str] = exp(302, 302, 302, 302, 302, 403, 200)
ADMIN_NOBODY: dict[str, int | str] = exp(302, 302, 302, 302, 302, 403, 403)

# Admin views that are not per-model.
ADMIN_SITE: dict[str, list[Case]] = {
    "admin:index": [Case("GET", const("/admin/"), ADMIN_STAFF_ONLY, json=False)],
    "admin:login": [Case("GET", const("/admin/login/"), exp(200, 200, 200, 200, 200, 302, 302), json=False)],
    # LOGOUT_REDIRECT_URL sends everyone on to the portal's login page.
    "admin:logout": [
        Case("POST", const("/admin/logout/"), exp(302, 302, 302, 302, 302, 302, 302), json=False)
    ],
    "admin:password_change": [Case("GET", const("/admin/password_change/"), ADMIN_STAFF_ONLY, json=False)],
    "admin:password_change_done": [
        Case("GET", const("/admin/password_change/done/"), ADMIN_STAFF_ONLY, json=False)
    ],
    "admin:jsi18n": [Case("GET", const("/admin/jsi18n/"), ADMIN_STAFF_ONLY, json=False)],
    "admin:autocomplete": [
        Case("GET", const("/admin/autocomplete/"), exp(302, 302, 302, 302, 302, 403, 403), json=False)
    ],
    "admin:view_on_site": [
        Case(
            "GET",
            lambda w: f"/admin/r/{_content_type_id('tenants', 'tenant')}/{w.a.pk}/",
            exp(302, 302, 302, 302, 302, 404, 404),
            json=False,
        ),
    ],
    "admin:app_list": [Case("GET", const("/admin/tenants/"), ADMIN_STAFF_ONLY, json=False)],
    "admin/(?P<url>.*)$": [
        Case("GET", const("/admin/no-such-page/"), exp(302, 302, 302, 302, 302, 404, 404), json=False)
    ],
}


def _content_type_id(app: str, model: str) -> int:
    from django.contrib.contenttypes.models import ContentType

    return ContentType.objects.get_by_natural_key(app, model).pk


def admin_cases(label: str, allowed: dict[str, bool]) -> dict[str, list[Case]]:
    """The cases of one model's admin views, keyed as the resolver names them."""
    app, model = label.split(".")
    base = f"/admin/{app}/{model}/"

    def obj(w: World) -> str:
        from django.apps import apps

        cls = apps.get_model(label)
        # Prefer tenant A's object where the model is tenant-owned; any row otherwise.
        rows = cls._base_manager.order_by("pk")
        if label in ("compute.flavor", "compute.image"):
            rows = rows.filter(public=True)  # the shared catalogue
        elif hasattr(cls, "tenant_id"):
            rows = rows.filter(tenant_id=w.a.pk)
        elif label == "tenants.tenant":
            rows = rows.filter(pk=w.a.pk)
        first = rows.first()
        assert first is not None, f"the world has no {label} for the admin cases"
        return str(first.pk)

    add = ADMIN_SUPERUSER_ONLY if allowed["add"] else ADMIN_NOBODY
    delete = ADMIN_SUPERUSER_ONLY if allowed["delete"] else ADMIN_NOBODY
    # A confirmed delete redirects when done; a protected row re-shows the page saying why not.
    deleted = exp(302, 302, 302, 302, 302, 403, 200 if allowed.get("protected") else 302)
    delete_post = deleted if allowed["delete"] else ADMIN_NOBODY
    cases = {
        f"admin:{app}_{model}_changelist": [Case("GET", const(base), ADMIN_STAFF_ONLY, json=False)],
        f"admin:{app}_{model}_add": [Case("GET", const(base + "add/"), add, json=False)],
        f"admin:{app}_{model}_change": [
            Case("GET", lambda w: f"{base}{obj(w)}/change/", ADMIN_STAFF_ONLY, json=False)
        ],
        f"admin:{app}_{model}_history": [
            Case("GET", lambda w: f"{base}{obj(w)}/history/", ADMIN_STAFF_ONLY, json=False)
        ],
        f"admin:{app}_{model}_delete": [
            Case("GET", lambda w: f"{base}{obj(w)}/delete/", delete, json=False),
            Case(
                "POST",
                lambda w: f"{base}{obj(w)}/delete/",
                delete_post,
                json=False,
                data=lambda w: {"post": "yes"},
                action=None if allowed.get("protected") else f"admin.{model}.delete",
            ),
        ],
        f"admin/{app}/{model}/<path:object_id>/": [
            Case("GET", lambda w: f"{base}{obj(w)}/", exp(302, 302, 302, 302, 302, 302, 302), json=False)
        ],
    }
    if label == "auth.user":
        cases["admin:auth_user_password_change"] = [
            Case("GET", lambda w: f"{base}{obj(w)}/password/", ADMIN_SUPERUSER_ONLY, json=False)
        ]
    return cases


def all_http_cases() -> dict[str, list[Case]]:
    cases = {**ROUTES, **ADMIN_SITE}
    for label, allowed in ADMIN_MODELS.items():
        cases.update(admin_cases(label, allowed))
    return cases
