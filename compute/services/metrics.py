"""Usage collection on a host's agent: counters from the drivers, rated into RAW samples.

The agent of each host calls :func:`metrics_collect` every few seconds with one long-lived
:class:`Sampler` (it keeps the previous reading of each instance and of the host in memory). The
readings are the drivers' plain facts (``Counters``): a VM driver's ``guest_usage``, a container
driver's ``usage``, the network driver's port counters and ``host_usage``. Rollups, charts and the
scheduler's host load read the stored samples: see compute.metrics.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any

from django.utils import timezone

from compute.drivers import network
from compute.drivers.base import ContainerDriver, Counters, DriverError, VmDriver
from compute.drivers.host import host_usage
from compute.models import Host, Instance, InstanceKind, InstanceState, SampleResolution, UsageSample
from compute.services.containers import container_driver

log = logging.getLogger(__name__)


def instance_traffic(port: str | None) -> tuple[int, int]:
    """(received, sent) by the instance behind host-side interface ``port``; (0, 0) if there is none.

    The host end of a veth or tap sees the traffic mirrored: what it transmits the instance
    receives, so its tx is the instance's rx and the other way round.
    """
    if not port:
        return 0, 0
    try:
        host_rx, host_tx = network.port_counters(port)
    except (network.PlumbingError, ValueError):
        return 0, 0
    return host_tx, host_rx


def container_usage(containers: ContainerDriver, name: str, port: str | None) -> Counters | None:
    """Counters of container ``name``: its cgroup's, and its port's traffic; None once it is gone."""
    net_rx, net_tx = instance_traffic(port)
    counters = containers.usage(name)
    return None if counters is None else replace(counters, net_rx_bytes=net_rx, net_tx_bytes=net_tx)


def settle_balloon(prev: Counters | None, cur: Counters, now: float | None = None) -> Counters:
    """``cur`` with a VM's memory figure held at ``prev``'s while the guest's report predates a balloon move.

    The figure is the balloon's live size minus what the guest last reported it could free, and the
    guest reports only every stats period: right after the balloon moved the two disagree (an idle
    guest deflated from 96 to 256 MiB read 244 MiB in use for one sample). That would make the
    adjuster grow a VM it has just grown, again and again; so the last consistent figure stands
    until a report newer than the move (``now``, wall-clock seconds, when the move was seen) comes.
    """
    if prev is None or cur.balloon_kib is None or prev.balloon_kib is None:
        return cur
    moved_at = prev.balloon_moved_at
    if cur.balloon_kib != prev.balloon_kib:
        moved_at = time.time() if now is None else now
    if moved_at is None:
        return cur
    if cur.guest_report_at is not None and cur.guest_report_at > moved_at:
        return replace(cur, balloon_moved_at=None)
    return replace(cur, mem_bytes=prev.mem_bytes, balloon_moved_at=moved_at)


# -- rates -------------------------------------------------------------------------------------
def rates(
    prev: Counters, cur: Counters, cpus: int = 1, ceiling: float | None = None
) -> dict[str, Any] | None:
    """UsageSample field values for the interval between two readings; None if it cannot be rated.

    ``cpus`` scales cpu_pct: 1 for percent of one CPU, the CPU count for percent of all of them.
    ``ceiling`` caps cpu_pct where it has a hard limit (a host: 100% of its CPUs); the kernel's
    busy time counts in clock ticks, so over a short interval it can read a little above it.
    A counter that went down means the source restarted (a new container or domain under the
    same name, a vanished interface): the interval mixes two lives, so it gives no sample.
    """
    seconds = cur.taken - prev.taken
    if seconds <= 0:
        return None
    deltas = {
        "cpu": cur.cpu_ns - prev.cpu_ns,
        "blk_read_bps": cur.blk_read_bytes - prev.blk_read_bytes,
        "blk_write_bps": cur.blk_write_bytes - prev.blk_write_bytes,
        "net_rx_bps": cur.net_rx_bytes - prev.net_rx_bytes,
        "net_tx_bps": cur.net_tx_bytes - prev.net_tx_bytes,
    }
    if any(delta < 0 for delta in deltas.values()):
        return None
    cpu_pct = deltas.pop("cpu") / (seconds * 1e9 * cpus) * 100.0
    values: dict[str, Any] = {
        "cpu_pct": cpu_pct if ceiling is None else min(cpu_pct, ceiling),
        "mem_bytes": cur.mem_bytes,
        "mem_peak_bytes": cur.mem_peak_bytes,
        "pids": cur.pids,
    }
    values.update({field: delta / seconds for field, delta in deltas.items()})
    return values


SampleKey = tuple[str, int]


class Sampler:
    """The previous reading of each instance and of the host, to rate the next one against.

    In memory, in the agent process: after an agent restart the first round gives no samples.
    """

    def __init__(self, host_cpus: int | None = None) -> None:
        self.host_cpus = host_cpus or os.cpu_count() or 1
        self._last: dict[SampleKey, Counters] = {}

    def sample(
        self,
        counters: Counters,
        *,
        host: Host | None = None,
        instance: Instance | None = None,
        at: datetime | None = None,
    ) -> UsageSample | None:
        """An unsaved RAW UsageSample from the previous reading of this host or instance to ``counters``.

        None for the first reading of a key and for an interval with a counter reset.
        """
        if host is not None and instance is None:
            key: SampleKey = ("host", host.pk)
        elif instance is not None and host is None:
            key = ("instance", instance.pk)
        else:
            raise ValueError("a sample is of exactly one host or one instance")
        prev = self._last.get(key)
        counters = settle_balloon(prev, counters)
        self._last[key] = counters
        if prev is None:
            return None
        if host is not None:
            values = rates(prev, counters, cpus=self.host_cpus, ceiling=100.0)
        else:
            values = rates(prev, counters)
        if values is None:
            return None
        return UsageSample(
            host=host,
            instance=instance,
            resolution=SampleResolution.RAW,
            at=at or timezone.now(),
            **values,
        )

    def retain(self, keys: Iterable[SampleKey]) -> None:
        """Forget every key but ``keys``: instances that stopped or left start afresh when back."""
        keep = set(keys)
        for key in list(self._last):
            if key not in keep:
                del self._last[key]

    def __len__(self) -> int:
        return len(self._last)


def metrics_collect(
    host: Host, sampler: Sampler, vms: VmDriver | None, containers: ContainerDriver | None = None
) -> int:
    """Read this host and its running instances, store one RAW sample each; how many were stored.

    ``vms`` reads the host's VMs; None on a host without VMs (their samples are skipped).
    ``containers`` reads its containers (this host's container driver by default).
    """
    containers = containers or container_driver()
    instances = list(
        Instance.objects.unscoped()
        .filter(host=host, state=InstanceState.RUNNING)
        .only("id", "uuid", "kind", "network_id", "host_id")
    )
    domains: dict[str, Counters] = {}
    if vms is not None and any(i.kind == InstanceKind.VM for i in instances):
        try:
            domains = vms.guest_usage()
        except DriverError as exc:
            # Containers and the host are still worth recording when the daemon is away.
            log.warning("metrics: libvirt domain stats failed: %s", exc)
    now = timezone.now()
    samples: list[UsageSample] = []
    seen: list[SampleKey] = [("host", host.pk)]
    for instance in instances:
        if instance.kind == InstanceKind.VM:
            counters = domains.get(instance.domain_name)
        else:
            port = instance.port_name if instance.network_id else None
            counters = container_usage(containers, instance.domain_name, port)
        if counters is None:
            continue
        seen.append(("instance", instance.pk))
        sample = sampler.sample(counters, instance=instance, at=now)
        if sample is not None:
            samples.append(sample)
    sample = sampler.sample(host_usage(), host=host, at=now)
    if sample is not None:
        samples.append(sample)
    sampler.retain(seen)
    UsageSample.objects.bulk_create(samples)
    return len(samples)
