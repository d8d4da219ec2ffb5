"""Persona cases of the network, security group, server group and snapshot pages (merged into ROUTES)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.isolation.cases import (
    NETWORK,
    SECURITY_GROUP,
    SECURITY_RULE,
    SERVER_GROUP,
    SNAPSHOT,
    UI_TENANT_READ,
    Case,
    exp,
    object_case,
    tenant_path,
)
from tests.isolation.world import World

# A member's POST: redirected after success; viewers 403; everyone outside A 404.
UI_MEMBER_POST = exp(302, 403, 302, 302, 404, 404, 404)
# A page for members only (a delete's confirmation): viewers 403; everyone outside A 404.
UI_MEMBER_PAGE = exp(302, 403, 200, 200, 404, 404, 404)


def ui_member_fails(status: int) -> dict[str, int | str]:
    """A member's POST that a service refuses: the page comes back with the error's status."""
    return exp(302, 403, status, status, 404, 404, 404)


def _confirm(name: str) -> Callable[[World], dict[str, Any]]:
    """The body of a delete's confirmation: the name typed."""
    return lambda w: {"confirm": name}


_networks, _networks_b = tenant_path("networks/", api=False)
_groups, _groups_b = tenant_path("security-groups/", api=False)
_sgroups, _sgroups_b = tenant_path("server-groups/", api=False)
_snaps, _snaps_b = tenant_path("snapshots/", api=False)

ROUTES: dict[str, list[Case]] = {
    "ui-networks": [
        Case("GET", _networks, UI_TENANT_READ, b_path=_networks_b, lists=True),
        Case(
            "POST",
            _networks,
            UI_MEMBER_POST,
            b_path=_networks_b,
            json=False,
            data=lambda w: {"name": "new-net", "cidr": "10.97.0.0/24", "nat_egress": "on"},
            action="network.create",
        ),
        # The subnet of a-net again: refused, and the page says so next to the field.
        Case(
            "POST",
            _networks,
            ui_member_fails(409),
            b_path=_networks_b,
            json=False,
            data=lambda w: {"name": "dup-net", "cidr": "10.98.0.0/24"},
        ),
    ],
    "ui-network-nat": [
        object_case(
            "POST",
            UI_MEMBER_POST,
            NETWORK,
            "net",
            "nat/",
            data=lambda w: {"nat_egress": "on"},
            action="network.update",
            api=False,
        )
    ],
    "ui-network-delete": [
        object_case("GET", UI_MEMBER_PAGE, NETWORK, "spare", "delete/", api=False),
        object_case(
            "POST", ui_member_fails(400), NETWORK, "spare", "delete/", api=False
        ),  # the name not typed
        object_case(
            "POST",
            UI_MEMBER_POST,
            NETWORK,
            "spare",
            "delete/",
            data=_confirm("a-spare"),
            action="network.delete",
            api=False,
        ),
        object_case(
            "POST", ui_member_fails(409), NETWORK, "net", "delete/", data=_confirm("a-net"), api=False
        ),  # a-box is on it
    ],
    "ui-secgroups": [
        Case("GET", _groups, UI_TENANT_READ, b_path=_groups_b, lists=True),
        Case(
            "POST",
            _groups,
            UI_MEMBER_POST,
            b_path=_groups_b,
            json=False,
            data=lambda w: {"name": "new-sg", "description": "web"},
            action="secgroup.create",
        ),
    ],
    "ui-secgroup": [object_case("GET", UI_TENANT_READ, SECURITY_GROUP, "sg", lists=True, api=False)],
    "ui-secgroup-delete": [
        object_case("GET", UI_MEMBER_PAGE, SECURITY_GROUP, "spare", "delete/", api=False),
        object_case(
            "POST", ui_member_fails(400), SECURITY_GROUP, "spare", "delete/", api=False
        ),  # the name not typed
        object_case(
            "POST",
            UI_MEMBER_POST,
            SECURITY_GROUP,
            "spare",
            "delete/",
            data=_confirm("a-spare"),
            action="secgroup.delete",
            api=False,
        ),
        object_case(
            "POST", ui_member_fails(409), SECURITY_GROUP, "sg", "delete/", data=_confirm("a-sg"), api=False
        ),  # a-box uses it
    ],
    "ui-secgroup-rule-add": [
        object_case(
            "POST",
            UI_MEMBER_POST,
            SECURITY_GROUP,
            "sg",
            "rules/",
            data=lambda w: {"protocol": "tcp", "port_min": "80", "port_max": "", "cidr": "0.0.0.0/0"},
            action="secgroup.rule_create",
            api=False,
        ),
        object_case(
            "POST",
            ui_member_fails(400),
            SECURITY_GROUP,
            "sg",
            "rules/",
            data=lambda w: {"protocol": "tcp", "port_min": "80", "cidr": "10.0.0.1/8"},
            api=False,
        ),
    ],
    "ui-secgroup-rule-delete": [
        object_case(
            "POST",
            UI_MEMBER_POST,
            SECURITY_RULE,
            "rule",
            "delete/",
            parent=(SECURITY_GROUP, "sg"),
            api=False,
            action="secgroup.rule_delete",
        )
    ],
    "ui-servergroups": [
        Case("GET", _sgroups, UI_TENANT_READ, b_path=_sgroups_b, lists=True),
        Case(
            "POST",
            _sgroups,
            UI_MEMBER_POST,
            b_path=_sgroups_b,
            json=False,
            data=lambda w: {"name": "new-grp", "policy": "affinity"},
            action="servergroup.create",
        ),
    ],
    "ui-servergroup-delete": [
        object_case("GET", UI_MEMBER_PAGE, SERVER_GROUP, "lone", "delete/", api=False),
        object_case(
            "POST", ui_member_fails(400), SERVER_GROUP, "lone", "delete/", api=False
        ),  # the name not typed
        object_case(
            "POST",
            UI_MEMBER_POST,
            SERVER_GROUP,
            "lone",
            "delete/",
            data=_confirm("a-lone"),
            action="servergroup.delete",
            api=False,
        ),
        object_case(
            "POST", ui_member_fails(409), SERVER_GROUP, "grp", "delete/", data=_confirm("a-grp"), api=False
        ),  # a-vm is in it
    ],
    "ui-snapshots": [Case("GET", _snaps, UI_TENANT_READ, b_path=_snaps_b, lists=True)],
    "ui-snapshot-revert": [
        object_case("POST", UI_MEMBER_POST, SNAPSHOT, "snap", "revert/", action="snapshot.revert", api=False)
    ],
    "ui-snapshot-delete": [
        object_case("POST", UI_MEMBER_POST, SNAPSHOT, "snap", "delete/", action="snapshot.delete", api=False)
    ],
}
