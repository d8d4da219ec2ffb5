"""Placing an instance: the scheduler decides (scheduler.services.decide), and the claim is made here.

The claim is the database's (ARCHITECTURE §2 rule 6): under the chosen host's row lock, the host
must still have room, or the next candidate is tried. A placement holds at most the one host it
claims, so two placements never wait on each other.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from compute.models import Host, Instance, ServerGroup
from scheduler.services import NoValidHost, Placement, decide, host_fits, placement_record


class _Filled(Exception):
    """The candidate filled up between the decision and its claim."""


def instance_place(instance: Instance, hosts: Any = None, held: frozenset[int] = frozenset()) -> Host:
    """Choose a host and claim it, inside the caller's transaction; the decision is recorded.

    ``hosts`` and ``held`` are those of scheduler.services.decide. NoValidHost when no host can
    take it, or every candidate filled up meanwhile (lost the race).
    """
    group_lock(instance)
    return placement_claim(instance, decide(instance, hosts, held))


def group_lock(instance: Instance) -> None:
    """Members of one server group are placed one at a time (its row locked until the caller's
    transaction ends), so two cannot both take the same host (anti-affinity) or both open a host of
    their own (affinity)."""
    if instance.server_group_id is not None:
        ServerGroup.objects.for_tenant(instance.tenant_id).select_for_update().get(
            pk=instance.server_group_id
        )


def placement_claim(instance: Instance, placement: Placement, into: str = "host") -> Host:
    """Claim the first candidate of ``placement`` that still has room: ``instance.host`` is set
    (or ``instance.migration_host``, ``into``: a move's target, held along with its host)."""
    for host_id in placement.candidates:
        try:
            with transaction.atomic():
                locked = Host.objects.select_for_update().get(pk=host_id)
                if not host_fits(locked, placement.request):
                    # Rolling the savepoint back releases this host's lock.
                    raise _Filled
                setattr(instance, into, locked)
                instance.save(update_fields=[into, "updated"])
                placement_record(instance, locked, {**placement.record, "host": locked.name})
                return locked
        except _Filled:
            continue
    error = "no valid host: every candidate filled up while placing (lost the race)"
    placement_record(instance, None, {**placement.record, "error": error, "host": ""})
    raise NoValidHost(error)
