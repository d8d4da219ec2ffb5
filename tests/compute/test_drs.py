"""DRS on the database: a pass's recommendations, automation levels, the concurrency cap, pins, the
cooldown, and the staff API. Hosts are rows with no agent here; tests/cluster/test_drs_lab.py
moves real guests on a lab."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from compute.models import (
    Flavor,
    Host,
    Instance,
    InstanceState,
    Operation,
    OperationKind,
    OperationState,
    UsageSample,
)
from compute.services.drs import drs_apply, drs_execute, drs_pass_run, drs_what_if, instance_drs_pin
from compute.services.drs_whatif import WHAT_IF_TIMEOUT, drs_what_if_expire, drs_what_if_run
from compute.services.evacuation import evacuate
from compute.services.hosts import host_maintenance_set
from core.errors import ServiceError
from scheduler.models import (
    Aggregate,
    DrsPass,
    DrsPassKind,
    DrsRecommendation,
    DrsSettings,
    RecommendationState,
)
from security.audit import Actor
from security.models import AuditRecord
from tenants.models import Tenant
from tests.compute.test_cluster_control import cluster_host, running_on
from tests.factories import make_tenant, make_user

pytestmark = pytest.mark.django_db
STAFF = Actor("ops", "api", None)


def busy(instance: Instance, cpu_pct: float, mem_mib: float = 128.0, samples: int = 3) -> None:
    """Samples of ``instance`` over the last minute: it uses ``cpu_pct`` % of a CPU."""
    now = timezone.now()
    UsageSample.objects.bulk_create(
        UsageSample(
            instance=instance,
            at=now - timedelta(seconds=10 * k),
            cpu_pct=cpu_pct,
            mem_bytes=int(mem_mib) << 20,
        )
        for k in range(samples)
    )


def lopsided(tenant: Tenant, n: int = 6) -> tuple[list[Host], list[Instance]]:
    """Three hosts of 4 CPUs; ``n`` instances each using 0.6 of a CPU, all on the first."""
    hosts = [cluster_host(f"d{k}", k + 1) for k in range(3)]
    vms = [running_on(hosts[0], tenant, f"vm{k}") for k in range(n)]
    for vm in vms:
        busy(vm, 60.0)
    return hosts, vms


def configure(**fields: Any) -> DrsSettings:
    settings = DrsSettings.current()
    for key, value in fields.items():
        setattr(settings, key, value)
    settings.save()
    return settings


def migrations() -> list[Operation]:
    return list(Operation.objects.unscoped().filter(kind=OperationKind.MIGRATE).order_by("pk"))


def test_in_manual_mode_a_pass_recommends_and_nothing_moves_until_staff_apply_exactly_one() -> None:
    hosts, _vms = lopsided(make_tenant("drs-manual"))
    configure(automation="manual", threshold=3)
    drs_pass = drs_pass_run(
        kind=DrsPassKind.REQUESTED, hosts=Host.objects.filter(pk__in=[h.pk for h in hosts])
    )
    assert drs_pass is not None
    recs = list(drs_pass.recommendations.order_by("order"))
    assert len(recs) >= 2
    assert {r.state for r in recs} == {RecommendationState.PROPOSED}
    assert not migrations()
    assert drs_pass.std_before > 0.3
    assert drs_pass.std_after <= 0.1  # two moves of two: 1.2 CPUs on each host
    first = recs[0]
    assert first.explanation["source"]["before"]["host"] == "d0"
    assert first.explanation["automation"] == "manual"

    applied = drs_apply(actor=STAFF, recommendation=recs[1])
    assert applied.state == RecommendationState.STARTED
    ops = migrations()
    assert [op.instance_id for op in ops] == [recs[1].instance_id]
    assert ops[0].params["drs"]["recommendation"] == recs[1].pk
    assert ops[0].params["drs"]["explanation"]["why_instance"] == recs[1].explanation["why_instance"]
    assert ops[0].params["target"] == recs[1].target.name
    states = dict(DrsRecommendation.objects.values_list("pk", "state"))
    assert [states[r.pk] for r in recs if r.pk != recs[1].pk] == [RecommendationState.PROPOSED] * (
        len(recs) - 1
    )


def test_fully_automated_moves_start_at_once_within_the_concurrency_cap_and_the_rest_follow() -> None:
    hosts, _vms = lopsided(make_tenant("drs-full"), n=6)
    configure(automation="full", threshold=5, max_concurrent=2)
    drs_pass = drs_pass_run(
        kind=DrsPassKind.REQUESTED, hosts=Host.objects.filter(pk__in=[h.pk for h in hosts])
    )
    assert drs_pass is not None
    assert drs_pass.moves >= 3
    states = list(drs_pass.recommendations.order_by("order").values_list("state", flat=True))
    assert states[:2] == [RecommendationState.STARTED] * 2
    assert set(states[2:]) == {RecommendationState.APPROVED}
    assert Instance.objects.unscoped().filter(state=InstanceState.MIGRATING).count() == 2
    # Nothing more starts while two moves run; when one ends, the next one does.
    assert drs_execute() == []
    op = migrations()[0]
    Operation.objects.unscoped().filter(pk=op.pk).update(
        state=OperationState.SUCCEEDED, finished=timezone.now()
    )
    Instance.objects.unscoped().filter(pk=op.instance_id).update(
        state=InstanceState.RUNNING, migration_host=None
    )
    started = drs_execute()
    assert len(started) == 1
    assert (
        DrsRecommendation.objects.get(operations__contains=[str(op.uuid)]).state
        == RecommendationState.SUCCEEDED
    )


def test_an_aggregate_in_manual_mode_keeps_its_hosts_moves_for_staff() -> None:
    hosts, _vms = lopsided(make_tenant("drs-agg"), n=6)
    configure(automation="full", threshold=5, max_concurrent=8)
    careful = Aggregate.objects.create(name="careful", drs_automation="manual")
    careful.hosts.add(hosts[2])
    drs_pass = drs_pass_run(
        kind=DrsPassKind.REQUESTED, hosts=Host.objects.filter(pk__in=[h.pk for h in hosts])
    )
    assert drs_pass is not None
    recs = list(drs_pass.recommendations.all())
    to_careful = [r for r in recs if r.target_id == hosts[2].pk]
    elsewhere = [r for r in recs if r.target_id != hosts[2].pk]
    assert to_careful
    assert elsewhere
    assert all(not r.automatic and r.state == RecommendationState.PROPOSED for r in to_careful)
    assert all(r.automatic and r.state == RecommendationState.STARTED for r in elsewhere)
    assert drs_pass.summary["automation"] == {"d0": "full", "d1": "full", "d2": "manual"}


def test_pinned_instances_and_those_that_moved_within_the_cooldown_stay() -> None:
    tenant = make_tenant("drs-pin")
    hosts, vms = lopsided(tenant, n=4)
    configure(automation="manual", threshold=5)
    instance_drs_pin(actor=STAFF, instance=vms[0], pinned=True)
    assert AuditRecord.objects.filter(action="instance.drs_pin").exists()
    Operation.objects.create(
        tenant=tenant,
        instance=vms[1],
        kind=OperationKind.MIGRATE,
        state=OperationState.SUCCEEDED,
        finished=timezone.now() - timedelta(minutes=5),
    )
    drs_pass = drs_pass_run(
        kind=DrsPassKind.REQUESTED, hosts=Host.objects.filter(pk__in=[h.pk for h in hosts])
    )
    assert drs_pass is not None
    moved = set(drs_pass.recommendations.values_list("instance_id", flat=True))
    assert moved
    assert vms[0].pk not in moved
    assert vms[1].pk not in moved
    assert drs_pass.summary["fixed"] == {"pinned: do not move (DRS)": 1, "moved within the cooldown": 1}


def test_periodic_passes_run_when_due_and_a_new_plan_supersedes_the_old() -> None:
    hosts, _vms = lopsided(make_tenant("drs-due"))
    only = Host.objects.filter(pk__in=[h.pk for h in hosts])
    configure(automation="manual", interval_seconds=300, enabled=True)
    first = drs_pass_run(hosts=only)
    assert first is not None
    assert drs_pass_run(hosts=only) is None  # not due yet
    DrsSettings.objects.update(last_pass_at=timezone.now() - timedelta(seconds=301))
    second = drs_pass_run(hosts=only)
    assert second is not None
    assert set(first.recommendations.values_list("state", flat=True)) == {RecommendationState.SUPERSEDED}
    configure(enabled=False, last_pass_at=None)
    assert drs_pass_run(hosts=only) is None
    # Passes older than 30 days go with the next pass (their migrations keep the explanations).
    DrsPass.objects.filter(pk=first.pk).update(created=timezone.now() - timedelta(days=31))
    assert drs_pass_run(kind=DrsPassKind.REQUESTED, hosts=only) is not None
    assert not DrsPass.objects.filter(pk=first.pk).exists()
    assert DrsPass.objects.filter(pk=second.pk).exists()


def test_a_recommendation_that_no_longer_holds_expires_with_the_reason() -> None:
    hosts, _vms = lopsided(make_tenant("drs-stale"))
    configure(automation="manual")
    drs_pass = drs_pass_run(
        kind=DrsPassKind.REQUESTED, hosts=Host.objects.filter(pk__in=[h.pk for h in hosts])
    )
    assert drs_pass is not None
    rec = drs_pass.recommendations.order_by("order").first()
    assert rec is not None
    Instance.objects.unscoped().filter(pk=rec.instance_id).update(state=InstanceState.STOPPED)
    done = drs_apply(actor=STAFF, recommendation=rec)
    assert done.state == RecommendationState.EXPIRED
    assert done.reason == "it is no longer running"
    assert not migrations()


def test_staff_api_shows_settings_passes_and_explanations_and_validates_each_field() -> None:
    _hosts, _vms = lopsided(make_tenant("drs-api"))
    admin = make_user("drs-admin", is_staff=True, is_superuser=True)
    client = APIClient()
    client.force_authenticate(admin)
    bad = client.patch("/api/v1/admin/drs/", {"threshold": 7, "automation": "sometimes"}, format="json")
    assert bad.status_code == 400
    assert {e["field"] for e in bad.json()["errors"]} == {"threshold", "automation"}
    ok = client.patch("/api/v1/admin/drs/", {"threshold": 4, "interval_seconds": 60}, format="json")
    assert ok.status_code == 200, ok.content
    assert (ok.json()["threshold"], ok.json()["interval_seconds"]) == (4, 60)
    assert DrsSettings.current().threshold == 4
    ran = client.post("/api/v1/admin/drs/passes/")
    assert ran.status_code == 201, ran.content
    body = ran.json()
    assert body["moves"] == len(body["recommendations"]) > 0
    rec = body["recommendations"][0]
    assert rec["source"] == "d0"
    assert rec["explanation"]["why_target"]
    assert {h["host"] for h in body["summary"]["hosts"]} >= {"d0", "d1", "d2"}
    listed = client.get("/api/v1/admin/drs/recommendations/?state=proposed")
    assert listed.status_code == 200
    assert len(listed.json()["results"]) == body["moves"]
    assert client.get("/api/v1/admin/drs/recommendations/?drs_pass=x").status_code == 400
    applied = client.post(f"/api/v1/admin/drs/recommendations/{rec['id']}/apply/")
    assert applied.status_code == 200
    assert applied.json()["state"] == "started"
    again = client.post(f"/api/v1/admin/drs/recommendations/{rec['id']}/apply/")
    assert again.status_code == 409
    assert "started" in again.content.decode()


def test_what_if_maintenance_predicts_the_moves_the_real_evacuation_then_claims() -> None:
    tenant = make_tenant("drs-whatif", instances=20)
    hosts = [cluster_host(f"w{k}", k + 1, cpus=8, ram_mib=16384) for k in range(3)]
    # w1 already holds a big instance: the spread weighers send the first moves to w2, then share.
    running_on(hosts[1], tenant, "big", vcpus=4, ram_mib=4096)
    vms = [running_on(hosts[0], tenant, f"m{k}", priority=k % 3) for k in range(5)]
    for vm in vms:
        busy(vm, 50.0)
    only = Host.objects.filter(pk__in=[h.pk for h in hosts])
    configure(automation="manual", threshold=3)
    asked = drs_what_if(actor=STAFF, maintenance=["w0"], hosts=only)
    assert asked.finished is None  # the control worker computes it
    predicted = drs_what_if_run(asked.pk)
    assert predicted.kind == DrsPassKind.WHAT_IF
    assert predicted.finished is not None
    evacuation = predicted.summary["evacuations"]["w0"]
    assert evacuation["blocked"] == []
    assert len(evacuation["moves"]) == 5
    assert not migrations()  # nothing moved
    assert not DrsRecommendation.objects.exists()
    hosts_after = {h["host"]: h for h in predicted.summary["hosts"]}
    assert hosts_after["w0"]["changed"] == 0.0
    assert hosts_after["w0"]["today"] > 0.3
    # The real maintenance pass moves each instance where the what-if said, in its order.
    host_maintenance_set(actor=STAFF, host=hosts[0], on=True)
    evacuate(Host.objects.get(pk=hosts[0].pk))
    claimed = {
        i.name: i.migration_host.name
        for i in Instance.objects.unscoped()
        .filter(pk__in=[v.pk for v in vms])
        .select_related("migration_host")
        if i.migration_host is not None
    }
    started = [m["name"] for m in evacuation["moves"]][: len(claimed)]
    assert sorted(claimed) == sorted(started)
    assert claimed == {m["name"]: m["target"] for m in evacuation["moves"] if m["name"] in claimed}
    assert len(claimed) >= 2  # NUBIS_EVACUATE_PARALLEL at a time


def test_what_if_adds_instances_changes_capacity_and_the_level_and_validates_each_field() -> None:
    hosts, _vms = lopsided(make_tenant("drs-whatif-add"))
    only = Host.objects.filter(pk__in=[h.pk for h in hosts])
    configure(automation="manual", threshold=3)
    Flavor.objects.create(name="w.two", vcpus=2, ram_mib=1024, disk_gib=5, cpu_mode="emulated")
    asked = drs_what_if(
        actor=STAFF,
        add_flavor="w.two",
        add_count=3,
        busy=0.5,
        capacity={"d1": {"cpus": 8}},
        threshold_level=5,
        hosts=only,
    )
    done = drs_what_if_run(asked.pk)
    assert done.threshold == 5
    assert done.error == ""
    assert [a["host"] is not None for a in done.summary["added"]] == [True, True, True]
    assert done.summary["threshold"]["level"] == 5
    lines = {h["host"]: h for h in done.summary["hosts"]}
    assert lines["d1"]["changed"] >= 0.0
    assert not migrations()
    for kwargs, field in (
        ({"maintenance": ["nowhere"]}, "maintenance"),
        ({"add_flavor": "nope", "add_count": 1}, "add_flavor"),
        ({"threshold_level": 9}, "threshold"),
        ({"busy": 0.0}, "busy"),
        ({"add_kind": "pod"}, "add_kind"),
        ({"capacity": {"d1": {"cpus": 0}}}, "capacity"),
    ):
        with pytest.raises(ServiceError) as caught:
            drs_what_if(actor=STAFF, hosts=only, **kwargs)
        assert caught.value.field == field


def test_a_what_if_left_unfinished_is_ended_with_why_and_a_late_worker_leaves_it() -> None:
    hosts, _vms = lopsided(make_tenant("drs-whatif-lost"))
    only = Host.objects.filter(pk__in=[h.pk for h in hosts])
    configure(automation="manual", threshold=3)
    lost = drs_what_if(actor=STAFF, maintenance=["d0"], hosts=only)
    fresh = drs_what_if(actor=STAFF, maintenance=["d0"], hosts=only)
    DrsPass.objects.filter(pk=lost.pk).update(created=timezone.now() - WHAT_IF_TIMEOUT - timedelta(seconds=1))
    assert drs_what_if_expire() == 1
    lost.refresh_from_db()
    fresh.refresh_from_db()
    assert lost.finished is not None
    assert "not computed within 15 minutes" in lost.error
    assert fresh.finished is None
    # The worker that had it, back late, finds it ended and leaves it so.
    assert drs_what_if_run(lost.pk).summary == {}
    lost.refresh_from_db()
    assert "not computed" in lost.error
    assert drs_what_if_run(fresh.pk).error == ""


def test_the_staff_page_shows_the_plan_applies_a_move_and_predicts_a_maintenance(client: Any) -> None:
    lopsided(make_tenant("drs-page"))
    configure(automation="manual", threshold=3)
    admin = make_user("drs-page-admin", is_staff=True, is_superuser=True)
    client.force_login(admin)
    assert client.post("/staff/drs/run/").status_code == 302
    page = client.get("/staff/drs/").content.decode()
    drs_pass = DrsPass.objects.get(kind=DrsPassKind.REQUESTED)
    recs = list(drs_pass.recommendations.order_by("order"))
    assert f'data-recommendation="{recs[0].pk}" data-state="proposed"' in page
    assert 'data-host="d0"' in page
    assert recs[0].explanation["why_instance"] in page.replace("&#x27;", "'")
    assert client.post(f"/staff/drs/recommendations/{recs[0].pk}/apply/").status_code == 302
    assert [op.instance_id for op in migrations()] == [recs[0].instance_id]
    done = client.post("/staff/drs/what-if/", {"maintenance": "d0"})
    assert done.status_code == 302
    assert 'data-what-if="pending"' in client.get(done["Location"]).content.decode()
    drs_what_if_run(DrsPass.objects.get(kind=DrsPassKind.WHAT_IF).pk)
    predicted = client.get(done["Location"]).content.decode()
    assert "Evacuation of d0" in predicted
    assert predicted.count("data-move=") == 5  # the five others still on d0; the moving one is busy
    bad = client.post("/staff/drs/what-if/", {"maintenance": "nowhere"}, follow=True)
    assert "no host named" in bad.content.decode()
