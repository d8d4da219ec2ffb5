"""What a run reports: decisions and their time, placements, refusals, the queue, packing quality."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from scheduler.simulate.trace import PRIORITY_NAMES, Floats

if TYPE_CHECKING:
    from scheduler.simulate.state import SimState


@dataclass
class Quality:
    """Hosts with at least one instance, against the fewest hosts the demand could fit on."""

    hosts_used: int
    # Per resource, the fewest hosts whose capacities (largest first) add up to the demand: with
    # hosts all alike, ceil(sum of demand / capacity); no placement can use fewer hosts.
    lower_bound: dict[str, int]
    demand: dict[str, float]

    @property
    def bound(self) -> int:
        return max(self.lower_bound.values(), default=0)

    @property
    def ratio(self) -> float:
        return self.hosts_used / self.bound if self.bound else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "hosts_used": self.hosts_used,
            "lower_bound": self.bound,
            "lower_bound_per_resource": self.lower_bound,
            "ratio": round(self.ratio, 4),
            "demand": self.demand,
        }


@dataclass
class Report:
    """What a run did: decisions and their time, placements, refusals, the queue, packing quality."""

    hosts: int
    simulated_hosts: int
    instances_at_start: int
    events: int
    decisions: int
    placed_at_once: int
    admitted_from_queue: int
    refused: int
    refused_by_filter: dict[str, int]  # also by cause: NEVER_FITS, HELD_FOR_OVERDUE (simulate.state)
    queued: int
    queued_by_filter: dict[str, int]  # also BEHIND_THE_QUEUE: joined requests already waiting
    still_waiting: int
    gave_up: int
    cancelled: int
    departed: int
    ignored_departures: int
    provisioned: int  # on simulated hosts, through SimulatorDriver
    planned_on_real_hosts: int  # what-if bookings on recorded real hosts: nothing was done there
    waits: dict[str, dict[str, float]]  # per priority class (and "all"): admitted requests' waits
    longest_still_waiting_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    decisions_per_second: float
    end: Quality
    peak: Quality  # at the moment the cloud held the most (dominant share of the demand)
    sim_seconds: float
    setup_seconds: float
    wall_seconds: float

    @property
    def placed(self) -> int:
        return self.placed_at_once + self.admitted_from_queue

    def as_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["placed"] = self.placed
        out["end"], out["peak"] = self.end.as_dict(), self.peak.as_dict()
        return out


def percentile(values: list[float] | Floats, q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default); 0 for no values."""
    return float(np.percentile(values, q)) if len(values) else 0.0


def report_of(state: SimState, setup: float, wall: float) -> Report:
    """The report of a finished run: ``setup`` and ``wall`` are its seconds of set-up and in all."""
    times = np.array(state.times)
    waits: dict[str, dict[str, float]] = {}
    every: list[float] = []
    for p, values in state.waits.items():
        every += values
        waits[PRIORITY_NAMES[p]] = _summary(values)
    waits["all"] = _summary(every)
    tally = state.tally
    waiting = state.waiting.values()
    return Report(
        hosts=len(state.trace.hosts),
        simulated_hosts=int(state.simulated.sum()),
        instances_at_start=len(state.trace.instances),
        events=len(state.trace.events),
        decisions=len(times),
        placed_at_once=tally["placed_at_once"],
        admitted_from_queue=tally["admitted_from_queue"],
        refused=tally["refused"],
        refused_by_filter=dict(state.refused_by),
        queued=tally["queued"],
        queued_by_filter=dict(state.queued_by),
        still_waiting=len(state.waiting),
        gave_up=tally["gave_up"],
        cancelled=tally["cancelled"],
        departed=tally["departed"],
        ignored_departures=tally["ignored_departures"],
        provisioned=tally["provisioned"],
        planned_on_real_hosts=tally["planned_on_real_hosts"],
        waits=waits,
        longest_still_waiting_s=max((state.now - w.enqueued_at for w, _ in waiting), default=0.0),
        p50_ms=percentile(times, 50) * 1000,
        p99_ms=percentile(times, 99) * 1000,
        mean_ms=float(times.mean()) * 1000 if len(times) else 0.0,
        decisions_per_second=len(times) / float(times.sum()) if times.sum() > 0 else 0.0,
        end=state.quality(),
        peak=state.peak,
        sim_seconds=state.now,
        setup_seconds=round(setup, 4),
        wall_seconds=round(wall, 4),
    )


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "count": len(values),
        "p50_s": round(percentile(values, 50), 3),
        "p99_s": round(percentile(values, 99), 3),
        "max_s": round(max(values, default=0.0), 3),
    }
