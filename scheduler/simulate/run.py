"""The run: a trace's events, ends of life and periodic admission passes, in time order."""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable

from scheduler.engine import Engine
from scheduler.queueing import QueuePolicy
from scheduler.simulate.report import Report, report_of
from scheduler.simulate.state import SimState
from scheduler.simulate.trace import Departure, Event, Trace


class Simulator:
    """Replays traces; ``tick`` is the period of admission passes (the beat's NUBIS_QUEUE_SECONDS)."""

    def __init__(
        self,
        tick: float = 15.0,
        give_up: float | None = None,
        observer: Callable[[SimState, Event | None], None] | None = None,
    ) -> None:
        if tick <= 0:
            raise ValueError("tick must be positive")
        self.tick, self.give_up, self.observer = tick, give_up, observer

    def run(
        self,
        trace: Trace,
        engine: Engine | None = None,
        policy: QueuePolicy | None = None,
        until: float | None = None,
    ) -> Report:
        """Replay ``trace`` until no event is left (or until time ``until``) and report."""
        started = time.perf_counter()
        state = SimState(trace, engine or Engine(), policy or QueuePolicy(), self.give_up)
        setup = time.perf_counter() - started
        seq = itertools.count()
        # (time, sequence, event); the sequence keeps the trace's order among simultaneous events.
        # Ends of life and ticks are pushed as they become known; None is a tick.
        heap: list[tuple[float, int, Event | None]] = [(e.t, next(seq), e) for e in trace.events]
        heapq.heapify(heap)
        tick_due = False
        while heap:
            t, _, event = heapq.heappop(heap)
            if until is not None and t > until:
                break
            state.now = t
            if event is None:
                tick_due = False
                state.admit()
            elif isinstance(event, Departure):
                state.depart(event.id)
                state.admit()
            else:
                state.arrive(event)
            # A life starts when the request is placed: at once, or when a pass admits it.
            for a in state.started:
                if a.lifetime is not None:
                    heapq.heappush(heap, (t + a.lifetime, next(seq), Departure(t + a.lifetime, a.id)))
            state.started.clear()
            # Periodic passes while someone waits and something is still to happen.
            if state.waiting and heap and not tick_due:
                heapq.heappush(heap, (t + self.tick, next(seq), None))
                tick_due = True
            if self.observer is not None:
                self.observer(state, event)
        return report_of(state, setup, time.perf_counter() - started)
