"""The control worker's half of a DRS what-if: today's cluster copied into the simulator, the
changes staff asked for (``compute.services.drs.drs_what_if`` checked and kept them), then a pass;
the predicted loads and moves go into the ``what_if`` pass. Nothing moves.

This module loads the simulator (and with it the simulator driver), so only the control worker
imports it (``compute.drs_what_if``): the web process never loads a driver.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from compute.models import Flavor, Host, Instance, InstanceKind
from compute.services.lifecycle import drs_event
from compute.services.migration import MOVABLE
from scheduler.drs.read import moved_recently, read_cluster
from scheduler.drs.whatif import Changes, what_if
from scheduler.models import DrsPass, DrsPassKind, DrsSettings
from scheduler.services import engine
from scheduler.simulate import record

logger = logging.getLogger(__name__)


def _changes(request: dict[str, Any], by_name: dict[str, Host]) -> Changes:
    """The stored request as the simulator's changes (a host or flavor gone since: ValueError)."""

    def host(name: str) -> Host:
        if name not in by_name:
            raise ValueError(f"host {name!r} is gone")
        return by_name[name]

    changes = Changes(
        busy=float(request.get("busy") or 1.0),
        add_count=int(request.get("add_count") or 0),
        level=request.get("threshold"),
        maintenance=[host(name).pk for name in request.get("maintenance") or []],
        capacity={
            host(name).pk: (sizes.get("cpus"), sizes.get("ram_mib"))
            for name, sizes in (request.get("capacity") or {}).items()
        },
    )
    if changes.add_count:
        flavor = Flavor.objects.filter(name=request.get("add_flavor", "")).first()
        if flavor is None:
            raise ValueError(f"flavor {request.get('add_flavor')!r} is gone")
        changes.add_flavor = {
            "vcpus": flavor.vcpus,
            "ram_mib": flavor.ram_mib,
            "disk_gib": flavor.disk_gib,
            "kvm": flavor.cpu_mode == "hardware",
            "live": request.get("add_kind", "vm") == InstanceKind.VM,
        }
    return changes


# A what-if takes seconds even at thousands of hosts; one unfinished after this was lost (its
# control worker stopped mid-way, or the task never ran) and the page would wait for ever.
WHAT_IF_TIMEOUT = timedelta(minutes=15)


def drs_what_if_expire(now: datetime | None = None) -> int:
    """End the what-ifs still unfinished after WHAT_IF_TIMEOUT, with why; how many (periodic)."""
    now = now or timezone.now()
    lost = DrsPass.objects.filter(
        kind=DrsPassKind.WHAT_IF, finished__isnull=True, created__lt=now - WHAT_IF_TIMEOUT
    )
    minutes = int(WHAT_IF_TIMEOUT.total_seconds() // 60)
    why = f"not computed within {minutes} minutes (the control worker stopped or never took it): ask again"
    ids = list(lost.values_list("pk", flat=True))
    ended = DrsPass.objects.filter(pk__in=ids, finished__isnull=True).update(finished=now, error=why)
    for pk in ids:
        drs_event("what_if", pk, finished=True)  # the page waiting for it shows why
    return ended


def drs_what_if_run(pass_id: int) -> DrsPass:
    """Compute the what-if pass ``pass_id`` (once: a repeated delivery finds it finished)."""
    drs_pass = DrsPass.objects.get(pk=pass_id, kind=DrsPassKind.WHAT_IF)
    if drs_pass.finished is not None:
        return drs_pass
    request = drs_pass.changes
    ids = request.get("hosts")
    scope = Host.objects.filter(pk__in=ids) if ids is not None else Host.objects.filter(simulated=False)
    only = scope.order_by("pk")
    settings = DrsSettings.current()
    now = timezone.now()
    try:
        changes = _changes(request, {h.name: h for h in only})
        read = read_cluster(
            window=timedelta(seconds=settings.window_seconds),
            cluster_level=settings.automation,
            hosts=only,
            now=now,
        )
        order = {
            pk: list(
                Instance.objects.unscoped()
                .filter(host_id=pk, state__in=MOVABLE)
                .order_by("-priority", "created", "pk")
                .values_list("pk", flat=True)
            )
            for pk in changes.maintenance
        }
        summary = what_if(
            read.cluster,
            record(only),
            engine(),
            changes,
            drs_pass.threshold,
            order,
            read.group_names,
            moved_recently(timedelta(seconds=settings.cooldown_seconds), now),
        )
    except ValueError as exc:  # a host or flavor gone since it was asked: the answer says which
        drs_pass.error, drs_pass.finished = str(exc), timezone.now()
        drs_pass.save(update_fields=["error", "finished"])
        drs_event("what_if", drs_pass.pk, finished=True)
        return drs_pass
    except Exception as exc:  # anything else: recorded, so the page stops waiting, then raised
        logger.exception("DRS what-if %s failed", drs_pass.pk)
        drs_pass.error, drs_pass.finished = f"the simulation failed: {exc}"[:4000], timezone.now()
        drs_pass.save(update_fields=["error", "finished"])
        drs_event("what_if", drs_pass.pk, finished=True)
        raise
    drs_pass.summary = summary
    drs_pass.std_before, drs_pass.std_after = summary["std_before"], summary["std_after"]
    drs_pass.moves = len(summary["moves"])
    drs_pass.finished = timezone.now()
    drs_pass.save(update_fields=["summary", "std_before", "std_after", "moves", "finished"])
    drs_event("what_if", drs_pass.pk, finished=True)
    logger.info("DRS what-if %s: %d moves predicted", drs_pass.pk, drs_pass.moves)
    return drs_pass
