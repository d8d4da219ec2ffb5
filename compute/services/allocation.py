"""The memory adjuster: the scheduler's grants (scheduler.allocation) saved, told and applied.

Each pass locks a host, decides its dynamic instances' grants, saves the ones that moved with an
event and an audit record each, and asks the host's agent to bring the live memory to the grants
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
    DEFAULT_POLICY,
    Policy,
    allocation_candidates,
    allocation_decide,
    allocation_hosts,
)
from security.audit import Actor, audit_log

log = logging.getLogger(__name__)


def allocation_adjust_host(host: Host, policy: Policy = DEFAULT_POLICY) -> dict[str, list[int]]:
    """One pass over ``host``'s running dynamic instances: new grants saved, applied after commit.

    Returns {instance uuid: [old MiB, new MiB]} for the grants that moved. Instances busy with an
    operation, or locked by one being requested right now, wait for the next pass; so does one
    without recent samples. The host's agent is asked to apply the grants even when none moved,
    so a move that failed there, or a container restarted with its old limit, is retried.
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
        decided = allocation_decide(locked, instances.values(), policy)
        for grant in decided.grants:
            instance = instances[grant.instance_id]
            instance.current_ram_mib = grant.to_mib
            instance.save(update_fields=["current_ram_mib", "updated"])
            log.info(
                "allocation %s: %s %s %d -> %d MiB (usage %.0f MiB, host free %d MiB)",
                *(locked.name, instance.kind, grant.key, grant.from_mib, grant.to_mib),
                *(grant.usage_mib, decided.free_mib),
            )
            instance_event(instance, current_ram_mib=grant.to_mib)
        actor = Actor.system(f"allocation@{locked.name}")
        for grant in decided.grants:  # last: the audit chain's lock serialises appends
            audit_log(
                actor=actor,
                action="instance.memory.adjust",
                target=instances[grant.instance_id],
                detail={
                    "from_mib": grant.from_mib,
                    "to_mib": grant.to_mib,
                    "usage_mib": round(grant.usage_mib, 1),
                },
            )
        queue, name = locked.queue, locked.name
        send_task_after_commit("compute.memory_apply", queue=queue, args=(name,))
    return {grant.key: [grant.from_mib, grant.to_mib] for grant in decided.grants}


def allocation_adjust_all(policy: Policy = DEFAULT_POLICY) -> dict[str, Any]:
    """Adjust every enabled, live, real host; {host name: {instance uuid: [old, new]}} of the moves.

    A host that fails is logged and skipped: the others are still adjusted.
    """
    summary: dict[str, Any] = {}
    for host in allocation_hosts(timezone.now()):
        try:
            summary[host.name] = allocation_adjust_host(host, policy)
        except Exception:  # one broken host must not stop the others
            log.exception("allocation: adjusting host %s failed", host.name)
    return summary
