"""The fewest moves that balance a small cluster, from a MILP (scipy's ``milp``, HiGHS): bench/drs.py.

Variables: x[i, h] binary (instance i on host h), L[h] the load of host h, s[h] >= (L[h] - mean)^2.
Objective: the number of instances not on their current host (unweighted: the goal counts moves;
the planner minimises moves first and cost only among near-equal moves).
Constraints: each instance on exactly one host; each host's reservations (vCPUs, RAM, disk) within
its capacity under overcommit, as the planner's room rule; L[h] = its instances' CPU share; the
level's ceiling L[h] <= ceiling (the planner stops only under both of its goals); and the level's
deviation sum_h s[h] <= n * target^2, which is std(L) <= target with the mean fixed.

The mean is fixed because the clusters are made for it (``drs_cluster.milp_spec``): one host shape,
and each instance's memory share below its CPU share, so a host's load (the larger share) is its
CPU share whatever the placement and the loads always sum to the same. The quadratic is made
linear two ways, over breakpoints b_0 = 0 < ... < b_K = ceiling (dense around the mean):

- relaxation: s[h] >= each tangent of (L - mean)^2 at the breakpoints. Every truly feasible
  placement satisfies it, so its optimum (or the solver's dual bound when a time limit stops it)
  is a LOWER bound on the true fewest moves;
- restriction: s[h] >= each secant between consecutive breakpoints (the convex piecewise-linear
  interpolation, above the parabola on [0, ceiling]). Its solutions are truly feasible, so its
  optimum is an UPPER bound (and a placement that proves it, checked again on the cluster).

scipy is imported when a solve runs (the bench extra; CI's tests skip this part without it).
"""

from __future__ import annotations

import importlib
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from scheduler.drs import Cluster, Threshold


@dataclass
class Solve:
    """One MILP solve: status, moves (the objective), the dual bound, and the placement's check."""

    kind: str  # "relaxation" (lower bound) or "restriction" (upper bound)
    status: str
    optimal: bool
    moves: int | None  # objective of the best placement found (None: none found)
    dual_bound: float | None
    lower_bound: int | None  # the proven bound on this model's optimum: ceil(dual bound)
    gap: float | None
    seconds: float
    std: float | None  # the found placement's true deviation and highest load, checked on the cluster
    max_load: float | None
    variables: int
    constraints: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "status": self.status,
            "optimal": self.optimal,
            "moves": self.moves,
            "dual_bound": None if self.dual_bound is None else round(self.dual_bound, 4),
            "lower_bound": self.lower_bound,
            "gap": None if self.gap is None else round(self.gap, 4),
            "seconds": round(self.seconds, 3),
            "std": None if self.std is None else round(self.std, 5),
            "max_load": None if self.max_load is None else round(self.max_load, 4),
            "variables": self.variables,
            "constraints": self.constraints,
        }


def available() -> bool:
    try:
        importlib.import_module("scipy.optimize")
    except ImportError:
        return False
    return True


def check_cpu_bound(c: Cluster) -> None:
    """ValueError unless every host has one shape and every instance's RAM share is below its CPU
    share (then a host's load is its CPU share in any placement, and the loads' sum is fixed)."""
    if c.n == 0 or np.ptp(c.cpus) > 0 or np.ptp(c.ram) > 0:
        raise ValueError("the MILP needs hosts of one shape")
    if (c.ram_demand / c.ram[0] > c.cpu / c.cpus[0] + 1e-12).any():
        raise ValueError("the MILP needs every instance's memory share below its CPU share")
    if not c.usable.all() or (c.overhead is not None and c.overhead.any()):
        raise ValueError("the MILP needs every host usable and no host overhead")


def breakpoints(mean: float, target: float, top: float) -> np.ndarray:
    """0, top, a grid of step target/4 within 8 targets of the mean, and a coarse grid of 0.05."""
    fine = mean + target * np.arange(-32, 33) / 4.0
    coarse = np.arange(0.0, top, 0.05)
    points = np.concatenate([[0.0, mean, top], fine, coarse])
    points = np.unique(np.round(points[(points >= 0.0) & (points <= top)], 12))
    out: np.ndarray = points
    return out


def solve(c: Cluster, threshold: Threshold, kind: str, time_limit: float = 60.0) -> Solve:
    """The fewest moves for ``threshold`` on ``c``, as a relaxation or a restriction (``kind``)."""
    if kind not in ("relaxation", "restriction"):
        raise ValueError(f"kind is relaxation or restriction, not {kind!r}")
    if threshold.target_std is None:
        raise ValueError("the MILP needs a level with a deviation target")
    check_cpu_bound(c)
    optimize = importlib.import_module("scipy.optimize")
    sparse = importlib.import_module("scipy.sparse")
    n, m = c.n, c.m
    share = c.cpu / c.cpus[0]  # each instance's load on any host
    mean = float(share.sum() / n)
    target = float(threshold.target_std)
    ceiling = float(threshold.ceiling(c.even()))  # the planner's (one host shape: the bound)
    b = breakpoints(mean, target, ceiling)
    if kind == "relaxation":  # tangents at each breakpoint: s >= 2(a - mean) L + mean^2 - a^2
        slopes = 2.0 * (b - mean)
        intercepts = mean * mean - b * b
    else:  # secants between consecutive breakpoints: s >= f(b_j) + (b_j + b_j+1 - 2 mean)(L - b_j)
        lo, hi = b[:-1], b[1:]
        slopes = lo + hi - 2.0 * mean
        intercepts = (lo - mean) ** 2 - slopes * lo
    k = len(slopes)

    nx = m * n
    xi = lambda i, h: i * n + h  # noqa: E731
    li = lambda h: nx + h  # noqa: E731
    si = lambda h: nx + n + h  # noqa: E731
    nv = nx + 2 * n
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    lower: list[np.ndarray] = []
    upper: list[np.ndarray] = []
    r0 = 0

    def add(
        r: np.ndarray, col: np.ndarray, v: np.ndarray, lo: np.ndarray, up: np.ndarray, count: int
    ) -> None:
        nonlocal r0
        rows.append(r + r0)
        cols.append(col)
        vals.append(v)
        lower.append(lo)
        upper.append(up)
        r0 += count

    inst = np.repeat(np.arange(m), n)
    hostcol = np.tile(np.arange(n), m)
    # Each instance on exactly one host.
    add(inst, xi(inst, hostcol), np.ones(nx), np.ones(m), np.ones(m), m)
    # Reservations within capacity, per resource.
    for r in range(3):
        add(hostcol, xi(inst, hostcol), c.size[r][inst], np.full(n, -np.inf), c.capacity[r].astype(float), n)
    # L[h] - sum_i share_i x[i, h] = 0.
    add(
        np.concatenate([hostcol, np.arange(n)]),
        np.concatenate([xi(inst, hostcol), li(np.arange(n))]),
        np.concatenate([-share[inst], np.ones(n)]),
        np.zeros(n),
        np.zeros(n),
        n,
    )
    # s[h] - slope * L[h] >= intercept, per line.
    hh = np.repeat(np.arange(n), k)
    line = np.tile(np.arange(k), n)
    line_rows = np.arange(n * k)
    add(
        np.concatenate([line_rows, line_rows]),
        np.concatenate([si(hh), li(hh)]),
        np.concatenate([np.ones(n * k), -slopes[line]]),
        intercepts[line],
        np.full(n * k, np.inf),
        n * k,
    )
    # sum_h s[h] <= n * target^2.
    add(
        np.zeros(n, dtype=np.int64),
        si(np.arange(n)),
        np.ones(n),
        np.array([-np.inf]),
        np.array([n * target**2]),
        1,
    )

    a = sparse.coo_array(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(r0, nv)
    ).tocsr()
    objective = np.zeros(nv)
    objective[xi(np.arange(m), c.host)] = -1.0  # moves = m - (instances that stay)
    integrality = np.concatenate([np.ones(nx), np.zeros(2 * n)])
    lb = np.zeros(nv)
    ub = np.concatenate([np.ones(nx), np.full(n, ceiling), np.full(n, np.inf)])
    started = time.perf_counter()
    res = optimize.milp(
        objective,
        integrality=integrality,
        bounds=optimize.Bounds(lb, ub),
        constraints=optimize.LinearConstraint(a, np.concatenate(lower), np.concatenate(upper)),
        options={"time_limit": time_limit, "disp": False},
    )
    seconds = time.perf_counter() - started
    status = {0: "optimal", 1: "time limit", 2: "infeasible", 3: "unbounded", 4: "solver error"}.get(
        int(res.status), str(res.status)
    )
    moves = std = top = None
    if res.x is not None:
        x = np.asarray(res.x[:nx]).reshape(m, n)
        placed = x.argmax(axis=1)
        moves = int((placed != c.host).sum())
        loads = np.bincount(placed, weights=share, minlength=n)
        std, top = float(loads.std()), float(loads.max())
    dual = getattr(res, "mip_dual_bound", None)
    dual_moves = None if dual is None or not math.isfinite(dual) else float(dual) + m
    if int(res.status) == 0 and moves is not None:
        dual_moves = float(moves) if dual_moves is None else dual_moves
    lower_bound = None if dual_moves is None else max(0, math.ceil(dual_moves - 1e-6))
    if int(res.status) == 2:
        lower_bound = None
    gap = getattr(res, "mip_gap", None)
    return Solve(
        kind=kind,
        status=status,
        optimal=int(res.status) == 0,
        moves=moves,
        dual_bound=dual_moves,
        lower_bound=lower_bound,
        gap=None if gap is None or not math.isfinite(gap) else float(gap),
        seconds=seconds,
        std=std,
        max_load=top,
        variables=nv,
        constraints=r0,
    )
