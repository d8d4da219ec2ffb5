"""The adjuster of dynamic memory and CPU: the scheduler's grants (scheduler.allocation) saved, told
and applied.

Each pass locks a host, decides its dynamic instances' memory and CPU grants, saves the ones that
moved with an event per instance and an audit record per grant (``instance.memory.adjust``,
``instance.cpu.adjust``), and asks the host's agent to bring the live memory and CPU to the grants
(``compute.memory_apply``) after the commit.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.utils import timezone

from compute.models import Host
from compute.services.lifecycle import instance_event
from core.queues import send_task_after_commit
from scheduler.allocation import (
    CPU,
    CPU_POLICY,
    DEFAULT_POLICY,
    RAM,
    Policy,
    allocation_candidates,
    allocation_decide,
    allocation_hosts,
)
from security.audit import Actor, audit_log

log = logging.getLogger(__name__)

# What a grant of each resource sets on the instance, the audit action and the unit of its detail.
GRANT_FIELDS = {
    RAM: ("current_ram_mib", "instance.memory.adjust", "mib"),
    CPU: ("current_cpu_pct", "instance.cpu.adjust", "pct"),
}


def allocation_adjust_host(
    host: Host, policy: Policy = DEFAULT_POLICY, cpu_policy: Policy = CPU_POLICY
) -> dict[str, dict[str, list[int]]]:
    """One pass over ``host``'s running dynamic instances: new grants saved, applied after commit.

    Returns {"ram": {instance uuid: [old MiB, new MiB]}, "cpu": {instance uuid: [old %, new %]}}
    for the grants that moved (a resource with none is left out: {} when nothing moved). Instances
    busy with an operation, or locked by one being requested right now, wait for the next pass; so
    does one without recent samples. The host's agent is asked to apply the grants even when none
    moved, so a move that failed there, or a container restarted with its old limits, is retried.
    """

    if host.simulated:
        return {}
    with transaction.atomic():
        locked = Host.objects.select_for_update().get(pk=host.pk)
        # skip_locked: a resize or placement locks the instance, then the host; waiting here with the
        # host locked could deadlock against it, so a locked instance is left for the next pass.
        instances = {
            i.pk: i for i in allocation_candidates(locked).select_for_update(skip_locked=True, of=("self",))
        }
        if not instances:
            return {}
        decided = allocation_decide(locked, instances.values(), policy, cpu_policy)
        changed: dict[int, dict[str, int]] = {}  # instance id -> {field: new value}
        for grant in decided.grants:
            instance = instances[grant.instance_id]
            field, _, unit = GRANT_FIELDS[grant.resource]
            setattr(instance, field, grant.new)
            changed.setdefault(instance.pk, {})[field] = grant.new
            room = decided.free_mib if grant.resource == RAM else decided.free_cpu_pct
            log.info(
                "allocation %s: %s %s %s %d -> %d %s (usage %.0f, host room %d)",
                *(locked.name, instance.kind, grant.key, grant.resource, grant.old, grant.new, unit),
                *(grant.usage, room),
            )
        for pk, fields in changed.items():
            instances[pk].save(update_fields=[*fields, "updated"])
            instance_event(instances[pk], **fields)
        actor = Actor.system(f"allocation@{locked.name}")
        for grant in decided.grants:  # last: the audit chain's lock serialises appends
            _, action, unit = GRANT_FIELDS[grant.resource]
            audit_log(
                actor=actor,
                action=action,
                target=instances[grant.instance_id],
                detail={
                    f"from_{unit}": grant.old,
                    f"to_{unit}": grant.new,
                    f"usage_{unit}": round(grant.usage, 1),
                },
            )
        queue, name = locked.queue, locked.name
        send_task_after_commit("compute.memory_apply", queue=queue, args=(name,))
    moved: dict[str, dict[str, list[int]]] = {}
    for grant in decided.grants:
        moved.setdefault(grant.resource, {})[grant.key] = [grant.old, grant.new]
    return moved


def allocation_adjust_all(policy: Policy = DEFAULT_POLICY) -> dict[str, Any]:
    """Adjust every enabled, live, real host; {host name: {resource: {instance uuid: [old, new]}}}
    of the moves.

    A host that fails is logged and skipped: the others are still adjusted.
    """
    summary: dict[str, Any] = {}
    for host in allocation_hosts(timezone.now()):
        try:
            summary[host.name] = allocation_adjust_host(host, policy)
        except Exception:  # one broken host must not stop the others
            log.exception("allocation: adjusting host %s failed", host.name)
    return summary
