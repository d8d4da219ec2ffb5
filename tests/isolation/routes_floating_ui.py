"""Persona cases of the floating address pages and an instance's port forward forms (merged into ROUTES)."""

from __future__ import annotations

from tests.isolation.cases import INSTANCE, UI_TENANT_READ, Case, object_case, tenant_path
from tests.isolation.routes_floating import FLOATING_IP, PORT_FORWARD
from tests.isolation.routes_networks_ui import UI_MEMBER_PAGE, UI_MEMBER_POST, ui_member_fails

_page, _page_b = tenant_path("floating-ips/", api=False)

ROUTES: dict[str, list[Case]] = {
    "ui-floating-ips": [
        Case("GET", _page, UI_TENANT_READ, b_path=_page_b, lists=True),
        Case(
            "POST",
            _page,
            UI_MEMBER_POST,
            b_path=_page_b,
            json=False,
            data=lambda w: {"pool": "ext"},
            action="floating_ip.allocate",
        ),
        Case(
            "POST", _page, ui_member_fails(400), b_path=_page_b, json=False, data=lambda w: {"pool": "nope"}
        ),
    ],
    "ui-floating-ip-associate": [
        object_case(
            "POST",
            UI_MEMBER_POST,
            FLOATING_IP,
            "fip",
            "associate/",
            data=lambda w: {"instance": str(w.vms["a-box"].uuid)},
            action="floating_ip.associate",
            api=False,
        ),
        # B's instance is unknown to A: the page names the field (400), nothing associated.
        object_case(
            "POST",
            ui_member_fails(400),
            FLOATING_IP,
            "fip",
            "associate/",
            data=lambda w: {"instance": str(w.vms["b-box"].uuid)},
            api=False,
        ),
    ],
    "ui-floating-ip-disassociate": [
        object_case("POST", UI_MEMBER_POST, FLOATING_IP, "fip", "disassociate/", api=False),
    ],
    "ui-floating-ip-release": [
        object_case("GET", UI_MEMBER_PAGE, FLOATING_IP, "fip", "release/", api=False),
        object_case(
            "POST", ui_member_fails(400), FLOATING_IP, "fip", "release/", api=False
        ),  # the address not typed
        object_case(
            "POST",
            UI_MEMBER_POST,
            FLOATING_IP,
            "fip",
            "release/",
            data=lambda w: {"confirm": w.floating["a-fip"].address},
            action="floating_ip.release",
            api=False,
        ),
    ],
    "ui-port-forward-add": [
        object_case(
            "POST",
            UI_MEMBER_POST,
            INSTANCE,
            "box",
            "port-forwards/",
            data=lambda w: {"port": "22"},
            action="port_forward.create",
            api=False,
        ),
        object_case(
            "POST",
            ui_member_fails(400),
            INSTANCE,
            "box",
            "port-forwards/",
            data=lambda w: {"port": "70000"},
            api=False,
        ),
    ],
    "ui-port-forward-remove": [
        object_case(
            "POST",
            UI_MEMBER_POST,
            PORT_FORWARD,
            "pf",
            "delete/",
            parent=(INSTANCE, "box"),
            action="port_forward.delete",
            api=False,
        ),
    ],
}
