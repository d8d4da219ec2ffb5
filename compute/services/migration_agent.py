"""What the hosts do for a move: the target's preparation and its undoing, and finding out, after
an agent died mid-move or a move outlived its deadline, where the guest really runs (the request
and the records of the end are compute.services.migration's, which the web process loads).
"""

from __future__ import annotations

import time

from django.conf import settings

from compute.drivers import volume_files
from compute.drivers.base import DriverError, VmDriver
from compute.drivers.libvirt import LibvirtDriver
from compute.models import Host, Instance, InstanceKind, InstanceState, Volume
from compute.services import ports
from compute.services.guests import disk_size_gib, guest_spec, seed_contents, volume_path
from compute.services.migration import migration_done, migration_undone


def peer_driver(host: Host) -> VmDriver:
    """The hypervisor of another host, as this one's daemon migrates to it (its peer URI)."""
    if not host.peer_uri:
        raise DriverError(f"host {host.name} has no peer URI: it takes no migration")
    return LibvirtDriver(host.peer_uri)


def arrival_prepare(instance: Instance, host: Host, driver: VmDriver) -> None:
    """On the target, before a VM arrives: its network port (bridge, tunnel, DHCP, rules) and,
    when the instance store is not shared, an empty disk of its size for the copy to fill."""
    ports.port_attach(instance, host=host)
    if not settings.NUBIS_SHARED_INSTANCE_STORE and instance.kind == InstanceKind.VM:
        spec = guest_spec(instance)
        driver.create_disk(spec, instance.image.disk_path, disk_size_gib(instance))
        # A read-only disk is not copied by the move: the config drive is written here.
        if spec.seed_path:
            driver.create_seed(spec, *seed_contents(instance))
        # Its attached volumes are copied along too: empty files of their size for the copy to fill.
        for volume in Volume.objects.unscoped().filter(instance=instance, deleted_at__isnull=True):
            volume_files.volume_make(str(volume_path(volume)), volume.size_gib)


def arrival_cancel(instance: Instance, host: Host) -> None:
    """On the target, after a move that did not happen: what arrival_prepare made goes."""
    ports.port_detach(instance, host=host)


def migration_where(instance: Instance, source: VmDriver, target: VmDriver) -> str:
    """Where the guest runs now: "source", "target", "moving" (both hosts have it and one side is
    paused: the transfer or its switch-over is under way) or "nowhere"."""
    name = instance.domain_name
    here, there = source.power_state(name), target.power_state(name)
    gone = (None, "stopped")
    if there == "running" and here in gone:
        return "target"
    if here == "running" and there in gone:
        return "source"
    if "paused" in (here, there) and not (here in gone and there in gone):
        return "moving"
    return "nowhere"


SETTLE_AFTER_ABORT = 15.0  # seconds an aborted move gets to end before it is judged


def migration_settle(instance: Instance, source: VmDriver, target: Host, wait: float = 60.0) -> str:
    """After an agent died mid-move: the source's libvirt drives a peer-to-peer move on its own, so
    wait (at most ``wait`` seconds) for it to end; one still under way then is aborted. Then make
    the database say where the guest runs. Returns "source", "target", "moving" (still under way:
    only with ``wait`` 0, for a caller that comes back later) or "nowhere"."""
    peer = peer_driver(target)
    where = _wait_while_moving(instance, source, peer, wait)
    if where == "moving" and wait > 0 and source.migration_abort(instance.domain_name):
        where = _wait_while_moving(instance, source, peer, SETTLE_AFTER_ABORT)
    if where == "target":
        migration_done(
            instance, target, InstanceState.RUNNING, vnc_port=peer.vnc_port(instance.domain_name), fault=""
        )
    elif where == "source":
        # The target may hold an inactive copy from the aborted arrival: it goes, disk kept.
        if peer.power_state(instance.domain_name) is not None:
            peer.undefine(instance.domain_name)
        migration_undone(instance, InstanceState.RUNNING)
    return where


def _wait_while_moving(instance: Instance, source: VmDriver, target: VmDriver, wait: float) -> str:
    deadline = time.monotonic() + wait
    where = migration_where(instance, source, target)
    while where == "moving" and time.monotonic() < deadline:
        time.sleep(0.5)
        where = migration_where(instance, source, target)
    return where
