"""Persona cases of the network, security group, server group and snapshot pages (merged into ROUTES)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.isolation.routes import UI_TENANT_READ, Case, Path, exp, tenant_path
from tests.isolation.world import World

# A member's POST: redirected after success; viewers 403; everyone outside A 404.
UI_MEMBER_POST = exp(302, 403, 302, 302, 404, 404, 404)
# A page for members only (a delete's confirmation): viewers 403; everyone outside A 404.
UI_MEMBER_PAGE = exp(302, 403, 200, 200, 404, 404, 404)


def ui_member_fails(status: int) -> dict[str, int | str]:
    """A member's POST that a service refuses: the page comes back with the error's status."""
    return exp(302, 403, status, status, 404, 404, 404)


def _object_case(
    method: str,
    expect: dict[str, int | str],
    section: str,
    ref: Callable[[World, str], Any],
    which: str,
    suffix: str = "",
    **kw: Any,
) -> Case:
    """The case on A's object ``a-<which>``, with B's under B's URL and B's guessed under A's URL."""

    def build(tenant: str, name: str) -> Path:
        def path(w: World) -> str:
            slug = (w.a if tenant == "a" else w.b).slug
            return f"/t/{slug}/{section}/{ref(w, name)}/{suffix}"

        return path

    return Case(
        method,
        build("a", f"a-{which}"),
        expect,
        b_path=build("b", f"b-{which}"),
        idor_path=build("a", f"b-{which}"),
        json=False,
        **kw,
    )


def _net(method: str, expect: dict[str, int | str], which: str, suffix: str, **kw: Any) -> Case:
    return _object_case(method, expect, "networks", lambda w, n: w.nets[n].uuid, which, suffix, **kw)


def _group(method: str, expect: dict[str, int | str], which: str, suffix: str = "", **kw: Any) -> Case:
    return _object_case(method, expect, "security-groups", lambda w, n: w.groups[n].pk, which, suffix, **kw)


def _sgroup(method: str, expect: dict[str, int | str], which: str, suffix: str, **kw: Any) -> Case:
    return _object_case(
        method, expect, "server-groups", lambda w, n: w.server_groups[n].pk, which, suffix, **kw
    )


def _snap(method: str, expect: dict[str, int | str], suffix: str, **kw: Any) -> Case:
    return _object_case(method, expect, "snapshots", lambda w, n: w.snaps[n].pk, "snap", suffix, **kw)


def _confirm(name: str) -> Callable[[World], dict[str, Any]]:
    """The body of a delete's confirmation: the name typed."""
    return lambda w: {"confirm": name}


def _rule_path(tenant: str, group: str, rule: str) -> Path:
    def path(w: World) -> str:
        slug = (w.a if tenant == "a" else w.b).slug
        return f"/t/{slug}/security-groups/{w.groups[group].pk}/rules/{w.rules[rule].pk}/delete/"

    return path


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
        _net(
            "POST",
            UI_MEMBER_POST,
            "net",
            "nat/",
            data=lambda w: {"nat_egress": "on"},
            action="network.update",
        )
    ],
    "ui-network-delete": [
        _net("GET", UI_MEMBER_PAGE, "spare", "delete/"),
        _net("POST", ui_member_fails(400), "spare", "delete/"),  # the name not typed
        _net("POST", UI_MEMBER_POST, "spare", "delete/", data=_confirm("a-spare"), action="network.delete"),
        _net("POST", ui_member_fails(409), "net", "delete/", data=_confirm("a-net")),  # a-box is on it
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
    "ui-secgroup": [_group("GET", UI_TENANT_READ, "sg", lists=True)],
    "ui-secgroup-delete": [
        _group("GET", UI_MEMBER_PAGE, "spare", "delete/"),
        _group("POST", ui_member_fails(400), "spare", "delete/"),  # the name not typed
        _group(
            "POST", UI_MEMBER_POST, "spare", "delete/", data=_confirm("a-spare"), action="secgroup.delete"
        ),
        _group("POST", ui_member_fails(409), "sg", "delete/", data=_confirm("a-sg")),  # a-box uses it
    ],
    "ui-secgroup-rule-add": [
        _group(
            "POST",
            UI_MEMBER_POST,
            "sg",
            "rules/",
            data=lambda w: {"protocol": "tcp", "port_min": "80", "port_max": "", "cidr": "0.0.0.0/0"},
            action="secgroup.rule_create",
        ),
        _group(
            "POST",
            ui_member_fails(400),
            "sg",
            "rules/",
            data=lambda w: {"protocol": "tcp", "port_min": "80", "cidr": "10.0.0.1/8"},
        ),
    ],
    "ui-secgroup-rule-delete": [
        Case(
            "POST",
            _rule_path("a", "a-sg", "a-rule"),
            UI_MEMBER_POST,
            b_path=_rule_path("b", "b-sg", "b-rule"),
            idor_path=_rule_path("a", "a-sg", "b-rule"),
            json=False,
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
        _sgroup("GET", UI_MEMBER_PAGE, "lone", "delete/"),
        _sgroup("POST", ui_member_fails(400), "lone", "delete/"),  # the name not typed
        _sgroup(
            "POST", UI_MEMBER_POST, "lone", "delete/", data=_confirm("a-lone"), action="servergroup.delete"
        ),
        _sgroup("POST", ui_member_fails(409), "grp", "delete/", data=_confirm("a-grp")),  # a-vm is in it
    ],
    "ui-snapshots": [Case("GET", _snaps, UI_TENANT_READ, b_path=_snaps_b, lists=True)],
    "ui-snapshot-revert": [_snap("POST", UI_MEMBER_POST, "revert/", action="snapshot.revert")],
    "ui-snapshot-delete": [_snap("POST", UI_MEMBER_POST, "delete/", action="snapshot.delete")],
}
