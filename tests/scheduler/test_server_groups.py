"""Server groups through the API and placement: hard and soft affinity and anti-affinity, the
errors that name the field, and concurrent members of one anti-affinity group."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, transaction
from rest_framework.test import APIClient

from compute.models import Host, Instance, InstanceState, ServerGroup
from compute.services.instances import instance_create
from compute.services.placement import instance_place
from scheduler.models import PlacementDecision
from scheduler.services import NoValidHost
from security.audit import Actor
from tenants.models import Role, Tenant
from tests.factories import add_member, make_tenant
from tests.scheduler.conftest import create
from tests.scheduler.test_placement import make_host, make_instance


def api(tenant: Tenant) -> APIClient:
    client = APIClient()
    client.force_authenticate(add_member(tenant, role=Role.MEMBER))
    return client


def test_server_groups_are_created_listed_and_refused_with_the_field_named(
    catalog: dict[str, object],
) -> None:
    tenant = make_tenant("groups")
    client = api(tenant)
    base = f"/api/v1/tenants/{tenant.slug}/server-groups/"
    made = client.post(base, {"name": "web", "policy": "anti-affinity"}, format="json")
    assert made.status_code == 201, made.content
    bad = client.post(base, {"name": "db", "policy": "sometimes"}, format="json")
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["field"] == "policy"
    taken = client.post(base, {"name": "web", "policy": "affinity"}, format="json")
    assert taken.status_code == 409
    assert taken.json()["errors"][0]["field"] == "name"
    unknown = client.post(
        f"/api/v1/tenants/{tenant.slug}/instances/",
        {"name": "x", "flavor": "q.one", "image": "q-image", "network": None, "server_group": "nope"},
        format="json",
    )
    assert unknown.status_code == 400
    assert unknown.json()["errors"][0]["field"] == "server_group"
    make_host("g1", cpus=4, cpu_ratio=1.0)
    member = client.post(
        f"/api/v1/tenants/{tenant.slug}/instances/",
        {"name": "w1", "flavor": "q.one", "image": "q-image", "network": None, "server_group": "web"},
        format="json",
    )
    assert member.status_code == 202, member.content
    shown = client.get(base).json()["results"]
    assert [(g["name"], g["policy"], g["members"]) for g in shown] == [("web", "anti-affinity", ["w1"])]
    group_id = shown[0]["id"]
    assert client.delete(f"{base}{group_id}/").status_code == 409  # w1 is in it
    w1 = Instance.objects.for_tenant(tenant).get(name="w1")
    assert client.get(f"/api/v1/tenants/{tenant.slug}/instances/{w1.uuid}/").json()["server_group"] == "web"


def test_anti_affinity_puts_members_on_different_hosts_and_says_why_when_it_cannot(
    catalog: dict[str, object],
) -> None:
    tenant = make_tenant("apart")
    hosts = [make_host(f"a{n}", cpus=8, cpu_ratio=1.0) for n in range(2)]
    ServerGroup.objects.create(tenant=tenant, name="ha", policy="anti-affinity")
    first = create(tenant, "db1", server_group="ha")
    second = create(tenant, "db2", server_group="ha")
    assert {first.host_id, second.host_id} == {h.pk for h in hosts}
    third = create(tenant, "db3", server_group="ha")
    assert third.state == InstanceState.ERROR
    assert "filter 'server_group' removed the last 2 candidate(s)" in third.fault
    assert "already runs a member of the anti-affinity group" in third.fault
    record = PlacementDecision.objects.for_tenant(tenant).get(instance=third).record
    assert next(f for f in record["filters"] if f["name"] == "server_group")["out"] == 0
    # Outside the group, the same hosts still take instances.
    assert create(tenant, "free").state == InstanceState.SCHEDULED


def test_affinity_keeps_members_together_until_their_host_is_full(catalog: dict[str, object]) -> None:
    tenant = make_tenant("together")
    small = make_host("t-small", cpus=3, cpu_ratio=1.0, ram_mib=65536)
    other = make_host("t-other", cpus=64, cpu_ratio=1.0, ram_mib=65536, state="disabled")
    ServerGroup.objects.create(tenant=tenant, name="pair", policy="affinity")
    members = [create(tenant, "m0", server_group="pair")]  # the only enabled host
    Host.objects.filter(pk=other.pk).update(state="enabled")
    assert create(tenant, "loner").host_id == other.pk  # spreading prefers the big empty host
    members += [create(tenant, f"m{n}", server_group="pair") for n in (1, 2)]
    assert {m.host_id for m in members} == {small.pk}
    overflow = create(tenant, "m3", server_group="pair")
    assert overflow.state == InstanceState.ERROR
    # The group narrowed the choice to its host; that host is full.
    assert "filter 'capacity' removed the last 1 candidate(s) (1 vCPUs short on t-small)" in overflow.fault
    record = PlacementDecision.objects.for_tenant(tenant).get(instance=overflow).record
    step = next(f for f in record["filters"] if f["name"] == "server_group")
    assert step["removed"] == [["t-other", "does not run the affinity group's members"]]


def test_soft_policies_prefer_but_do_not_require(catalog: dict[str, object]) -> None:
    tenant = make_tenant("soft")
    small = make_host("s-small", cpus=2, cpu_ratio=1.0, ram_mib=2048)
    big = make_host("s-big", cpus=2, cpu_ratio=1.0, ram_mib=65536)
    ServerGroup.objects.create(tenant=tenant, name="near", policy="soft-affinity")
    ServerGroup.objects.create(tenant=tenant, name="far", policy="soft-anti-affinity")
    n1 = create(tenant, "n1", server_group="near")
    assert n1.host_id == big.pk  # the first goes where spreading sends it
    n2 = create(tenant, "n2", server_group="near")
    assert n2.host_id == big.pk
    n3 = create(tenant, "n3", server_group="near")  # big is full: soft affinity gives way
    assert n3.host_id == small.pk
    f1 = create(tenant, "f1", server_group="far")
    assert f1.host_id == small.pk  # the only room left
    assert create(tenant, "f2", server_group="far").state == InstanceState.ERROR  # full, not "anti"


@pytest.mark.django_db(transaction=True)
def test_concurrent_members_of_an_anti_affinity_group_never_share_a_host() -> None:
    assert connection.vendor == "postgresql", "the race test is meant for PostgreSQL"
    tenant = make_tenant("race-apart")
    hosts = [make_host(f"r{n}", cpus=16, cpu_ratio=1.0, ram_mib=65536) for n in range(4)]
    ours = Host.objects.filter(pk__in=[h.pk for h in hosts])
    group = ServerGroup.objects.create(tenant=tenant, name="spread", policy="anti-affinity")
    instances = [make_instance(tenant, f"x{n}") for n in range(8)]
    Instance.objects.unscoped().filter(pk__in=[i.pk for i in instances]).update(server_group=group)
    barrier = threading.Barrier(len(instances))
    placed: list[int] = []
    refused: list[str] = []
    lock = threading.Lock()

    def run(instance: Instance) -> None:
        try:
            instance.refresh_from_db()
            barrier.wait()
            try:
                with transaction.atomic():
                    host = instance_place(instance, ours)
                with lock:
                    placed.append(host.pk)
            except NoValidHost as exc:
                with lock:
                    refused.append(str(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(placed) == sorted(h.pk for h in hosts), (placed, refused)
    assert len(refused) == 4
    assert all("server_group" in r for r in refused)


def test_a_server_group_of_another_tenant_cannot_be_named(catalog: dict[str, object]) -> None:
    mine, theirs = make_tenant("mine-g"), make_tenant("theirs-g")
    make_host("o1", cpus=4)
    ServerGroup.objects.create(tenant=theirs, name="secret", policy="affinity")
    from core.errors import ServiceError

    with pytest.raises(ServiceError) as refused:
        instance_create(
            actor=Actor("t", "api", None),
            tenant=mine,
            name="x",
            flavor="q.one",
            image="q-image",
            network=None,
            server_group="secret",
        )
    assert (refused.value.field, refused.value.rule) == ("server_group", "exists")
