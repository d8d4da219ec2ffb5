"""Placement through the database: the host table built from rows, the claim under a row lock,
overcommit per host and aggregate, tenant-dedicated hosts, and the decision record in the API."""

from __future__ import annotations

import threading

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from compute.models import CpuMode, Flavor, Host, Image, ImageKind, Instance, InstanceState
from compute.services.placement import instance_place
from scheduler.models import Aggregate, PlacementDecision
from scheduler.services import NoValidHost
from tenants.models import Role, Tenant
from tests.factories import add_member, make_tenant


def make_host(name: str, cpus: int = 4, ram_mib: int = 8192, **extra: object) -> Host:
    values: dict[str, object] = {
        "name": name,
        "uri": "test:///default",
        "cpus": cpus,
        "ram_mib": ram_mib,
        "disk_gib": 100,
        "heartbeat_at": timezone.now(),
    }
    values.update(extra)
    return Host.objects.create(**values)


def make_instance(tenant: Tenant, name: str, vcpus: int = 1, ram_mib: int = 512) -> Instance:
    flavor, _ = Flavor.objects.get_or_create(
        name=f"p{vcpus}-{ram_mib}",
        defaults={"vcpus": vcpus, "ram_mib": ram_mib, "disk_gib": 1, "cpu_mode": CpuMode.EMULATED},
    )
    image, _ = Image.objects.get_or_create(
        name="p-image",
        defaults={"kind": ImageKind.KERNEL, "os_name": "t", "disk_path": "/x", "sha256": "0" * 64},
    )
    return Instance.objects.create(
        tenant=tenant,
        name=name,
        flavor=flavor,
        image=image,
        vcpus=vcpus,
        ram_mib=ram_mib,
        current_ram_mib=ram_mib,
        disk_gib=1,
        state=InstanceState.SCHEDULED,
    )


@pytest.mark.django_db
def test_placement_is_recorded_and_explained_through_the_api() -> None:
    tenant = make_tenant("sched")
    small = make_host("small", ram_mib=2048)
    big = make_host("big", ram_mib=16384)
    make_host("off", state="disabled")
    instance = make_instance(tenant, "web")
    assert instance_place(instance) == big  # spread: most free RAM
    record = PlacementDecision.objects.for_tenant(tenant).get(instance=instance).record
    assert record["host"] == "big"
    assert [(f["name"], f["in"], f["out"]) for f in record["filters"]][:1] == [("state", 3, 2)]
    assert record["filters"][0]["removed"] == [["off", "not enabled (disabled or in maintenance)"]]
    assert [c["host"] for c in record["top"]] == ["big", "small"]
    assert set(record["top"][0]["parts"]) >= {"ram", "cpu"}
    client = APIClient()
    client.force_authenticate(add_member(tenant, role=Role.VIEWER))
    shown = client.get(f"/api/v1/tenants/{tenant.slug}/instances/{instance.uuid}/placement/")
    assert shown.status_code == 200
    assert shown.json()["host"] == "big"
    assert shown.json()["filters"] == record["filters"]
    assert small.pk != big.pk


@pytest.mark.django_db
def test_overcommit_of_the_host_then_its_aggregate_then_the_default() -> None:
    tenant = make_tenant("ratio")
    host = make_host("h1", cpus=2)  # default 4.0: 8 vCPUs
    aggregate = Aggregate.objects.create(name="strict", cpu_ratio=1.0)
    aggregate.hosts.add(host)  # 2 vCPUs now
    for n in range(2):
        assert instance_place(make_instance(tenant, f"i{n}")) == host
    third = make_instance(tenant, "i2")
    with pytest.raises(NoValidHost) as refused:
        instance_place(third)
    assert "filter 'capacity' removed the last 1 candidate(s)" in str(refused.value)
    assert "nearest miss: h1: 1 vCPUs short" in str(refused.value)
    assert PlacementDecision.objects.for_tenant(tenant).get(instance=third).record["nearest_miss"]
    Host.objects.filter(pk=host.pk).update(cpu_ratio=2.0)  # the host's own ratio wins
    assert instance_place(third) == host


@pytest.mark.django_db
def test_hosts_dedicated_to_a_tenant_take_only_its_instances() -> None:
    mine, other = make_tenant("owner"), make_tenant("other")
    private = make_host("private", ram_mib=65536)
    shared = make_host("shared", ram_mib=4096)
    Aggregate.objects.create(name="owner-only", tenant=mine).hosts.add(private)
    assert instance_place(make_instance(mine, "a")) == private
    assert instance_place(make_instance(other, "b")) == shared
    Host.objects.filter(pk=shared.pk).update(state="maintenance")
    with pytest.raises(NoValidHost, match="filter 'aggregate' removed the last 1 candidate"):
        instance_place(make_instance(other, "c"))


@pytest.mark.django_db
def test_admin_rejects_impossible_overcommit_ratios() -> None:
    with pytest.raises(ValidationError) as caught:
        Aggregate(name="x", cpu_ratio=100.0, ram_ratio=0.0).full_clean(exclude=["hosts"])
    assert set(caught.value.message_dict) == {"cpu_ratio", "ram_ratio"}
    with pytest.raises(ValidationError) as host_error:
        Host(name="h", uri="x", ram_ratio=9.0).full_clean()
    assert "ram_ratio" in host_error.value.message_dict


@pytest.mark.django_db
def test_admin_rejects_impossible_minimum_and_maximum_memory_pairs() -> None:
    def errors(**values: object) -> dict[str, list[str]]:
        fields: dict[str, object] = {"name": "f", "vcpus": 1, "ram_mib": 512, "disk_gib": 1}
        fields.update(values)
        with pytest.raises(ValidationError) as caught:
            Flavor(**fields).full_clean()
        return caught.value.message_dict

    assert errors(min_ram_mib=1024) == {"min_ram_mib": ["The minimum RAM cannot be above the RAM."]}
    assert "min_ram_mib" in errors(allocation="dynamic")  # no minimum at all
    assert "min_ram_mib" in errors(allocation="dynamic", min_ram_mib=512)  # nothing to move between
    assert "min_ram_mib" in errors(min_ram_mib=4)  # below what any runtime starts with
    assert "min_ram_mib" in errors(min_ram_mib=256, balloon=False)
    Flavor(name="ok", vcpus=1, ram_mib=512, disk_gib=1, min_ram_mib=128, allocation="dynamic").full_clean()


@pytest.mark.django_db(transaction=True)
def test_one_hundred_concurrent_placements_never_overfill_a_host() -> None:
    """3 hosts with room for 60 one-vCPU instances; 100 placements from 40 threads on their own
    connections (PostgreSQL's default max_connections is 100, and the suite holds some)."""
    assert connection.vendor == "postgresql", "the race test is meant for PostgreSQL"
    tenant = make_tenant("crowd")
    elsewhere = make_host("elsewhere", cpus=64, ram_mib=262144)
    hosts = [make_host(f"c{n}", cpus=20, ram_mib=65536, cpu_ratio=1.0) for n in range(3)]
    # Only these three: a compute agent of the suite may register a host of its own at any moment.
    ours = Host.objects.filter(pk__in=[h.pk for h in hosts])
    instances = [make_instance(tenant, f"i{n}") for n in range(100)]
    workers = 40
    barrier = threading.Barrier(workers)
    placed: list[int] = []
    refused: list[str] = []
    lock = threading.Lock()

    def run(mine: list[Instance]) -> None:
        try:
            barrier.wait()
            for instance in mine:
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

    threads = [threading.Thread(target=run, args=(instances[w::workers],)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(placed) == 60, (len(placed), refused[:3])
    assert len(refused) == 40
    assert all(r.startswith("no valid host") for r in refused)
    for host in hosts:
        assert Instance.objects.unscoped().filter(host=host).count() <= 20
    assert sorted(placed.count(h.pk) for h in hosts) == [20, 20, 20]
    assert not Instance.objects.unscoped().filter(host=elsewhere).exists()


@pytest.mark.django_db
def test_a_resize_must_fit_in_what_its_host_has_free() -> None:
    """The instance's own reservation counts as free for its new size; nothing beyond the host's room."""
    from compute.services.resize import instance_resize
    from core.errors import Conflict
    from security.audit import Actor

    tenant = make_tenant("grow")
    host = make_host("tight", cpus=3, cpu_ratio=1.0)
    mine, other = make_instance(tenant, "mine"), make_instance(tenant, "other")
    Instance.objects.unscoped().filter(pk__in=[mine.pk, other.pk]).update(
        host=host, state=InstanceState.STOPPED
    )
    mine.refresh_from_db()
    actor = Actor("ops", "api", None)
    with pytest.raises(Conflict) as refused:
        instance_resize(actor=actor, instance=mine, vcpus=3, ram_mib=512)
    assert (refused.value.field, refused.value.rule) == ("ram_mib", "capacity")
    assert "host tight has no room for 3 vCPUs" in refused.value.message
    # 2 vCPUs: its own 1 comes back and the host's last free one is taken.
    instance_resize(actor=actor, instance=mine, vcpus=2, ram_mib=512)
    mine.refresh_from_db()
    assert (mine.vcpus, mine.state) == (2, InstanceState.RESIZING)
