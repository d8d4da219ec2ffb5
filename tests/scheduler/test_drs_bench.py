"""The DRS benchmark's parts (bench/drs_*.py) on tiny clusters: the generator, the greedy baseline,
and the MILP's bounds (scipy is a dev dependency, so CI runs it).

No database: the clusters are numpy columns.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.drs_baseline import greedy
from bench.drs_cluster import Spec, generate, milp_spec
from bench.drs_milp import check_cpu_bound
from scheduler.drs import Cluster, move_cost, plan, threshold


def loads_of(c: Cluster, host: np.ndarray) -> np.ndarray:
    cpu = np.bincount(host, weights=c.cpu, minlength=c.n) / c.cpus
    ram = np.bincount(host, weights=c.ram_demand, minlength=c.n) / c.ram
    out: np.ndarray = np.maximum(cpu, ram)
    return out


def reserved_of(c: Cluster, host: np.ndarray) -> np.ndarray:
    return np.vstack([np.bincount(host, weights=c.size[r], minlength=c.n) for r in range(3)])


def test_generated_placements_fit_and_demand_is_below_size() -> None:
    g = generate(Spec(hosts=8, seed=3))
    for c in (g.skewed, g.balanced):
        assert c.m > 8
        np.testing.assert_allclose(c.reserved, reserved_of(c, c.host))
        assert (c.reserved <= c.capacity + 1e-9).all()
        # Overcommit: 4x CPU, 1x RAM and disk.
        np.testing.assert_allclose(c.capacity, np.vstack([c.cpus * 4, c.ram, c.capacity[2]]))
        assert ((c.cpu >= 0) & (c.cpu <= c.size[0])).all()
        assert ((c.ram_demand > 0) & (c.ram_demand <= c.size[1])).all()
        costs = [move_cost(bool(live), float(ram)) for live, ram in zip(c.live, c.size[1], strict=True)]
        np.testing.assert_allclose(c.cost, costs)
    # Same hosts, instances and sizes; only the demand differs.
    np.testing.assert_array_equal(g.skewed.host, g.balanced.host)
    np.testing.assert_array_equal(g.skewed.size, g.balanced.size)
    assert not np.array_equal(g.skewed.cpu, g.balanced.cpu)


def test_generator_is_deterministic_and_skews_the_hot_hosts() -> None:
    a, b = generate(Spec(hosts=200, seed=5)), generate(Spec(hosts=200, seed=5))
    np.testing.assert_array_equal(a.skewed.host, b.skewed.host)
    np.testing.assert_array_equal(a.skewed.cpu, b.skewed.cpu)
    assert not np.array_equal(a.skewed.host, generate(Spec(hosts=200, seed=6)).skewed.host)
    loads = a.skewed.loads()
    assert loads[a.hot].mean() > loads[~a.hot].mean() + 0.2
    assert a.balanced.loads().std() < loads.std()
    # Both live (VMs) and cold (containers) instances.
    assert 0.5 < a.skewed.live.mean() < 0.9


def test_milp_clusters_have_cpu_as_every_hosts_dominant_resource() -> None:
    c = generate(milp_spec(8, seed=1)).skewed
    check_cpu_bound(c)
    # Whatever the placement: a random one has loads equal to CPU shares.
    rng = np.random.default_rng(0)
    host = rng.integers(0, c.n, c.m)
    cpu = np.bincount(host, weights=c.cpu, minlength=c.n) / c.cpus
    np.testing.assert_allclose(loads_of(c, host), cpu)


def hand_cluster() -> Cluster:
    """Two 16-CPU hosts: h0 runs four instances (demand 6, 3, 2, 1 CPUs), h1 nothing."""
    cpu = np.array([6.0, 3.0, 2.0, 1.0])
    m = len(cpu)
    return Cluster(
        host_ids=np.array([1, 2]),
        host_names=["h0", "h1"],
        cpus=np.array([16.0, 16.0]),
        ram=np.array([65536.0, 65536.0]),
        capacity=np.array([[64.0, 64.0], [65536.0, 65536.0], [1000.0, 1000.0]]),
        reserved=np.array([[32.0, 0.0], [16384.0, 0.0], [160.0, 0.0]]),
        usable=np.ones(2, dtype=bool),
        dedicated_to=np.zeros(2, dtype=np.int64),
        kvm=np.ones(2, dtype=bool),
        iommu=np.zeros(2, dtype=bool),
        inst_ids=np.arange(1, m + 1),
        inst_names=[f"i{i}" for i in range(m)],
        host=np.zeros(m, dtype=np.int64),
        cpu=cpu,
        ram_demand=np.full(m, 1024.0),
        size=np.array([[8.0] * m, [4096.0] * m, [40.0] * m]),
        live=np.ones(m, dtype=bool),
        cost=np.full(m, 5.0),
        tenant=np.zeros(m, dtype=np.int64),
        group=np.full(m, -1, dtype=np.int64),
        needs_kvm=np.zeros(m, dtype=bool),
        needs_iommu=np.zeros(m, dtype=bool),
        ha=np.zeros(m, dtype=bool),
        fixed=[""] * m,
    )


def test_greedy_moves_the_biggest_instance_off_the_most_loaded_host() -> None:
    c = hand_cluster()  # loads 12/16 and 0: std 0.375
    result = greedy(c, 0.10)
    # First the 6-CPU instance (loads 6/16, 6/16: std 0): one move.
    assert result.moves == 1
    assert result.host_after.tolist() == [1, 0, 0, 0]
    assert result.std_after == pytest.approx(0.0)
    assert not result.cap_hit


def test_greedy_by_size_takes_the_biggest_flavor_even_when_it_is_idle() -> None:
    c = hand_cluster()
    c.size[0] = [2.0, 2.0, 16.0, 2.0]  # the 2-CPU instance has the biggest flavor (16 vCPUs)
    c.reserved[0, 0] = 22.0
    by_size = greedy(c, 0.10, by="size")
    by_demand = greedy(c, 0.10)
    assert by_demand.moves == 1
    assert by_demand.host_after.tolist() == [1, 0, 0, 0]
    # By size: the idle 16-vCPU one first (loads 10/16 and 2/16, std 0.25), then the 6-CPU one (4 and
    # 8), then the 16-vCPU one back from what is now the most loaded host: three moves for one.
    assert by_size.trajectory == pytest.approx([0.25, 0.125, 0.0])
    assert by_size.host_after.tolist() == [1, 0, 0, 0]
    with pytest.raises(ValueError, match="demand or size"):
        greedy(c, 0.10, by="age")


def test_greedy_respects_room_and_stops_when_nothing_fits() -> None:
    c = hand_cluster()
    c.capacity[0, 1] = 4.0  # h1 takes 4 vCPUs only: no 8-vCPU instance fits
    result = greedy(c, 0.10)
    assert result.moves == 0
    assert "fits" in result.stopped


def test_greedy_reaches_the_target_on_a_generated_cluster() -> None:
    c = generate(Spec(hosts=20, seed=2)).skewed
    target = threshold(3).target_std
    assert target is not None
    assert c.loads().std() > target
    result = greedy(c, target)
    assert not result.cap_hit
    assert result.moves > 0
    assert result.std_after <= target
    # Its figures are the cluster's own, recomputed from where it put the instances.
    loads = loads_of(c, result.host_after)
    assert loads.std() == pytest.approx(result.std_after, abs=1e-9)
    assert loads.max() == pytest.approx(result.max_after, abs=1e-9)
    assert (reserved_of(c, result.host_after) <= c.capacity + 1e-9).all()
    assert result.moves_to_reach(result.std_after) == result.moves


def test_milp_lower_bound_is_at_most_the_planners_moves() -> None:
    from bench.drs_milp import solve

    c = generate(milp_spec(8, seed=1)).skewed
    for level in (3, 4):
        t = threshold(level)
        assert t.target_std is not None
        p = plan(c, t)
        relax = solve(c, t, "relaxation", time_limit=30)
        restrict = solve(c, t, "restriction", time_limit=30)
        assert relax.optimal
        assert restrict.optimal
        assert relax.lower_bound is not None
        assert restrict.moves is not None
        assert relax.lower_bound <= restrict.moves
        # The restriction's placement truly meets the level's goals.
        assert restrict.std is not None
        assert restrict.max_load is not None
        assert restrict.std <= t.target_std + 1e-9
        assert restrict.max_load <= p.ceiling + 1e-9
        if p.balanced:  # a placement that meets the goals needs at least the fewest moves
            assert relax.lower_bound <= len(p.moves)
        assert p.std_before > t.target_std  # there was something to do
        assert relax.lower_bound >= 1
