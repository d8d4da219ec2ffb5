"""The DRS benchmark's table, goals and plot (bench/drs.py)."""

from __future__ import annotations

import hashlib
import importlib
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.drs_milp import Solve


def _yes(flag: bool | None) -> str:
    return "n/a" if flag is None else ("met" if flag else "NOT met")


def print_header() -> None:
    print(
        f"{'hosts':>6} {'case':<9}{'lvl':>3} | {'moves':>6} {'to tgt':>6} {'cpu s':>7} {'wall s':>7} "
        f"{'no expl':>7} {'std before>after':>16} {'max/bnd':>7} {'mean/bnd':>8} | "
        f"{'greedy':>6} {'s':>6} {'std':>6} {'max/bnd':>7} | {'ratio':>5}"
    )


def print_row(row: dict[str, Any], variant: str = "") -> None:
    p, b, g = row["planner"], row["baseline"], row["goals"]
    cap = "*" if b["cap_hit"] else " "
    ratio = "-" if g["moves_ratio"] is None else f"{g['moves_ratio']:.2f}"
    to_target = "-" if p["moves_to_target_std"] is None else str(p["moves_to_target_std"])
    flags = "" if p["balanced"] else "  (short of its goals)"
    print(
        f"{row['hosts']:>6} {row['case']:<9}{row['level']:>3} | {p['moves']:>6} {to_target:>6} "
        f"{p['cpu_seconds']:>7.3f} {p['seconds']:>7.3f} {p['cpu_seconds_no_explain']:>7.3f} "
        f"{p['std_before']:>7.3f}>{p['std_after']:<8.4f} {p['max_over_bound']:>7.3f} "
        f"{p['mean_over_bound']:>8.3f} | {b['moves']:>5}{cap} {b['seconds']:>6.2f} {b['std_after']:>6.3f} "
        f"{b['max_over_bound']:>7.3f} | {ratio:>5}{flags}" + (f"   [{variant}]" if variant else "")
    )


def judge_milp(moves: int, balanced: bool, relax: Solve, restrict: Solve, goal: float) -> dict[str, Any]:
    """The planner's moves against the MILP's bounds on the fewest moves (lower bound first:
    conservative). met: True / False / None (undecided or nothing to compare)."""
    if relax.status == "infeasible":
        return {
            "lower_bound": None,
            "upper_bound": None,
            "met": None,
            "verdict": "n/a: no placement meets this level's goals (the relaxation is infeasible)",
        }
    lower = relax.lower_bound if relax.lower_bound is not None else 0
    upper = restrict.moves
    out: dict[str, Any] = {
        "lower_bound": lower,
        "lower_bound_proven_optimal": relax.optimal,
        "upper_bound": upper,
        "upper_bound_proven_optimal": restrict.optimal,
        "ratio_vs_lower": None if lower == 0 else round(moves / lower, 3),
        "ratio_vs_upper": None if not upper else round(moves / upper, 3),
    }
    if not balanced:
        reach = f"{upper} moves reach them" if upper is not None else "the MILP found no placement in time"
        out.update(met=False if upper is not None else None, verdict=f"planner short of the goals; {reach}")
    elif moves <= goal * lower or moves == 0:
        out.update(met=True, verdict=f"met: {moves} <= {goal} x {lower} (lower bound)")
    elif upper is not None and moves > goal * upper:
        out.update(met=False, verdict=f"NOT met: {moves} > {goal} x {upper} (a placement with {upper} moves)")
    else:
        out.update(met=None, verdict=f"undecided: {moves} between {goal} x {lower} and {goal} x {upper}")
    return out


def print_milp_row(row: dict[str, Any]) -> None:
    r, s, p, b = row["relaxation"], row["restriction"], row["planner"], row["baseline"]
    print(
        f"  {row['hosts']:>3} hosts seed {row['seed']} ({row['instances']} instances, largest "
        f"{row['largest_instance_share']:.2f}) L{row['level']}: planner {p['moves']} "
        f"(std {p['std_after']:.4f}, max {p['max_after']:.3f} / ceiling {p['ceiling']:.3f}), greedy "
        f"{b['moves']}{'*' if b['cap_hit'] else ''} (std {b['std_after']:.3f}); MILP lower "
        f"{r['lower_bound']} [{r['status']}, {r['seconds']:.1f} s], upper {s['moves']} [{s['status']}, "
        f"{s['seconds']:.1f} s]: {row['goal']['verdict']}"
    )


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    passes, sweep, milp = results["passes"], results["sweep"], results["milp"]

    def brief(row: dict[str, Any]) -> str:
        name = row.get("variant", "")
        return f"{row['hosts']} {row['case']}{' ' + name if name else ''} L{row['level']}"

    big = [r for r in passes if r["hosts"] == 10000]
    out: dict[str, Any] = {
        "time_at_10000": [
            {
                "pass": brief(r),
                "cpu_seconds": r["planner"]["cpu_seconds"],
                "wall_seconds": r["planner"]["seconds"],
                "cpu_seconds_no_explain": r["planner"]["cpu_seconds_no_explain"],
                "moves": r["planner"]["moves"],
                "met": r["goals"]["time_met"],
                "cpu_seconds_capped": r["planner"]["cpu_seconds_capped"],
                "met_capped": r["goals"]["time_capped_met"],
            }
            for r in big
        ]
    }
    for name, rows in (("main", passes), ("sweep", sweep)):
        out[f"bound_{name}"] = {
            "met": sum(1 for r in rows if r["goals"]["bound_met"]),
            "of": len(rows),
            "missed": [
                f"{brief(r)}: {r['goals']['max_over_bound']:.3f} ({r['goals']['max_over_even']:.3f} x the "
                f"level evening out reaches, {r['planner']['even']:.3f}; the bound "
                f"{r['planner']['bound']:.3f})"
                for r in rows
                if not r["goals"]["bound_met"]
            ],
        }
        out[f"baseline_{name}"] = {
            "met": sum(1 for r in rows if r["goals"]["moves_met"]),
            "not_applicable": sum(1 for r in rows if r["goals"]["moves_met"] is None),
            "met_against_capped_greedy": sum(
                1 for r in rows if r["goals"]["moves_met"] and r["baseline"]["cap_hit"]
            ),
            "met_against_greedy_by_size": sum(1 for r in rows if r["goals"]["by_size"]["moves_met"]),
            "of": len(rows),
            "missed": [
                f"{brief(r)}: {r['planner']['moves']} vs {r['baseline']['moves']} "
                f"(ratio {r['goals']['moves_ratio']}, std {r['planner']['std_after']} "
                f"vs {r['baseline']['std_after']}; to the deviation target alone "
                f"{r['planner']['moves_to_target_std']} vs {r['baseline']['moves']}: "
                f"ratio {r['goals']['moves_ratio_at_target']})"
                for r in rows
                if r["goals"]["moves_met"] is False
            ],
        }
    out["milp"] = {
        "met": sum(1 for r in milp if r["goal"]["met"] is True),
        "not_met": sum(1 for r in milp if r["goal"]["met"] is False),
        "undecided_or_na": sum(1 for r in milp if r["goal"]["met"] is None),
        "of": len(milp),
        "rows": [f"{r['hosts']} hosts seed {r['seed']} L{r['level']}: {r['goal']['verdict']}" for r in milp],
    }
    return out


def print_summary(s: dict[str, Any]) -> None:
    print("\ngoals:")
    for t in s["time_at_10000"]:
        print(
            f"  time per pass at 10,000 hosts <= 1 s, {t['pass']}: the whole plan ({t['moves']} moves) "
            f"{t['cpu_seconds']:.3f} s CPU (wall {t['wall_seconds']:.3f} s; no explanations "
            f"{t['cpu_seconds_no_explain']:.3f} s CPU): {_yes(t['met'])}; a pass of at most 20 moves "
            f"{t['cpu_seconds_capped']:.3f} s CPU: {_yes(t['met_capped'])}"
        )
    for name in ("main", "sweep"):
        b, m = s[f"bound_{name}"], s[f"baseline_{name}"]
        if not b["of"]:
            continue
        print(f"  [{name}] max after <= 1.05 x bound: {b['met']} of {b['of']} passes")
        for miss in b["missed"]:
            print(f"      not met: {miss}")
        print(
            f"  [{name}] moves <= 50% of the greedy's at same or better deviation: {m['met']} of {m['of']} "
            f"({m['met_against_capped_greedy']} of them against a greedy that never reached the target "
            f"and stopped at its cap; {m['not_applicable']} with nothing to do)"
        )
        for miss in m["missed"]:
            print(f"      not met: {miss}")
        print(
            f"  [{name}] the same against a greedy that takes the biggest instance by flavor size: "
            f"{m['met_against_greedy_by_size']} of {m['of']}"
        )
    mi = s["milp"]
    if not mi["of"]:
        return
    print(
        f"  moves <= 1.25 x MILP optimum: met {mi['met']}, not met {mi['not_met']}, "
        f"undecided or n/a {mi['undecided_or_na']} of {mi['of']}"
    )


def plot(cases: dict[str, Any], path: Path) -> str:
    """Sorted host loads before and after (planner, greedy), one panel per level; the PNG's path."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return "skipped: matplotlib is not installed (pip install -e '.[bench]')"
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    fig, axes = plt.subplots(1, len(cases), figsize=(6 * len(cases), 4.5), sharey=True, squeeze=False)
    for ax, (name, (p, base)) in zip(axes[0], cases.items(), strict=True):
        ax.plot(sorted(p.loads_before, reverse=True), color="0.5", label="before")
        stop = ", its cap" if base.cap_hit else ""
        ax.plot(
            sorted(base.loads_after, reverse=True),
            color="tab:orange",
            label=f"greedy after ({base.moves} moves{stop}, std {base.std_after:.3f})",
        )
        ax.plot(
            sorted(p.loads_after, reverse=True),
            color="tab:blue",
            label=f"planner after ({len(p.moves)} moves, std {p.std_after:.3f})",
        )
        ax.axhline(p.bound, color="k", linestyle="--", linewidth=0.8, label=f"bound {p.bound:.3f}")
        ax.axhline(p.bound * 1.05, color="k", linestyle=":", linewidth=0.8, label="1.05 x bound")
        if p.even > p.bound * 1.001:
            label = f"even level {p.even:.3f}"
            ax.axhline(p.even, color="tab:green", linestyle="--", linewidth=0.8, label=label)
        ax.set_title(f"1,000 hosts, skewed, {name}")
        ax.set_xlabel("hosts, most loaded first")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("host load (dominant resource share)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def planner_source(root: Path) -> dict[str, Any]:
    """Which planner ran: its files' digests and times (it is tuned from these figures)."""
    out = {}
    for name in ("plan.py", "model.py", "levels.py"):
        path = root / "scheduler" / "drs" / name
        out[name] = {
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16],
            "modified": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(path.stat().st_mtime)),
        }
    return out


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
