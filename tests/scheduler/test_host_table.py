"""The per-process host table stays equal to one built from scratch, while re-reading only what
changed: a host's slow part when it was saved, everything when aggregates or the set of hosts
changed, and the live columns (usage, state, heartbeat) every time."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from compute.models import Host, Instance, InstanceState
from scheduler.engine import HostTable
from scheduler.hosts import CachedTable, host_rows
from scheduler.models import Aggregate
from tests.factories import make_tenant
from tests.scheduler.test_placement import make_host, make_instance


def snapshot(table: HostTable) -> dict[int, tuple[object, ...]]:
    return {
        int(host_id): (
            table.names[i],
            tuple(table.capacity[:, i]),
            tuple(table.used[:, i]),
            bool(table.enabled[i]),
            bool(table.alive[i]),
            int(table.dedicated_to[i]),
            float(table.load[i]),
        )
        for i, host_id in enumerate(table.ids)
    }


def check(cache: CachedTable) -> dict[str, int]:
    """The cached table, refreshed, equals a fresh one; returns how many reloads that took."""
    before = dict(cache.reloads)
    with cache.use() as table:
        cached = snapshot(table)
    assert cached == snapshot(HostTable(host_rows()))
    return {k: cache.reloads[k] - before[k] for k in before}


@pytest.mark.django_db
def test_the_cached_table_follows_every_kind_of_change_and_rereads_only_what_moved() -> None:
    tenant = make_tenant("cache")
    first = make_host("k1", cpus=4)
    make_host("k2", cpus=8)
    cache = CachedTable()
    assert check(cache) == {"full": 1, "hosts": 0}
    assert check(cache) == {"full": 0, "hosts": 0}  # nothing changed: live columns only

    instance = make_instance(tenant, "on-k1", vcpus=3)
    Instance.objects.unscoped().filter(pk=instance.pk).update(host=first)
    assert check(cache) == {"full": 0, "hosts": 0}  # usage is live
    with cache.use() as table:
        assert table.used[0, table.index[first.pk]] == 3

    first.cpu_ratio = 1.0
    first.save()
    assert check(cache) == {"full": 0, "hosts": 1}  # only the edited host is re-read
    with cache.use() as table:
        assert table.capacity[0, table.index[first.pk]] == 4

    Host.objects.filter(pk=first.pk).update(
        heartbeat_at=timezone.now() - timedelta(hours=1), state="maintenance"
    )
    assert check(cache) == {"full": 0, "hosts": 0}
    with cache.use() as table:
        assert not table.alive[table.index[first.pk]]
        assert not table.enabled[table.index[first.pk]]

    aggregate = Aggregate.objects.create(name="mine-only", tenant=tenant)
    assert check(cache)["full"] == 1
    aggregate.hosts.add(first)  # an M2M change saves no aggregate: the signal moves changed_at
    assert check(cache)["full"] == 1
    with cache.use() as table:
        assert table.dedicated_to[table.index[first.pk]] == tenant.pk
    Aggregate.objects.filter(pk=aggregate.pk).update(cpu_ratio=0.5)
    assert check(cache)["full"] == 1
    first.aggregates.remove(aggregate)  # from the host's side too
    assert check(cache)["full"] == 1

    third = make_host("k3")
    assert check(cache)["full"] == 1
    Instance.objects.unscoped().filter(pk=instance.pk).update(state=InstanceState.DELETED)
    third.delete()
    make_host("k4")  # one gone, one new: the count alone would not see it
    assert check(cache)["full"] == 1
    with cache.use() as table:
        assert sorted(table.names) == ["k1", "k2", "k4"]
        assert np.all(table.used == 0)


@pytest.mark.django_db
def test_placement_uses_the_cached_table_and_sees_claims_at_once() -> None:
    from compute.services.placement import instance_place
    from scheduler.hosts import HOSTS
    from scheduler.services import NoValidHost

    HOSTS.clear()
    tenant = make_tenant("cached-place")
    host = make_host("only", cpus=2, cpu_ratio=1.0)
    before = dict(HOSTS.reloads)
    assert instance_place(make_instance(tenant, "a")) == host
    assert instance_place(make_instance(tenant, "b")) == host
    with pytest.raises(NoValidHost, match="filter 'capacity'"):
        instance_place(make_instance(tenant, "c"))
    assert HOSTS.reloads["full"] - before["full"] == 1  # built once, then kept up to date
