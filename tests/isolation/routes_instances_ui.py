"""Persona cases of the instance pages (merged into routes.ROUTES)."""

from __future__ import annotations

from tests.isolation.cases import INSTANCE, UI_TENANT_READ, Case, exp, object_case, tenant_path

UI_MEMBER_PAGE = exp(302, 403, 200, 200, 404, 404, 404)
UI_MEMBER_POST = exp(302, 403, 302, 302, 404, 404, 404)
UI_VIEWER_PAGE = exp(302, 200, 200, 200, 404, 404, 404)

_list, _list_b = tenant_path("instances/", api=False)
_new, _new_b = tenant_path("instances/new/", api=False)


ROUTES: dict[str, list[Case]] = {
    "ui-instances": [Case("GET", _list, UI_TENANT_READ, b_path=_list_b, lists=True, json=False)],
    "ui-instance-new": [
        Case("GET", _new, UI_MEMBER_PAGE, b_path=_new_b, json=False),
        Case(
            "POST",
            _new,
            UI_MEMBER_POST,
            b_path=_new_b,
            json=False,
            data=lambda w: {
                "name": "new-vm",
                "kind": "vm",
                "flavor": "h.small",
                "image": "h-image",
                "network": "__none__",
                "priority": "1",
            },
            action="instance.create",
        ),
    ],
    "ui-instance": [object_case("GET", UI_VIEWER_PAGE, INSTANCE, "vm", api=False)],
    "ui-instance-row": [object_case("GET", UI_VIEWER_PAGE, INSTANCE, "vm", "row/", api=False)],
    "ui-instance-action": [
        object_case(
            "POST",
            UI_MEMBER_POST,
            INSTANCE,
            "vm",
            "action/",
            data=lambda w: {"action": "stop"},
            action="instance.stop",
            api=False,
        )
    ],
    "ui-instance-resize": [
        object_case(
            "POST",
            UI_MEMBER_POST,
            INSTANCE,
            "vm",
            "resize/",
            data=lambda w: {"memory_mib": "100"},
            action="instance.memory",
            api=False,
        )
    ],
    "ui-instance-snapshot": [
        object_case(
            "POST",
            UI_MEMBER_POST,
            INSTANCE,
            "vm",
            "snapshot/",
            data=lambda w: {"name": "snap2"},
            action="snapshot.create",
            api=False,
        )
    ],
    "ui-instance-delete": [
        object_case("GET", UI_MEMBER_PAGE, INSTANCE, "vm", "delete/", api=False),
        object_case(
            "POST",
            UI_MEMBER_POST,
            INSTANCE,
            "vm",
            "delete/",
            data=lambda w: {"confirm": "a-vm"},
            action="instance.delete",
            api=False,
        ),
    ],
}
