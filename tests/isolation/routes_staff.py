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


def drs_recommendation_id(w: World) -> int:
    """A fresh recommendation to move tenant A's VM (each persona's call applies its own)."""
    from scheduler.models import DrsPass, DrsRecommendation

    vm = w.vms["a-vm"]
    drs_pass = DrsPass.objects.create(automation="manual", threshold=3)
    host = Host.objects.get(name="harness-host")
    rec = DrsRecommendation.objects.create(
        drs_pass=drs_pass, order=0, instance=vm, instance_ids=[vm.pk], source=host, target=host
    )
    return rec.pk


def drs_pass_id(w: World) -> int:
    from scheduler.models import DrsRecommendation

    return DrsRecommendation.objects.get(pk=drs_recommendation_id(w)).drs_pass_id


def _maintenance(w: World) -> str:
    return f"/staff/hosts/{Host.objects.get(name='harness-host').pk}/maintenance/"


ROUTES: dict[str, list[Case]] = {
    "staff-hosts": [Case("GET", const("/staff/hosts/"), STAFF_PAGE, json=False)],
    "staff-queue": [Case("GET", const("/staff/queue/"), STAFF_PAGE, json=False)],
    "staff-drs": [Case("GET", const("/staff/drs/"), STAFF_PAGE, json=False)],
    "staff-drs-run": [Case("POST", const("/staff/drs/run/"), HOST_CHANGE, json=False, action="drs.pass")],
    "staff-drs-what-if": [
        Case(
            "POST",
            const("/staff/drs/what-if/"),
            exp(302, 403, 403, 403, 403, 302, 302),
            json=False,
            data=lambda w: {"maintenance": "harness-host"},
            action="drs.what_if",
        )
    ],
    "staff-drs-apply": [
        Case(
            "POST",
            lambda w: f"/staff/drs/recommendations/{drs_recommendation_id(w)}/apply/",
            HOST_CHANGE,
            json=False,
            action="drs.apply",
        )
    ],
    "staff-drs-apply-all": [
        Case(
            "POST",
            lambda w: f"/staff/drs/passes/{drs_pass_id(w)}/apply/",
            HOST_CHANGE,
            json=False,
            action="drs.apply_all",
        )
    ],
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
