"""Persona cases of a group of UI routes (merged into routes.ROUTES): the staff pages under /staff/.

Staff and superusers read them; everyone else signed in gets 403, anonymous users the login page.
The maintenance toggle also needs compute.change_host, which the harness's staff persona (view
permissions only) lacks.
"""

from __future__ import annotations

from compute.models import Host
from tests.isolation.cases import Case, const, exp
from tests.isolation.world import World

STAFF_PAGE = exp(302, 403, 403, 403, 403, 200, 200)
HOST_CHANGE = exp(302, 403, 403, 403, 403, 403, 302)


def _maintenance(w: World) -> str:
    return f"/staff/hosts/{Host.objects.get(name='harness-host').pk}/maintenance/"


ROUTES: dict[str, list[Case]] = {
    "staff-hosts": [Case("GET", const("/staff/hosts/"), STAFF_PAGE, json=False)],
    "staff-queue": [Case("GET", const("/staff/queue/"), STAFF_PAGE, json=False)],
    "staff-host-maintenance": [
        Case(
            "POST",
            _maintenance,
            HOST_CHANGE,
            json=False,
            data=lambda w: {"on": "1"},
            action="host.maintenance",
        ),
    ],
}
