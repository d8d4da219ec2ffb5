"""DRS, acting: a pass reads the cluster, keeps the scheduler's plan as recommendations, and starts
the moves its automation level allows, a few at a time.

- ``drs_pass_run`` (the control worker's ``compute.drs_pass``, every few seconds; it runs a pass
  when the settings' interval has passed, or at once when staff ask) keeps a ``DrsPass`` with the
  plan's summary and one ``DrsRecommendation`` per move, with its explanation. Recommendations of
  earlier passes that had not started are superseded: only the latest plan stands.
- A move between two fully automated hosts is approved at once; any other waits for staff
  (``drs_apply`` one, ``drs_apply_all``). Approved moves start through the ordinary migration
  (``instance_migrate``: placement's filters and claim, the host's agent) while fewer than
  ``max_concurrent`` migrations of any kind are under way (``drs_execute``, run after a pass,
  after each move ends, and periodically). Each migration carries its recommendation's
  explanation in its parameters.
- A recommendation that no longer holds when it would start (the instance moved, stopped, or the
  target filled up) expires with the reason; nothing else is tried in its place until the next pass.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from compute.models import Instance, InstanceState, Operation, OperationState
from compute.services.lifecycle import drs_event
from compute.services.migration import instance_migrate
from core.errors import Conflict, ServiceError
from core.queues import CONTROL_QUEUE, send_task_after_commit
from scheduler.drs import FULL, plan, threshold
from scheduler.drs.levels import strictest
from scheduler.drs.read import moved_recently, read_cluster
from scheduler.models import DrsPass, DrsPassKind, DrsRecommendation, DrsSettings, RecommendationState
from security.audit import Actor, audit_log
from security.models import Source

logger = logging.getLogger(__name__)

DRS_EXECUTE_TASK = "compute.drs_execute"
WAITING = (RecommendationState.PROPOSED, RecommendationState.APPROVED)
PASS_KEEP = timedelta(days=30)


def drs_kick() -> None:
    """After commit, ask the control worker to start the next approved moves (a move ended)."""
    send_task_after_commit(DRS_EXECUTE_TASK, queue=CONTROL_QUEUE, expires=60)


def drs_settings_update(*, actor: Actor, **fields: Any) -> DrsSettings:
    """Change the cluster's DRS settings (validated: every error names its field)."""
    with transaction.atomic():
        current = DrsSettings.objects.select_for_update().get(pk=DrsSettings.current().pk)
        for name, value in fields.items():
            setattr(current, name, value)
        try:
            current.full_clean()
        except ValidationError as exc:
            field, messages = next(iter(exc.message_dict.items()))
            raise ServiceError(field, "invalid", f"{field}: {'; '.join(messages)}") from None
        current.save()
        audit_log(actor=actor, action="drs.settings", target=current, detail=dict(fields))
        drs_event("settings", current.pk)
    return current


def _due(settings: DrsSettings, now: Any) -> bool:
    return settings.last_pass_at is None or now - settings.last_pass_at >= timedelta(
        seconds=settings.interval_seconds
    )


def drs_pass_run(
    *,
    kind: str = DrsPassKind.PERIODIC,
    actor: Actor | None = None,
    requested_by: Any = None,
    hosts: Any = None,
) -> DrsPass | None:
    """Run a pass: periodic ones only when enabled and due (None otherwise); staff's at once.

    ``hosts`` narrows the cluster to a queryset of hosts (a lab inside the test suite).
    """
    now = timezone.now()
    with transaction.atomic():
        # The settings row is the passes' lock: two workers never plan over each other.
        settings = DrsSettings.objects.select_for_update().get(pk=DrsSettings.current().pk)
        if kind == DrsPassKind.PERIODIC and (not settings.enabled or not _due(settings, now)):
            return None
        DrsSettings.objects.filter(pk=settings.pk).update(last_pass_at=now)
        read = read_cluster(
            window=timedelta(seconds=settings.window_seconds),
            cluster_level=settings.automation,
            hosts=hosts,
            now=now,
        )
        result = plan(
            read.cluster,
            threshold(settings.threshold),
            max_moves=settings.max_moves,
            moved_recently=moved_recently(timedelta(seconds=settings.cooldown_seconds), now),
        )
        summary = result.as_dict(moves=False)
        summary["estimated"] = read.estimated
        measured = read.cluster.host_measured
        if measured is not None:
            summary["host_measured_cpu"] = {
                name: round(float(v), 4) for name, v in zip(read.cluster.host_names, measured, strict=True)
            }
        summary["automation"] = dict(zip(read.cluster.host_names, read.automation, strict=True))
        drs_pass = DrsPass.objects.create(
            kind=kind,
            automation=settings.automation,
            threshold=settings.threshold,
            requested_by=requested_by,
            summary=summary,
            std_before=result.std_before,
            std_after=result.std_after,
            moves=len(result.moves),
            created=now,
            finished=timezone.now(),
        )
        # Passes are kept PASS_KEEP (each migration a pass started keeps its explanation anyway).
        DrsPass.objects.filter(created__lt=now - PASS_KEEP).exclude(
            recommendations__state__in=[*WAITING, RecommendationState.STARTED]
        ).delete()
        superseded = DrsRecommendation.objects.filter(state__in=WAITING).update(
            state=RecommendationState.SUPERSEDED, reason=f"superseded by pass {drs_pass.pk}"
        )
        instances = {i.pk: i for i in read.instances}
        recommendations = []
        for order, move in enumerate(result.moves):
            level = strictest(read.automation[move.source], read.automation[move.target])
            automatic = level == FULL
            explanation = {**move.explanation, "automation": level}
            recommendations.append(
                DrsRecommendation(
                    drs_pass=drs_pass,
                    order=order,
                    instance=instances[move.instance_ids[0]],
                    instance_ids=move.instance_ids,
                    source=read.hosts[move.source],
                    target=read.hosts[move.target],
                    live=move.live,
                    cost=move.cost,
                    automatic=automatic,
                    state=RecommendationState.APPROVED if automatic else RecommendationState.PROPOSED,
                    explanation=explanation,
                    created=now,
                )
            )
        DrsRecommendation.objects.bulk_create(recommendations)
        audit_log(
            actor=actor or Actor.system("drs"),
            action="drs.pass",
            target=drs_pass,
            detail={
                "kind": kind,
                "moves": len(result.moves),
                "std_before": round(result.std_before, 4),
                "std_after": round(result.std_after, 4),
                "superseded": superseded,
            },
        )
        drs_event("pass", drs_pass.pk, moves=len(result.moves))
    logger.info(
        "DRS pass %s: %d moves, deviation %.3f -> %.3f (%s)",
        drs_pass.pk, len(result.moves), result.std_before, result.std_after, result.stopped,
    )  # fmt: skip
    drs_execute()
    return drs_pass


def _settle() -> None:
    """Started recommendations whose migrations ended become done or failed."""
    for rec in DrsRecommendation.objects.filter(state=RecommendationState.STARTED):
        ops = list(Operation.objects.unscoped().filter(uuid__in=rec.operations))
        states = {op.state for op in ops}
        if states & {OperationState.PENDING, OperationState.RUNNING}:
            continue
        failed = [op for op in ops if op.state != OperationState.SUCCEEDED]
        if failed:
            rec.state, rec.reason = RecommendationState.FAILED, failed[0].error or failed[0].state
        else:
            rec.state = RecommendationState.SUCCEEDED
        rec.save(update_fields=["state", "reason", "updated"])
        drs_event("recommendation", rec.pk, state=rec.state)


def _in_flight() -> int:
    return Instance.objects.unscoped().filter(state=InstanceState.MIGRATING).count()


def _start(rec: DrsRecommendation, actor: Actor) -> bool:
    """Start ``rec``'s migrations; False (and the recommendation expired, with why) if it no longer holds."""
    members = list(Instance.objects.unscoped().filter(pk__in=rec.instance_ids).order_by("pk"))
    why = ""
    if len(members) != len(rec.instance_ids):
        why = "an instance of it was deleted"
    elif any(i.host_id != rec.source_id for i in members):
        why = f"it no longer runs on {rec.source.name}"
    elif any(i.state != InstanceState.RUNNING for i in members):
        why = "it is no longer running"
    elif any(i.drs_pinned for i in members):
        why = "it was pinned (do not move) since the pass"
    operations: list[Operation] = []
    reason = f"DRS pass {rec.drs_pass_id}: balance {rec.source.name} and {rec.target.name}"
    if not why:
        context = {
            "pass": rec.drs_pass_id,
            "recommendation": rec.pk,
            "automatic": rec.automatic,
            "explanation": rec.explanation,
        }
        try:
            with transaction.atomic():
                for instance in members:
                    operations.append(
                        instance_migrate(
                            actor=actor,
                            instance=instance,
                            target=rec.target,
                            reason=reason,
                            drs=context,
                        )
                    )
        except (Conflict, ServiceError) as exc:
            why, operations = exc.message, []
    if why:
        rec.state, rec.reason = RecommendationState.EXPIRED, why
        rec.save(update_fields=["state", "reason", "updated"])
        drs_event("recommendation", rec.pk, state=rec.state)
        logger.info("DRS recommendation %s expired: %s", rec.pk, why)
        return False
    rec.state = RecommendationState.STARTED
    rec.operations = [str(op.uuid) for op in operations]
    rec.save(update_fields=["state", "operations", "updated"])
    drs_event("recommendation", rec.pk, state=rec.state)
    return True


def drs_execute() -> list[int]:
    """Settle ended moves, then start approved recommendations while the concurrency cap allows.

    Returns the ids of the recommendations started. A hard-affinity group counts as its members.
    Executors run one at a time (the settings row is their lock): two of them (a move's end and the
    periodic tick) would otherwise both see a free slot, or both start one recommendation.
    """
    _settle()
    started: list[int] = []
    with transaction.atomic():
        settings = DrsSettings.objects.select_for_update().get(pk=DrsSettings.current().pk)
        approved = DrsRecommendation.objects.filter(state=RecommendationState.APPROVED).select_related(
            "source", "target", "decided_by"
        )
        for rec in approved.order_by("drs_pass_id", "order"):
            moving = _in_flight()
            if moving > 0 and moving + len(rec.instance_ids) > settings.max_concurrent:
                break
            user = rec.decided_by
            actor = Actor.system("drs")
            if user is not None:  # staff approved it: the move is theirs
                actor = Actor(name=user.get_username(), source=Source.TASK, user_id=user.pk)
            if _start(rec, actor):
                started.append(rec.pk)
    return started


def drs_apply(*, actor: Actor, recommendation: DrsRecommendation, user: Any = None) -> DrsRecommendation:
    """Staff apply one recommendation: it is approved and starts now, or when a slot frees."""
    with transaction.atomic():
        rec = DrsRecommendation.objects.select_for_update().get(pk=recommendation.pk)
        if rec.state not in WAITING:
            raise Conflict("state", "state", f"the recommendation is {rec.state}; only a waiting one applies")
        rec.state, rec.decided_by = RecommendationState.APPROVED, user
        rec.save(update_fields=["state", "decided_by", "updated"])
        audit_log(actor=actor, action="drs.apply", target=rec.instance, detail={"recommendation": rec.pk})
        drs_event("recommendation", rec.pk, state=rec.state)
    drs_execute()
    rec.refresh_from_db()
    return rec


def drs_apply_all(*, actor: Actor, drs_pass: DrsPass, user: Any = None) -> int:
    """Staff apply every waiting recommendation of ``drs_pass`` (the latest plan); they start a few
    at a time. Returns how many were approved."""
    with transaction.atomic():
        waiting = DrsRecommendation.objects.select_for_update().filter(
            drs_pass=drs_pass, state=RecommendationState.PROPOSED
        )
        count = waiting.update(state=RecommendationState.APPROVED, decided_by=user)
        audit_log(actor=actor, action="drs.apply_all", target=drs_pass, detail={"approved": count})
        drs_event("pass", drs_pass.pk, approved=count)
    drs_execute()
    return count


def instance_drs_pin(*, actor: Actor, instance: Instance, pinned: bool) -> Instance:
    """Pin an instance where it is (the balancer never moves it) or let DRS move it again."""
    with transaction.atomic():
        Instance.objects.unscoped().filter(pk=instance.pk).update(drs_pinned=pinned, updated=timezone.now())
        instance.drs_pinned = pinned
        audit_log(actor=actor, action="instance.drs_pin", target=instance, detail={"pinned": pinned})
    return instance


DRS_WHAT_IF_TASK = "compute.drs_what_if"


def drs_what_if(
    *,
    actor: Actor,
    requested_by: Any = None,
    maintenance: list[str] | None = None,
    capacity: dict[str, dict[str, int]] | None = None,
    add_flavor: str = "",
    add_count: int = 0,
    add_kind: str = "vm",
    busy: float = 1.0,
    threshold_level: int | None = None,
    hosts: Any = None,
) -> DrsPass:
    """Staff ask a what-if: checked here (every error names its field), kept as a ``what_if`` pass,
    and computed by the control worker (``compute.drs_what_if``: the simulator runs there, never in
    the web process), which fills in the predicted loads and moves. Nothing moves.

    ``maintenance``: host names to empty; ``capacity``: {host name: {"cpus": n, "ram_mib": n}};
    ``add_flavor``/``add_count``/``add_kind``: instances of that flavor to place (VMs or containers,
    their demand ``busy`` x their size); ``threshold_level``: 1..5 instead of the cluster's;
    ``hosts``: a queryset narrowing the cluster (a lab inside the tests).
    """
    from compute.models import Flavor, Host, InstanceKind

    scope = hosts if hosts is not None else Host.objects.filter(simulated=False)
    names = set(scope.values_list("name", flat=True))
    if not 0 < busy <= 1:
        raise ServiceError("busy", "range", "busy: the added instances' demand, a share of their size (0-1]")
    if threshold_level is not None and not 1 <= threshold_level <= 5:
        raise ServiceError("threshold", "range", "threshold: a level from 1 to 5")
    if not 0 <= add_count <= 10000:
        raise ServiceError("add_count", "range", "add_count: from 0 to 10000 instances")
    if add_kind not in InstanceKind.values:
        raise ServiceError("add_kind", "choice", f"add_kind: one of {', '.join(InstanceKind.values)}")
    for name in maintenance or []:
        if name not in names:
            raise ServiceError("maintenance", "exists", f"maintenance: no host named {name!r}")
    for name, sizes in (capacity or {}).items():
        if name not in names:
            raise ServiceError("capacity", "exists", f"capacity: no host named {name!r}")
        for key in ("cpus", "ram_mib"):
            value = sizes.get(key)
            if value is not None and not (isinstance(value, int) and 1 <= value <= 1 << 30):
                raise ServiceError("capacity", "range", f"capacity: {name}'s {key} must be a number >= 1")
    if add_count and not Flavor.objects.filter(name=add_flavor).exists():
        raise ServiceError("add_flavor", "exists", f"add_flavor: no flavor named {add_flavor!r}")
    settings = DrsSettings.current()
    request = {
        "maintenance": maintenance or [],
        "capacity": capacity or {},
        "add_flavor": add_flavor,
        "add_count": add_count,
        "add_kind": add_kind,
        "busy": busy,
        "threshold": threshold_level,
        "hosts": sorted(scope.values_list("pk", flat=True)) if hosts is not None else None,
    }
    with transaction.atomic():
        drs_pass = DrsPass.objects.create(
            kind=DrsPassKind.WHAT_IF,
            automation=settings.automation,
            threshold=threshold_level or settings.threshold,
            requested_by=requested_by,
            changes=request,
            finished=None,
        )
        audit_log(actor=actor, action="drs.what_if", target=drs_pass, detail=request)
        drs_event("what_if", drs_pass.pk)
        send_task_after_commit(DRS_WHAT_IF_TASK, queue=CONTROL_QUEUE, args=(drs_pass.pk,), expires=600)
    return drs_pass
