"""Replay a simulated cloud through the scheduler: a generated one, a trace file, or the database now."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from compute.services.hosts import simulated_hosts_register
from scheduler.engine import PACK, Engine
from scheduler.queueing import QueuePolicy
from scheduler.simulate import (
    PRIORITY_NAMES,
    Report,
    Simulator,
    Trace,
    TraceError,
    generate,
    record,
)


class Command(BaseCommand):
    help = (
        "Simulator for scale tests and what-if planning (never real provisioning): replay a cloud "
        "through the placement engine and the admission queue, and report decisions, refusals, waits "
        "and hosts used against the lower bound."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--generate", type=int, metavar="HOSTS", help="a generated cloud of HOSTS hosts")
        source.add_argument("--trace", type=Path, metavar="FILE", help="a trace file (JSON lines)")
        source.add_argument(
            "--record", action="store_true", help="the database now: every host, live and queued instances"
        )
        parser.add_argument("--instances-per-host", type=int, default=10, help="generated: (default 10)")
        parser.add_argument("--arrivals", type=int, default=1000, help="generated: requests (default 1000)")
        parser.add_argument("--seed", type=int, default=1, help="generated: random seed (default 1)")
        parser.add_argument("--save-trace", type=Path, metavar="FILE", help="write the trace replayed")
        parser.add_argument("--pack", action="store_true", help="pack (PACK weighers) instead of spreading")
        parser.add_argument("--until", type=float, help="stop at this simulated second")
        parser.add_argument("--tick", type=float, help="seconds between admission passes")
        parser.add_argument("--max-wait", type=float, help="seconds until a waiting request is overdue")
        parser.add_argument("--aging", type=float, help="seconds of waiting per priority level gained")
        parser.add_argument("--give-up", type=float, help="seconds after which a waiting request fails")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")
        parser.add_argument(
            "--register-hosts",
            action="store_true",
            help="also register the trace's simulated hosts in the database (marked simulated: real "
            "placement never uses them)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        trace = self._trace(options)
        if options["save_trace"] is not None:
            try:
                trace.save(options["save_trace"])
            except OSError as exc:
                raise CommandError(f"cannot write trace {options['save_trace']}: {exc.strerror}") from None
        if options["register_hosts"]:
            try:
                made = simulated_hosts_register(hosts=trace.simulated_hosts())
            except ValueError as exc:
                raise CommandError(f"--register-hosts: {exc}") from None
            if not options["json"]:
                self.stdout.write(f"registered {made} simulated host(s)")
        from scheduler.services import engine as configured

        pipeline = configured()
        if options["pack"]:
            pipeline = Engine([f.name for f in pipeline.filters], PACK)
        try:
            policy = QueuePolicy(
                aging_seconds=_given(options["aging"], settings.NUBIS_QUEUE_AGING_SECONDS),
                max_wait=_given(options["max_wait"], settings.NUBIS_QUEUE_MAX_WAIT),
            )
            simulator = Simulator(
                tick=_given(options["tick"], settings.NUBIS_QUEUE_SECONDS),
                give_up=_given(options["give_up"], settings.NUBIS_QUEUE_GIVE_UP),
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        report = simulator.run(trace, engine=pipeline, policy=policy, until=options["until"])
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), indent=2))
        else:
            self.stdout.write(render(report, trace.source))

    def _trace(self, options: dict[str, Any]) -> Trace:
        if options["record"]:
            return record()
        if options["trace"] is not None:
            path: Path = options["trace"]
            try:
                return Trace.load(path)
            except FileNotFoundError:
                raise CommandError(f"trace file {path} not found") from None
            except TraceError as exc:
                raise CommandError(f"{path}: {exc}") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise CommandError(f"cannot read trace {path}: {exc}") from None
        try:
            return generate(
                options["generate"],
                options["instances_per_host"],
                options["seed"],
                arrivals=options["arrivals"],
            )
        except ValueError as exc:
            raise CommandError(f"--generate: {exc}") from None


def _given(value: float | None, default: float) -> float:
    return float(default) if value is None else value


def render(report: Report, source: str) -> str:
    """The report as a readable table."""
    r = report
    lines = [
        f"simulate ({source}): {r.hosts} hosts ({r.simulated_hosts} simulated), {r.instances_at_start} "
        f"instances at start, {r.events} events; {r.sim_seconds:.0f} s simulated in {r.wall_seconds:.2f} s",
        f"{'decisions':<14}{r.decisions:>8}   p50 {r.p50_ms:.3f} ms   p99 {r.p99_ms:.3f} ms   "
        f"{r.decisions_per_second:.0f}/s",
        f"{'placed':<14}{r.placed:>8}   at once {r.placed_at_once}, from the queue {r.admitted_from_queue}",
        f"{'refused':<14}{r.refused:>8}   {_by_filter(r.refused_by_filter)}",
        f"{'queued':<14}{r.queued:>8}   {_by_filter(r.queued_by_filter)}; still waiting {r.still_waiting} "
        f"(longest {r.longest_still_waiting_s:.0f} s), gave up {r.gave_up}, cancelled {r.cancelled}",
        f"{'departed':<14}{r.departed:>8}   ignored departures {r.ignored_departures}",
        f"{'waits (s)':<14}{'class':>8}   {'admitted':>8} {'p50':>8} {'p99':>8} {'max':>8}",
    ]
    for name in (*PRIORITY_NAMES, "all"):
        w = r.waits[name]
        figures = " ".join(f"{w[k]:>8.1f}" for k in ("p50_s", "p99_s", "max_s"))
        lines.append(f"{'':<14}{name:>8}   {w['count']:>8} {figures}")
    for label, q in (("hosts used", r.end), ("  at the peak", r.peak)):
        per = ", ".join(f"{k} {v}" for k, v in q.lower_bound.items())
        lines.append(f"{label:<14}{q.hosts_used:>8}   lower bound {q.bound} ({per}), ratio {q.ratio:.3f}")
    lines.append(
        f"{'provisioned':<14}{r.provisioned:>8}   on simulated hosts (simulator driver); "
        f"{r.planned_on_real_hosts} planned on real hosts (what-if only, nothing done there)"
    )
    return "\n".join(lines)


def _by_filter(counts: dict[str, int]) -> str:
    if not counts:
        return "-"
    return "by filter: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
