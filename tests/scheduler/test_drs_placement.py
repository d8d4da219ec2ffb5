"""DRS manual mode's initial placement: a new instance waits for staff to choose its host, with its
quota held and the decision kept; staff place it (the filters check their choice again) or refuse
it; one left too long fails; a deleted one withdraws. Partial and full automation, an aggregate's
override and DRS switched off place at once. Hosts are rows with no agent here."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from rest_framework.test import APIClient

from compute.models import Instance, InstanceState, Operation, OperationKind, OperationState
from compute.services.admission import admission_run
from compute.services.drs_placement import (
    drs_place,
    drs_place_all,
    drs_place_reject,
    drs_placement_expire,
)
from compute.services.instances import instance_delete, instance_deleted
from compute.services.server_groups import server_group_create
from core.errors import Conflict, ServiceError
from scheduler.models import Aggregate, DrsPlacement, DrsSettings, PlacementDecision, PlacementState
from security.models import AuditRecord
from tenants.models import QuotaClaim, Tenant
from tests.factories import make_tenant, make_user
from tests.scheduler.conftest import ACTOR, create
from tests.scheduler.test_placement import make_host

pytestmark = pytest.mark.django_db


def automation(level: str, **fields: Any) -> None:
    DrsSettings.objects.update_or_create(pk=1, defaults={"automation": level, **fields})


def held(instance: Instance) -> DrsPlacement:
    return DrsPlacement.objects.get(instance=instance, state=PlacementState.WAITING)


def quota_held(tenant: Tenant, instance: Instance) -> bool:
    return QuotaClaim.objects.for_tenant(tenant).filter(holder_id=str(instance.pk), released_at=None).exists()


def create_op(instance: Instance) -> Operation:
    return Operation.objects.unscoped().get(instance=instance, kind=OperationKind.CREATE)


def test_manual_mode_holds_a_new_instance_until_staff_place_it_on_the_recommended_host(
    catalog: dict[str, object],
) -> None:
    tenant = make_tenant("hold")
    busy, idle = make_host("m-busy"), make_host("m-idle")
    create(tenant, "first")  # automatic (partial is the default): goes somewhere
    automation("manual")
    waiting = create(tenant, "second")
    assert (waiting.state, waiting.host_id) == (InstanceState.AWAITING, None)
    assert quota_held(tenant, waiting)
    assert create_op(waiting).state == OperationState.PENDING
    rec = held(waiting)
    top = [c["host"] for c in rec.explanation["top"]]
    assert top[0] == rec.target.name
    assert set(top) == {busy.name, idle.name}
    assert "manual mode" in rec.explanation["held"]
    assert rec.deadline - rec.created == timedelta(seconds=3600)
    # The tenant's placement record says why it has no host yet.
    record = PlacementDecision.objects.for_tenant(tenant).get(instance=waiting).record
    assert record["host"] == ""
    assert "staff place new instances" in record["held"]
    audit = AuditRecord.objects.filter(action="instance.create", target_id=str(waiting.pk)).get()
    assert audit.detail["held"]

    staff = make_user("placer")
    done = drs_place(actor=ACTOR, placement=rec, user=staff)
    waiting.refresh_from_db()
    assert (waiting.state, waiting.host_id) == (InstanceState.SCHEDULED, rec.target_id)
    assert (done.state, done.host_id, done.decided_by) == (PlacementState.PLACED, rec.target_id, staff)
    assert create_op(waiting).state == OperationState.PENDING  # handed to the host's agent
    assert PlacementDecision.objects.for_tenant(tenant).get(instance=waiting).host_id == rec.target_id
    assert AuditRecord.objects.filter(action="drs.place", target_id=str(waiting.pk)).exists()
    with pytest.raises(Conflict, match="placed"):
        drs_place(actor=ACTOR, placement=rec)


def test_staff_may_choose_another_host_and_the_filters_check_their_choice(
    catalog: dict[str, object],
) -> None:
    tenant = make_tenant("choose")
    make_host("c-big", cpus=8, ram_mib=16384)
    small = make_host("c-small", cpus=1, ram_mib=4096, cpu_ratio=1.0)
    other = make_host("c-other")
    automation("manual")
    group = server_group_create(actor=ACTOR, tenant=tenant, name="apart", policy="anti-affinity")
    a = create(tenant, "a", server_group=group.name)
    b = create(tenant, "b", server_group=group.name)
    drs_place(actor=ACTOR, placement=held(a), host=other)
    a.refresh_from_db()
    assert a.host_id == other.pk
    # Anti-affinity: b may not join a.
    with pytest.raises(ServiceError) as refused:
        drs_place(actor=ACTOR, placement=held(b), host=other)
    assert refused.value.field == "host"
    assert "c-other cannot take b" in refused.value.message
    assert "anti-affinity" in refused.value.message
    b.refresh_from_db()
    assert (b.state, b.host_id) == (InstanceState.AWAITING, None)
    # Capacity: the small host's one CPU is taken, so it fails there too, and nothing changes.
    Instance.objects.unscoped().filter(pk=a.pk).update(host=small)
    with pytest.raises(ServiceError, match="c-small cannot take b"):
        drs_place(actor=ACTOR, placement=held(b), host=small)
    assert held(b).state == PlacementState.WAITING


def test_partial_full_an_aggregate_override_and_drs_off_place_at_once(catalog: dict[str, object]) -> None:
    tenant = make_tenant("auto", instances=10)
    h1, h2 = make_host("a-one"), make_host("a-two")
    for level in ("partial", "full"):
        automation(level)
        assert create(tenant, f"n-{level}").state == InstanceState.SCHEDULED
    # The cluster is manual, but both hosts' aggregate is fully automated.
    automation("manual")
    auto = Aggregate.objects.create(name="auto", drs_automation="full")
    auto.hosts.set([h1, h2])
    assert create(tenant, "override").state == InstanceState.SCHEDULED
    # The cluster is partial, but an aggregate of both hosts is manual.
    automation("partial")
    auto.drs_automation = "manual"
    auto.save()
    assert create(tenant, "strict").state == InstanceState.AWAITING
    # DRS off: no staff placement at all.
    automation("manual", enabled=False)
    assert create(tenant, "off").state == InstanceState.SCHEDULED
    assert DrsPlacement.objects.count() == 1


def test_staff_refuse_one_with_a_reason_and_its_quota_comes_back(catalog: dict[str, object]) -> None:
    tenant = make_tenant("refused")
    make_host("r-one")
    automation("manual")
    waiting = create(tenant, "nope")
    rec = held(waiting)
    with pytest.raises(ServiceError) as empty:
        drs_place_reject(actor=ACTOR, placement=rec, reason="  ")
    assert empty.value.field == "reason"
    drs_place_reject(actor=ACTOR, placement=rec, reason="that host is being retired")
    waiting.refresh_from_db()
    assert waiting.state == InstanceState.ERROR
    assert waiting.fault == "refused by staff: that host is being retired"
    assert not quota_held(tenant, waiting)
    op = create_op(waiting)
    assert (op.state, op.error) == (OperationState.FAILED, waiting.fault)
    assert DrsPlacement.objects.get(pk=rec.pk).state == PlacementState.REJECTED
    assert AuditRecord.objects.filter(action="drs.place_reject", target_id=str(waiting.pk)).exists()


def test_one_left_past_the_timeout_fails_and_a_deleted_one_withdraws(catalog: dict[str, object]) -> None:
    tenant = make_tenant("late")
    make_host("l-one")
    automation("manual", placement_timeout_seconds=600)
    late, gone, fresh = create(tenant, "late"), create(tenant, "gone"), create(tenant, "fresh")
    rec = held(late)
    ago = timedelta(seconds=601)
    DrsPlacement.objects.filter(pk=rec.pk).update(created=rec.created - ago, deadline=rec.deadline - ago)
    assert drs_placement_expire() == 1
    late.refresh_from_db()
    assert late.state == InstanceState.ERROR
    assert late.fault == "not placed by staff within 600 s (DRS manual mode)"
    assert not quota_held(tenant, late)
    assert DrsPlacement.objects.get(instance=late).state == PlacementState.EXPIRED
    assert drs_placement_expire() == 0

    instance_delete(actor=ACTOR, instance=gone)
    gone.refresh_from_db()
    assert gone.state == InstanceState.DELETED
    assert not quota_held(tenant, gone)
    assert DrsPlacement.objects.get(instance=gone).state == PlacementState.CANCELLED
    assert create_op(gone).state == OperationState.FAILED
    with pytest.raises(Conflict, match="cancelled"):
        drs_place(actor=ACTOR, placement=DrsPlacement.objects.get(instance=gone))
    assert held(fresh).state == PlacementState.WAITING


def test_a_queued_request_whose_turn_comes_in_manual_mode_waits_for_staff(catalog: dict[str, object]) -> None:
    tenant = make_tenant("queued")
    host = make_host("q-solo", cpus=1, cpu_ratio=1.0)
    first = create(tenant, "first")
    patient = create(tenant, "patient", wait=True)
    assert patient.state == InstanceState.QUEUED
    automation("manual")
    first.refresh_from_db()
    instance_deleted(first)
    assert admission_run() == ["patient"]
    patient.refresh_from_db()
    assert (patient.state, patient.host_id) == (InstanceState.AWAITING, None)
    assert held(patient).target_id == host.pk
    placed, errors = drs_place_all(actor=ACTOR)
    assert (placed, errors) == (1, [])
    patient.refresh_from_db()
    assert (patient.state, patient.host_id) == (InstanceState.SCHEDULED, host.pk)


def test_the_staff_api_lists_places_and_refuses_with_errors_that_name_the_field(
    catalog: dict[str, object],
) -> None:
    tenant = make_tenant("api")
    one = make_host("p-one")
    automation("manual")
    a, b = create(tenant, "a"), create(tenant, "b")
    client = APIClient()
    client.force_authenticate(make_user("root", is_staff=True, is_superuser=True))
    listed = client.get("/api/v1/admin/drs/placements/?state=waiting").json()
    assert [(p["instance_name"], p["target"], p["state"]) for p in listed["results"]] == [
        ("b", "p-one", "waiting"),
        ("a", "p-one", "waiting"),
    ]
    assert listed["results"][0]["candidates"][0]["host"] == "p-one"
    rec_a = held(a).pk
    unknown = client.post(f"/api/v1/admin/drs/placements/{rec_a}/apply/", {"host": "nowhere"}, format="json")
    assert unknown.status_code == 400
    assert unknown.json()["errors"][0]["field"] == "host"
    no_reason = client.post(f"/api/v1/admin/drs/placements/{held(b).pk}/reject/", {}, format="json")
    assert no_reason.status_code == 400
    assert no_reason.json()["errors"][0]["field"] == "reason"
    placed = client.post(f"/api/v1/admin/drs/placements/{rec_a}/apply/", {"host": "p-one"}, format="json")
    assert placed.status_code == 200, placed.json()
    assert (placed.json()["state"], placed.json()["host"]) == ("placed", "p-one")
    again = client.post(f"/api/v1/admin/drs/placements/{rec_a}/apply/", format="json")
    assert again.status_code == 409
    everything = client.post("/api/v1/admin/drs/placements/apply/", format="json")
    assert everything.json() == {"placed": 1, "not_placed": []}
    b.refresh_from_db()
    assert b.host_id == one.pk
    # The settings carry the timeout; it is checked.
    bad = client.patch("/api/v1/admin/drs/", {"placement_timeout_seconds": 5}, format="json")
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["field"] == "placement_timeout_seconds"


def test_the_staff_page_shows_waiting_instances_and_places_one(catalog: dict[str, object]) -> None:
    from django.test import Client

    tenant = make_tenant("page")
    host = make_host("s-one")
    automation("manual")
    waiting = create(tenant, "wants-a-host")
    client = Client()
    client.force_login(make_user("boss", is_staff=True, is_superuser=True))
    page = client.get("/staff/drs/").content.decode()
    rec = held(waiting)
    assert f'data-placement="{rec.pk}" data-state="waiting"' in page
    assert "wants-a-host" in page
    assert "s-one" in page
    response = client.post(f"/staff/drs/placements/{rec.pk}/apply/", {"host": ""})
    assert response.status_code == 302
    waiting.refresh_from_db()
    assert (waiting.state, waiting.host_id) == (InstanceState.SCHEDULED, host.pk)
    assert AuditRecord.objects.filter(action="drs.place", actor_name="boss").exists()
