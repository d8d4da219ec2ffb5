"""Persona cases of a group of UI routes (merged into routes.ROUTES): the staff pages under /staff/.

Staff and superusers read them; everyone else signed in gets 403, anonymous users the login page.
The maintenance toggle also needs compute.change_host, which the harness's staff persona (view
permissions only) lacks.
"""

from __future__ import annotations

from datetime import timedelta
from itertools import count

from compute.models import Host
from tests.isolation.cases import Case, Path, const, exp
from tests.isolation.world import World

_held = count()  # names of the waiting instances the cases make
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


def drs_placement_id(w: World) -> int:
    """A fresh instance of tenant A waiting for staff to place it (each persona's call decides its own)."""
    from django.utils import timezone

    from compute.models import Instance, InstanceState, Operation, OperationKind
    from scheduler.models import DrsPlacement

    vm = w.vms["a-vm"]
    n = next(_held)
    instance = Instance.objects.create(
        tenant=vm.tenant,
        name=f"a-held-{n}",
        flavor=vm.flavor,
        image=vm.image,
        state=InstanceState.AWAITING,
        vcpus=vm.vcpus,
        ram_mib=vm.ram_mib,
        current_ram_mib=vm.ram_mib,
        disk_gib=vm.disk_gib,
    )
    Operation.objects.create(tenant=vm.tenant, instance=instance, kind=OperationKind.CREATE)
    now = timezone.now()
    held = DrsPlacement.objects.create(
        instance=instance,
        target=Host.objects.get(name="harness-host"),
        explanation={"top": [{"host": "harness-host", "weight": 1.0}]},
        deadline=now + timedelta(hours=1),
    )
    return held.pk


def one_waiting(path: str) -> Path:
    """``path``, once tenant A has an instance waiting for staff to place it (a fresh one per call)."""

    def build(w: World) -> str:
        drs_placement_id(w)
        return path

    return build


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
    "staff-drs-place": [
        Case(
            "POST",
            lambda w: f"/staff/drs/placements/{drs_placement_id(w)}/apply/",
            HOST_CHANGE,
            json=False,
            action="drs.place",
        )
    ],
    "staff-drs-place-reject": [
        Case(
            "POST",
            lambda w: f"/staff/drs/placements/{drs_placement_id(w)}/reject/",
            HOST_CHANGE,
            json=False,
            data=lambda w: {"reason": "not here"},
            action="drs.place_reject",
        )
    ],
    "staff-drs-place-all": [
        Case(
            "POST",
            one_waiting("/staff/drs/placements/apply/"),
            HOST_CHANGE,
            json=False,
            action="drs.place",
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
