"""Persona cases of the instance pages (merged into routes.ROUTES)."""

from __future__ import annotations

from typing import Any

from tests.isolation.routes import UI_TENANT_READ, Case, Path, exp, tenant_path
from tests.isolation.world import World

UI_MEMBER_PAGE = exp(302, 403, 200, 200, 404, 404, 404)
UI_MEMBER_POST = exp(302, 403, 302, 302, 404, 404, 404)
UI_VIEWER_PAGE = exp(302, 200, 200, 200, 404, 404, 404)

_list, _list_b = tenant_path("instances/", api=False)
_new, _new_b = tenant_path("instances/new/", api=False)


def _page(vm: str, suffix: str, tenant: str = "a", of: str | None = None) -> Path:
    def build(w: World) -> str:
        slug = (w.a if tenant == "a" else w.b).slug
        return f"/t/{slug}/instances/{w.vms[of or vm].uuid}/{suffix}"

    return build


def _case(
    method: str, expect: dict[str, int | str], a_vm: str, b_vm: str, suffix: str = "", **kw: Any
) -> Case:
    """The case on A's instance, with B's under B's URL and under A's URL (a guessed id)."""
    return Case(
        method,
        _page(a_vm, suffix),
        expect,
        b_path=_page(b_vm, suffix, "b"),
        idor_path=_page(b_vm, suffix),
        json=False,
        **kw,
    )


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
    "ui-instance": [_case("GET", UI_VIEWER_PAGE, "a-vm", "b-vm")],
    "ui-instance-row": [_case("GET", UI_VIEWER_PAGE, "a-vm", "b-vm", "row/")],
    "ui-instance-action": [
        _case(
            "POST",
            UI_MEMBER_POST,
            "a-vm",
            "b-vm",
            "action/",
            data=lambda w: {"action": "stop"},
            action="instance.stop",
        )
    ],
    "ui-instance-resize": [
        _case(
            "POST",
            UI_MEMBER_POST,
            "a-vm",
            "b-vm",
            "resize/",
            data=lambda w: {"memory_mib": "100"},
            action="instance.memory",
        )
    ],
    "ui-instance-snapshot": [
        _case(
            "POST",
            UI_MEMBER_POST,
            "a-vm",
            "b-vm",
            "snapshot/",
            data=lambda w: {"name": "snap2"},
            action="snapshot.create",
        )
    ],
    "ui-instance-delete": [
        _case("GET", UI_MEMBER_PAGE, "a-vm", "b-vm", "delete/"),
        _case(
            "POST",
            UI_MEMBER_POST,
            "a-vm",
            "b-vm",
            "delete/",
            data=lambda w: {"confirm": "a-vm"},
            action="instance.delete",
        ),
    ],
}
