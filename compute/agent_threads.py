"""Background threads of the compute agent: heartbeat, reconciler, the libvirt event listener, and
the answers to the portal's quick calls (compute.agent_rpc)."""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import asdict

from django.conf import settings
from django.db import close_old_connections, connection

from compute.agent_rpc import rpc_loop
from compute.drivers.base import DriverError, HostFacts
from compute.drivers.libvirt import LibvirtDriver, events_enable
from compute.models import Host, Instance, InstanceKind, InstanceState, domain_uuid
from compute.services.containers import container_driver
from compute.services.ha import fence_cleanup
from compute.services.hosts import host_heartbeat, host_is_fenced, host_register, host_unfence
from compute.services.metrics import Sampler, metrics_collect
from compute.services.ports import local_routes
from compute.services.reconcile import container_check, reconcile_host, sync_power
from compute.tasks import local_driver

logger = logging.getLogger("nubis.agent")


def _db_safely(what: str, fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception:  # a failed round is retried on the next one
        logger.exception("%s failed", what)
    finally:
        close_old_connections()
        connection.close()


def heartbeat_loop(name: str, facts: HostFacts, every: float, stop: threading.Event) -> None:
    def beat() -> None:
        if not host_heartbeat(name, routes=local_routes()):
            # The row was deleted (by an admin, say): the host is still here, so register again.
            host_register(name=name, uri=settings.LIBVIRT_URI, facts=asdict(facts))
        if host_is_fenced(name):
            # Declared dead while this agent could not beat (compute.services.ha): destroy every
            # guest first, then rejoin.
            rejoin_after_fence(name)

    while not stop.wait(every):
        _db_safely("heartbeat", beat)


def reconcile_loop(name: str, every: float, stop: threading.Event) -> None:
    def once() -> None:
        host = Host.objects.filter(name=name).first()
        if host is not None and host.fenced_at is None:  # a fenced host first cleans up (heartbeat)
            reconcile_host(host, local_driver())

    while not stop.wait(every):
        _db_safely("reconcile", once)


def containers_loop(name: str, every: float, stop: threading.Event) -> None:
    """runc sends no events to a detached supervisor: watch this host's containers for OOM kills
    and exits instead (reading two cgroup files and `runc state` per container)."""

    def once() -> None:
        driver = container_driver()
        running = Instance.objects.unscoped().filter(
            host__name=name, kind=InstanceKind.CONTAINER, state=InstanceState.RUNNING
        )
        for instance in running.select_related("host"):
            try:
                container_check(instance, driver)
            except DriverError as exc:
                logger.warning("container %s: %s", instance.uuid, exc)

    while not stop.wait(every):
        _db_safely("containers", once)


def metrics_loop(name: str, every: float, stop: threading.Event) -> None:
    """Sample this host and its running instances into the usage time series."""
    sampler = Sampler()
    # Its own read-only connection, reopened when the daemon comes back.
    vms = LibvirtDriver(settings.LIBVIRT_URI, read_only=True)

    def once() -> None:
        host = Host.objects.filter(name=name).first()
        if host is None:
            return
        metrics_collect(host, sampler, vms, container_driver())

    while not stop.wait(every):
        _db_safely("metrics", once)


def event_loop(name: str, stop: threading.Event) -> None:
    """Turn libvirt lifecycle events into state changes (and so into websocket events)."""
    pending: queue.Queue[str] = queue.Queue()

    def on_lifecycle(domain: str) -> None:
        if domain_uuid(domain) is not None:
            pending.put(domain)

    def handle(domain: str) -> None:
        uid = domain_uuid(domain)
        # Only this host's instances: a guest that just left for another host (or is arriving
        # here from one) is the other host's, whatever this daemon says about it.
        instance = Instance.objects.unscoped().filter(uuid=uid, host__name=name).first() if uid else None
        if instance is not None:
            sync_power(instance, local_driver())

    def apply() -> None:
        while not stop.is_set():
            try:
                domain = pending.get(timeout=0.5)
            except queue.Empty:
                continue
            _db_safely("event", functools.partial(handle, domain))

    threading.Thread(target=apply, name="libvirt-events-apply", daemon=True).start()
    LibvirtDriver(settings.LIBVIRT_URI, read_only=True).watch_lifecycle(on_lifecycle, stop)


def rejoin_after_fence(name: str) -> list[str]:
    """The fenced host's agent: destroy its guests, then take the host back into the cluster."""
    host = Host.objects.filter(name=name).first()
    if host is None or host.fenced_at is None:
        return []
    destroyed = fence_cleanup(host, local_driver(), container_driver())
    host_unfence(name)
    logger.warning(
        "agent %s: fenced; destroyed %d guest(s) and rejoined: %s", name, len(destroyed), destroyed
    )
    return destroyed


def start_threads(name: str, facts: HostFacts, stop: threading.Event) -> None:
    # The event implementation must be registered before the connection that listens for events.
    events_enable()
    threads = [
        threading.Thread(
            target=heartbeat_loop, args=(name, facts, settings.NUBIS_HOST_HEARTBEAT_SECONDS, stop)
        ),
        threading.Thread(target=reconcile_loop, args=(name, settings.NUBIS_RECONCILE_SECONDS, stop)),
        threading.Thread(target=event_loop, args=(name, stop)),
        threading.Thread(target=metrics_loop, args=(name, settings.NUBIS_METRICS_SECONDS, stop)),
        threading.Thread(target=containers_loop, args=(name, settings.NUBIS_CONTAINER_WATCH_SECONDS, stop)),
        # The portal's quick calls (consoles, logs, exec), never queued behind an operation.
        threading.Thread(target=rpc_loop, args=(name, stop), name="rpc"),
    ]
    for thread in threads:
        thread.daemon = True
        thread.start()


__all__ = ["DriverError", "start_threads"]
