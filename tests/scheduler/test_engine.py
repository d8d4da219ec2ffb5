"""The placement engine on its own: each filter, each weigher, decision records, and properties.

Pure computation over the column table (no database): the filters and weighers must be right
before the claim code that uses them is.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.engine import (
    PACK,
    SPREAD,
    AggregateFilter,
    CapabilityFilter,
    CapacityFilter,
    Engine,
    HostRow,
    HostTable,
    LoadWeigher,
    RamWeigher,
    Request,
    Rows,
    ServerGroupFilter,
    SoftAffinityWeigher,
    StateFilter,
)


def host(i: int, **kw: object) -> HostRow:
    values: dict[str, object] = {"id": i, "name": f"h{i}", "vcpus": 4, "ram_mib": 8192, "disk_gib": 100}
    values.update(kw)
    return HostRow(**values)  # type: ignore[arg-type]


SMALL = Request(vcpus=1, ram_mib=1024, disk_gib=10, tenant_id=7)


def passing(flt: object, table: HostTable, request: Request = SMALL) -> list[str]:
    mask = flt.mask(table, request)  # type: ignore[attr-defined]
    if mask is None:  # nothing to check: every host passes
        return list(table.names)
    return [table.names[i] for i in np.flatnonzero(mask)]


def test_state_filter_keeps_enabled_hosts_with_a_fresh_heartbeat() -> None:
    table = HostTable([host(1), host(2, enabled=False), host(3, alive=False)])
    assert passing(StateFilter(), table) == ["h1"]
    assert StateFilter().why(table, SMALL, 1) == "not enabled (disabled or in maintenance)"
    assert StateFilter().why(table, SMALL, 2) == "agent heartbeat is stale"


def test_capability_filter_needs_working_kvm_and_an_iommu_only_when_asked() -> None:
    table = HostTable([host(1), host(2, kvm=True), host(3, kvm=True, iommu=True)])
    assert passing(CapabilityFilter(), table) == ["h1", "h2", "h3"]
    kvm = Request(1, 512, 1, needs_kvm=True)
    assert passing(CapabilityFilter(), table, kvm) == ["h2", "h3"]
    assert CapabilityFilter().why(table, kvm, 0) == "no working KVM"
    both = Request(1, 512, 1, needs_kvm=True, needs_iommu=True)
    assert passing(CapabilityFilter(), table, both) == ["h3"]
    assert CapabilityFilter().why(table, both, 1) == "no IOMMU for PCI passthrough"


def test_aggregate_filter_keeps_dedicated_hosts_for_their_tenant() -> None:
    table = HostTable([host(1), host(2, dedicated_to=7), host(3, dedicated_to=8)])
    assert passing(AggregateFilter(), table, SMALL) == ["h1", "h2"]
    assert passing(AggregateFilter(), table, Request(1, 512, 1, tenant_id=9)) == ["h1"]


def test_server_group_filter_affinity_and_anti_affinity() -> None:
    table = HostTable([host(1), host(2), host(3)])
    anti = Request(1, 512, 1, group_policy="anti-affinity", group_hosts=frozenset({1, 3}))
    assert passing(ServerGroupFilter(), table, anti) == ["h2"]
    together = Request(1, 512, 1, group_policy="affinity", group_hosts=frozenset({3}))
    assert passing(ServerGroupFilter(), table, together) == ["h3"]
    first = Request(1, 512, 1, group_policy="affinity")
    assert passing(ServerGroupFilter(), table, first) == ["h1", "h2", "h3"]
    soft = Request(1, 512, 1, group_policy="soft-anti-affinity", group_hosts=frozenset({1}))
    assert passing(ServerGroupFilter(), table, soft) == ["h1", "h2", "h3"]  # soft ones only weigh


def test_capacity_filter_counts_overcommit_and_what_is_used() -> None:
    table = HostTable(
        [
            host(1, vcpus=2, cpu_ratio=4.0, used_vcpus=7),  # 8 vCPUs with overcommit, 7 used
            host(2, vcpus=2, cpu_ratio=1.0),  # 2 vCPUs
            host(3, ram_mib=4096, used_ram_mib=3584),
        ]
    )
    need = Request(vcpus=2, ram_mib=1024, disk_gib=10)
    assert passing(CapacityFilter(), table, need) == ["h2"]
    assert CapacityFilter().why(table, need, 0) == "1 vCPUs short"
    assert CapacityFilter().why(table, need, 2) == "512 MiB RAM short"


def test_weighers_spread_pack_load_and_soft_affinity() -> None:
    table = HostTable(
        [host(1, used_ram_mib=6144, load=0.9), host(2, used_ram_mib=1024, load=0.1), host(3, load=0.5)]
    )
    rows = Rows.of(table, np.arange(3))
    free = RamWeigher().raw(rows, SMALL)
    assert free is not None
    assert free[1] > free[0]
    idle = LoadWeigher().raw(rows, SMALL)
    assert idle is not None
    assert idle.tolist() == pytest.approx([0.1, 0.9, 0.5])
    spread = Engine(weighers={"ram": 1.0}).select(table, SMALL)
    pack = Engine(weighers={"ram": -1.0}).select(table, SMALL)
    assert (spread.host, pack.host) == ("h3", "h1")
    assert Engine(weighers={"load": 1.0}).select(table, SMALL).host == "h2"
    soft = Request(1, 512, 1, group_policy="soft-affinity", group_hosts=frozenset({3}))
    near = SoftAffinityWeigher().raw(rows, soft)
    assert near is not None
    assert near.tolist() == [0.0, 0.0, 1.0]
    assert SoftAffinityWeigher().raw(rows, SMALL) is None  # no group: it adds nothing
    assert Engine(weighers={"ram": -1.0, "soft_affinity": 5.0}).select(table, soft).host == "h3"


def test_a_decision_explains_itself() -> None:
    table = HostTable([host(1, enabled=False), host(2, kvm=True), host(3, kvm=True, used_ram_mib=2048)])
    decision = Engine().select(table, Request(1, 1024, 10, needs_kvm=True))
    steps = {s.name: (s.hosts_in, s.hosts_out, s.removed) for s in decision.steps}
    assert steps["state"] == (3, 2, [("h1", "not enabled (disabled or in maintenance)")])
    assert steps["capability"][:2] == (2, 2)
    assert decision.host == "h2"  # more RAM free after the request: spread
    assert [c.host for c in decision.top] == ["h2", "h3"]
    assert set(decision.top[0].parts) == set(SPREAD) - {"soft_affinity"}  # no group: not weighed
    assert decision.top[0].weight == pytest.approx(sum(decision.top[0].parts.values()), abs=1e-5)
    assert decision.as_dict()["filters"][0] == {
        "name": "state",
        "in": 3,
        "out": 2,
        "removed": [["h1", "not enabled (disabled or in maintenance)"]],
    }


def test_no_valid_host_names_the_filter_and_the_nearest_miss() -> None:
    table = HostTable([host(1, used_ram_mib=7680), host(2, used_ram_mib=4096), host(3, enabled=False)])
    decision = Engine().select(table, Request(1, 6144, 10))
    assert decision.host_id is None
    assert decision.error.startswith("no valid host: filter 'capacity' removed the last 2 candidate(s)")
    assert decision.nearest_miss == "h2: 2048 MiB RAM short"
    assert Engine().select(HostTable(), SMALL).error == "no valid host: no compute host is registered"


def test_never_fits_looks_past_what_waiting_can_change() -> None:
    """Full, disabled or dead hosts may have room later; a host too small or of the wrong kind never."""
    table = HostTable(
        [
            host(1, used_vcpus=16, used_ram_mib=8192),  # full now
            host(2, enabled=False, ram_mib=16384),  # disabled now
            host(3, dedicated_to=99, ram_mib=65536),  # someone else's
        ]
    )
    engine = Engine()
    assert engine.never_fits(table, Request(1, 8192, 10, tenant_id=7)) == ""
    assert engine.never_fits(table, Request(1, 16384, 10, tenant_id=7)) == ""  # h2, once enabled
    assert engine.never_fits(table, Request(1, 32768, 10, tenant_id=7)) == (
        "larger than any host: it needs 32768 MiB RAM (the largest host has 16384)"
    )
    assert engine.never_fits(table, Request(1, 32768, 10, tenant_id=99)) == ""  # its dedicated host
    assert engine.never_fits(table, Request(1, 1024, 10, needs_kvm=True)) == (
        "no host has the capability or aggregate it needs"
    )
    assert engine.never_fits(table, Request(17, 1024, 500, tenant_id=7)) == (
        "larger than any host: it needs 17 vCPUs (the largest host has 16), "
        "500 GiB disk (the largest host has 100)"
    )
    assert engine.never_fits(HostTable(), SMALL) == "no compute host is registered"


def test_unknown_filters_and_weighers_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown filter"):
        Engine(filters=["state", "colour"])
    with pytest.raises(ValueError, match="unknown weigher"):
        Engine(weighers={"luck": 1.0})


def test_upsert_refreshes_a_row_in_place_and_claims_count() -> None:
    table = HostTable([host(1), host(2)])
    table.upsert(host(2, enabled=False))
    table.upsert(host(3))
    assert len(table) == 3
    assert passing(StateFilter(), table) == ["h1", "h3"]
    table.claim(1, Request(4, 1024, 10))
    assert table.free()[:, 0].tolist() == [12.0, 7168.0, 90.0]


# -- properties ------------------------------------------------------------------------------------
hosts_strategy: st.SearchStrategy[list[dict[str, object]]] = st.lists(
    st.builds(
        dict,
        vcpus=st.integers(1, 8),
        ram_mib=st.integers(512, 16384),
        disk_gib=st.integers(10, 200),
        cpu_ratio=st.sampled_from([1.0, 2.0, 4.0]),
        dedicated_to=st.sampled_from([0, 0, 1, 2]),
    ),
    min_size=1,
    max_size=12,
)
requests_strategy = st.lists(
    st.builds(
        Request,
        vcpus=st.integers(1, 4),
        ram_mib=st.integers(128, 4096),
        disk_gib=st.integers(1, 40),
        tenant_id=st.sampled_from([1, 2, 3]),
        group_policy=st.sampled_from(["", "anti-affinity"]),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(hosts=hosts_strategy, requests=requests_strategy, pack=st.booleans())
def test_placement_never_breaks_capacity_anti_affinity_or_dedicated_aggregates(
    hosts: list[dict[str, object]], requests: list[Request], pack: bool
) -> None:
    rows = [HostRow(id=i + 1, name=f"h{i + 1}", **spec) for i, spec in enumerate(hosts)]  # type: ignore[arg-type]
    table = HostTable(rows)
    engine = Engine(weighers=PACK if pack else SPREAD)
    group: set[int] = set()  # one anti-affinity group shared by the requests that ask for it
    for base in requests:
        request = (
            Request(**{**base.__dict__, "group_hosts": frozenset(group)})
            if base.group_policy == "anti-affinity"
            else base
        )
        decision = engine.select(table, request)
        if decision.host_id is None:
            continue
        i = table.index[decision.host_id]
        assert table.dedicated_to[i] in (0, request.tenant_id)
        if request.group_policy == "anti-affinity":
            assert decision.host_id not in group
            group.add(decision.host_id)
        table.claim(decision.host_id, request)
        assert (table.used[:, i] <= table.capacity[:, i]).all()
    assert (table.used <= table.capacity).all()
