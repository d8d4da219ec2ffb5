"""Celery tasks of the compute agent (they run on the host's own queue)."""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

from celery import shared_task
from celery.signals import worker_ready, worker_shutting_down
from django.conf import settings

from compute import metrics
from compute.drivers.libvirt import LibvirtDriver
from compute.models import Host
from compute.services import (
    admission,
    agent,
    drs,
    drs_placement,
    drs_whatif,
    evacuation,
    ha,
    image_upload,
    memory,
)
from compute.services.allocation import allocation_adjust_all
from compute.services.hosts import hosts_mark_down
from compute.services.outbox import dispatcher_loop
from compute.services.ports import host_networks_sync
from core.queues import CONTROL_QUEUE

_dispatcher_stop = threading.Event()


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
    return hosts_mark_down()


@shared_task(name="compute.ha_check")
def ha_check() -> dict[str, list[str]]:
    """Periodic (control queue): fence hosts silent past NUBIS_HA_GRACE, restart their HA instances."""
    return ha.ha_check()


@shared_task(name="compute.drs_pass")
def drs_pass() -> int | None:
    """Periodic (control queue): a DRS pass when its interval has passed; then start approved moves.
    What-ifs left unfinished too long are ended with why, and so are new instances staff did not
    place in time (manual mode)."""
    drs_whatif.drs_what_if_expire()
    drs_placement.drs_placement_expire()
    done = drs.drs_pass_run()
    if done is None:
        drs.drs_execute()
    return done.pk if done is not None else None


@shared_task(name="compute.drs_what_if")
def drs_what_if(pass_id: int) -> int:
    """Control queue: compute a what-if pass staff asked for (the simulator runs here, not in the web)."""
    return drs_whatif.drs_what_if_run(pass_id).moves


@shared_task(name="compute.drs_execute")
def drs_execute() -> list[int]:
    """Control queue, after a move ends: settle DRS's moves and start the next approved ones."""
    return drs.drs_execute()


@shared_task(name="compute.evacuate")
def evacuate() -> dict[str, Any]:
    """Periodic, and after each move (control queue): the next moves off hosts entering maintenance."""
    return evacuation.evacuate_all()


@shared_task(name="compute.networks_sync")
def networks_sync(host_name: str) -> dict[str, list[str]]:
    """On a host's queue: bring its bridges, DHCP, NAT and port rules in line with the database."""
    host = Host.objects.filter(name=host_name).first()
    return host_networks_sync(host) if host is not None else {}


@shared_task(name="compute.admission_run")
def admission_run() -> list[str]:
    """Periodic and on release (control queue): admit waiting requests that now fit, in the queue's
    order; fail those waiting too long."""
    return admission.admission_run()


@shared_task(name="compute.allocation_adjust")
def allocation_adjust() -> dict[str, Any]:
    """Periodic (control queue): move dynamic instances' memory and CPU toward their measured demand."""
    return allocation_adjust_all()


@shared_task(name="compute.uploads_sweep")
def uploads_sweep() -> list[str]:
    """Periodic (control queue): undo image uploads a dead web process left half-made."""
    return image_upload.uploads_sweep()


@shared_task(name="compute.metrics_rollup")
def metrics_rollup() -> dict[str, int]:
    """Periodic (control queue): down-sample usage series (raw -> minutes -> hours) and expire them."""
    return metrics.metrics_rollup()


@shared_task(name="compute.memory_apply", acks_late=True, reject_on_worker_lost=True)
def memory_apply(host_name: str) -> dict[str, dict[str, str]]:
    """On a host's queue: bring its dynamic instances' live memory and CPU to the grants in the
    database; {"memory": {instance uuid: what happened}, "cpu": {...}}."""
    host = Host.objects.filter(name=host_name).first()
    if host is None:
        return {}
    return {
        "memory": memory.memory_apply(host, local_driver()),
        "cpu": memory.cpu_apply(host, local_driver()),
    }


@worker_ready.connect
def start_dispatcher(sender: Any = None, **kwargs: Any) -> None:
    """A worker of the control queue also runs the operations outbox (compute.services.outbox):
    a thread of its main process, which does not depend on the broker to be woken."""
    queues = set(sender.app.amqp.queues.consume_from) if sender is not None else set()
    if CONTROL_QUEUE not in queues:
        return  # a compute agent, or a worker of other queues
    threading.Thread(target=dispatcher_loop, args=(_dispatcher_stop,), name="outbox", daemon=True).start()


@worker_shutting_down.connect
def stop_dispatcher(**kwargs: Any) -> None:
    _dispatcher_stop.set()
