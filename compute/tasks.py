"""Celery tasks of the compute agent (they run on the host's own queue)."""

from __future__ import annotations

from functools import lru_cache

from celery import shared_task
from django.conf import settings

from compute.drivers.libvirt import LibvirtDriver
from compute.services import agent


@lru_cache(maxsize=1)
def local_driver() -> LibvirtDriver:
    return LibvirtDriver(settings.LIBVIRT_URI)


@shared_task(name="compute.run_operation", acks_late=True, reject_on_worker_lost=True)
def run_operation(operation_id: int) -> str:
    """Carry out one Operation on this host; a repeated delivery of a finished one does nothing."""
    return agent.execute(operation_id, local_driver())


@shared_task(name="compute.hosts_check")
def hosts_check() -> list[str]:
    """Periodic (control queue): hosts whose heartbeat went stale are marked down."""
    from compute.services.hosts import hosts_mark_down

    return hosts_mark_down()
