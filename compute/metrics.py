"""Usage metrics: read cumulative counters, turn them into rate samples, roll the samples up, chart them.

The agent of each host calls :func:`metrics_collect` every few seconds with one long-lived
:class:`Sampler` (it keeps the previous reading of each instance and of the host in memory);
:func:`metrics_rollup` runs periodically anywhere and down-samples RAW -> MINUTE -> HOUR.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import libvirt
from django.db import transaction
from django.db.models import Avg, Count, FloatField, Max, Q, Sum
from django.db.models.functions import Cast, Coalesce, Trunc
from django.utils import timezone

from compute.drivers.oci import CGROUP_ROOT, _cgroup_dir
from compute.models import Host, Instance, InstanceKind, InstanceState, SampleResolution, UsageSample

log = logging.getLogger(__name__)

RAW_KEEP = timedelta(hours=1)  # RAW samples older than this become MINUTE samples
MINUTE_KEEP = timedelta(days=1)  # MINUTE samples older than this become HOUR samples
HOUR_KEEP = timedelta(days=30)  # HOUR samples older than this are deleted
HOST_LOAD_WINDOW = timedelta(seconds=60)

SYS_NET = Path("/sys/class/net")
SYS_BLOCK = Path("/sys/block")
PROC = Path("/proc")
SECTOR = 512  # /proc/diskstats counts 512-byte sectors whatever the device's own sector size
# Block devices that are not disks (loop, RAM-backed) or that sit on top of disks whose I/O is
# already counted (device-mapper, md RAID): counting them too would count the same bytes twice.
NOT_A_DISK = re.compile(r"^(loop|ram|zram|dm-|md)\d+$")
# The rate fields of a sample and the gauges, as aggregated by rollups, series and host_load.
RATE_FIELDS = ("blk_read_bps", "blk_write_bps", "net_rx_bps", "net_tx_bps")
MEAN_FIELDS = ("cpu_pct", "mem_bytes", "pids", *RATE_FIELDS)
INT_FIELDS = frozenset({"mem_bytes", "mem_peak_bytes", "pids"})


@dataclass(frozen=True)
class Counters:
    """One reading of an instance's or host's cumulative counters and gauges.

    ``taken`` is time.monotonic() at the reading: rates divide by monotonic time, immune to clock jumps.
    A VM whose guest reports memory statistics also carries the balloon's size at the reading, the
    wall-clock second of the guest's last report, and when the Sampler last saw the balloon move.
    """

    cpu_ns: int
    mem_bytes: int
    mem_peak_bytes: int | None
    pids: int | None
    blk_read_bytes: int
    blk_write_bytes: int
    net_rx_bytes: int
    net_tx_bytes: int
    taken: float
    balloon_kib: int | None = None
    guest_report_at: int | None = None
    balloon_moved_at: float | None = None


# -- readers -----------------------------------------------------------------------------------
def _read_int(path: Path) -> int:
    return int(path.read_text().split()[0])


def _optional_int(path: Path) -> int | None:
    try:
        return _read_int(path)
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _keyed(path: Path) -> dict[str, int]:
    """A flat 'key value' file (memory.stat, cpu.stat) as a dict."""
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _port_bytes(port: str | None) -> tuple[int, int]:
    """(received, sent) by the instance behind host-side interface ``port``; (0, 0) if there is none.

    The host end of a veth or tap sees the traffic mirrored: what it transmits the instance
    receives, so its tx is the instance's rx and the other way round.
    """
    if not port:
        return 0, 0
    stats = SYS_NET / port / "statistics"
    try:
        return _read_int(stats / "tx_bytes"), _read_int(stats / "rx_bytes")
    except (FileNotFoundError, ValueError):
        return 0, 0


def _blkio_v1(directory: Path) -> tuple[int, int]:
    """Read and written bytes from blkio.throttle.io_service_bytes ('MAJ:MIN Read N' lines).

    The throttle file is there whatever the I/O scheduler (the weight files are BFQ's only). On v1,
    buffered writes are written back outside the cgroup, so mostly reads and direct writes show.
    """
    read = written = 0
    try:
        text = (directory / "blkio.throttle.io_service_bytes").read_text()
    except FileNotFoundError:
        return 0, 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "Read":
            read += int(parts[2])
        elif len(parts) == 3 and parts[1] == "Write":
            written += int(parts[2])
    return read, written


def _io_v2(directory: Path) -> tuple[int, int]:
    """Read and written bytes from io.stat ('MAJ:MIN rbytes=N wbytes=N ...' lines)."""
    read = written = 0
    try:
        text = (directory / "io.stat").read_text()
    except FileNotFoundError:
        return 0, 0
    for line in text.splitlines():
        for item in line.split()[1:]:
            key, _, value = item.partition("=")
            if key == "rbytes":
                read += int(value)
            elif key == "wbytes":
                written += int(value)
    return read, written


def read_container(name: str, port: str | None) -> Counters | None:
    """Counters of runc container ``name`` from its cgroup (v1 or v2); None if the cgroup is gone.

    Memory is the working set: usage minus inactive file cache, which the kernel drops first under
    pressure (what `docker stats` shows). tmpfs pages are shmem, on the anon lists, so they count.
    The peak is the kernel's high-water mark of the whole charge (cache included) since the start.
    """
    config = {"linux": {"cgroupsPath": f"/nubis/{name}"}}
    net_rx, net_tx = _port_bytes(port)
    try:
        if (CGROUP_ROOT / "cgroup.controllers").exists():  # pure v2: one directory for everything
            directory = _cgroup_dir("", config)
            taken = time.monotonic()
            cpu_ns = _keyed(directory / "cpu.stat")["usage_usec"] * 1000
            stat = _keyed(directory / "memory.stat")
            mem = _read_int(directory / "memory.current") - stat.get("inactive_file", 0)
            peak = _optional_int(directory / "memory.peak")  # kernel 5.19+
            pids = _optional_int(directory / "pids.current")
            blk_read, blk_write = _io_v2(directory)
        else:
            memory = _cgroup_dir("memory", config)
            taken = time.monotonic()
            cpu_ns = _read_int(_cgroup_dir("cpuacct", config) / "cpuacct.usage")
            stat = _keyed(memory / "memory.stat")
            # total_*: hierarchical, though runc's container cgroup has no children anyway.
            mem = _read_int(memory / "memory.usage_in_bytes") - stat.get("total_inactive_file", 0)
            peak = _optional_int(memory / "memory.max_usage_in_bytes")
            pids = _optional_int(_cgroup_dir("pids", config) / "pids.current")
            blk_read, blk_write = _blkio_v1(_cgroup_dir("blkio", config))
    except (FileNotFoundError, KeyError):
        # The cgroup went away (container stopped or deleted), possibly between two of the reads.
        return None
    return Counters(
        cpu_ns=cpu_ns,
        mem_bytes=max(mem, 0),
        mem_peak_bytes=peak,
        pids=pids,
        blk_read_bytes=blk_read,
        blk_write_bytes=blk_write,
        net_rx_bytes=net_rx,
        net_tx_bytes=net_tx,
        taken=taken,
    )


DOMAIN_STATS = (
    libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_BLOCK
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
)
# Active = running or paused (a paused guest still holds its memory). NOWAIT: a domain busy with a
# long job (migration, snapshot) gives what libvirt has without blocking the whole collection.
DOMAIN_FLAGS = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE | getattr(
    libvirt, "VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT", 0
)


def _domain_counters(stats: dict[str, Any], taken: float) -> Counters:
    blk_read = blk_write = net_rx = net_tx = 0
    for key, value in stats.items():
        parts = key.split(".")
        # block.<i>.rd.bytes, net.<i>.rx.bytes; libvirt already reports the network from the
        # guest's side (it swaps a tap's counters), so rx is what the guest received.
        if len(parts) != 4 or parts[3] != "bytes":
            continue
        kind, metric = parts[0], parts[2]
        if kind == "block" and metric == "rd":
            blk_read += int(value)
        elif kind == "block" and metric == "wr":
            blk_write += int(value)
        elif kind == "net" and metric == "rx":
            net_rx += int(value)
        elif kind == "net" and metric == "tx":
            net_tx += int(value)
    # Memory is what the guest needs of the memory it was given: balloon.current (the balloon's actual
    # size) minus balloon.usable (the guest's MemAvailable: free pages plus caches it can drop). The
    # dynamic-allocation adjuster compares this with the grant, so it must be in the grant's units:
    # it includes the memory the guest kernel reserves outside MemTotal (about 50 MiB of a 256 MiB
    # busybox guest), which the balloon can never take either. QEMU's resident set (balloon.rss) is
    # no demand signal: measured under TCG, an idle 256 MiB guest using 34 MiB had an RSS of 248 MiB,
    # still 210 MiB after ballooning down to 100, so every VM would look full and grow to its maximum.
    # The guest reports its statistics only with the balloon driver loaded and a stats period set
    # (domain_xml sets 2 s); until then, or without a driver, the host's cost (RSS) is the fallback.
    # Right after a balloon move the guest's last report is older than the move: see settle_balloon.
    current = stats.get("balloon.current")
    reported = stats.get("balloon.usable", stats.get("balloon.unused"))
    balloon_kib = guest_free_kib = None
    if current is not None and reported is not None:
        balloon_kib, guest_free_kib = int(current), int(reported)
    if balloon_kib is not None and guest_free_kib is not None:
        mem = max(balloon_kib - guest_free_kib, 0) * 1024
    elif "balloon.rss" in stats:
        mem = int(stats["balloon.rss"]) * 1024
    else:
        mem = int(current or 0) * 1024
    return Counters(
        cpu_ns=int(stats.get("cpu.time", 0)),
        mem_bytes=mem,
        mem_peak_bytes=None,
        pids=None,
        blk_read_bytes=blk_read,
        blk_write_bytes=blk_write,
        net_rx_bytes=net_rx,
        net_tx_bytes=net_tx,
        taken=taken,
        balloon_kib=balloon_kib,
        guest_report_at=None if balloon_kib is None else int(stats.get("balloon.last-update", 0)),
    )


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


def read_domains(conn: libvirt.virConnect) -> dict[str, Counters]:
    """Counters of every active domain of ``conn``, by domain name, from one bulk stats call."""
    records = conn.getAllDomainStats(DOMAIN_STATS, DOMAIN_FLAGS)
    taken = time.monotonic()
    return {dom.name(): _domain_counters(stats, taken) for dom, stats in records}


def _is_disk(name: str) -> bool:
    return NOT_A_DISK.match(name) is None


def read_host() -> Counters:
    """Counters of the whole host from /proc: busy CPU time of all CPUs, memory in use, disks, network."""
    taken = time.monotonic()
    # cpu user nice system idle iowait irq softirq steal guest guest_nice (clock ticks). Busy excludes
    # idle and iowait (waiting, not computing); guest time is already inside user and nice.
    fields = (PROC / "stat").read_text().splitlines()[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    ticks = user + nice + system + irq + softirq + steal
    cpu_ns = ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")

    meminfo = {}
    for line in (PROC / "meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        meminfo[key] = int(rest.split()[0])
    # MemAvailable, not MemFree: page cache the kernel can drop is not in use.
    mem = (meminfo["MemTotal"] - meminfo["MemAvailable"]) * 1024

    # Whole disks are the entries of /sys/block (partitions live under their disk there).
    disks = {p.name for p in SYS_BLOCK.iterdir() if _is_disk(p.name)} if SYS_BLOCK.exists() else set()
    blk_read = blk_write = 0
    for line in (PROC / "diskstats").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 10 and parts[2] in disks:
            blk_read += int(parts[5]) * SECTOR
            blk_write += int(parts[9]) * SECTOR

    # Physical interfaces only: lo, bridges, taps and veths (all under /sys/devices/virtual/net)
    # carry the instances' traffic once more, and come and go with them.
    net_rx = net_tx = 0
    for line in (PROC / "net" / "dev").read_text().splitlines()[2:]:
        iface, _, rest = line.partition(":")
        if Path(f"/sys/devices/virtual/net/{iface.strip()}").exists():
            continue
        values = rest.split()
        net_rx += int(values[0])
        net_tx += int(values[8])

    # Field 4 of loadavg is running/total scheduling entities: tasks, as a pids cgroup counts them.
    pids = int((PROC / "loadavg").read_text().split()[3].partition("/")[2])
    return Counters(
        cpu_ns=cpu_ns,
        mem_bytes=mem,
        mem_peak_bytes=None,
        pids=pids,
        blk_read_bytes=blk_read,
        blk_write_bytes=blk_write,
        net_rx_bytes=net_rx,
        net_tx_bytes=net_tx,
        taken=taken,
    )


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


def metrics_collect(host: Host, sampler: Sampler, conn: libvirt.virConnect | None) -> int:
    """Read this host and its running instances, store one RAW sample each; how many were stored.

    ``conn`` is the host's libvirt connection; None on a host without VMs (their samples are skipped).
    """
    instances = list(
        Instance.objects.unscoped()
        .filter(host=host, state=InstanceState.RUNNING)
        .only("id", "uuid", "kind", "network_id", "host_id")
    )
    domains: dict[str, Counters] = {}
    if conn is not None and any(i.kind == InstanceKind.VM for i in instances):
        try:
            domains = read_domains(conn)
        except libvirt.libvirtError as exc:
            # Containers and the host are still worth recording when the daemon is away.
            log.warning("metrics: libvirt domain stats failed: %s", exc)
    now = timezone.now()
    samples: list[UsageSample] = []
    seen: list[SampleKey] = [("host", host.pk)]
    for instance in instances:
        if instance.kind == InstanceKind.VM:
            counters = domains.get(instance.domain_name)
        else:
            counters = read_container(
                instance.domain_name, instance.port_name if instance.network_id else None
            )
        if counters is None:
            continue
        seen.append(("instance", instance.pk))
        sample = sampler.sample(counters, instance=instance, at=now)
        if sample is not None:
            samples.append(sample)
    sample = sampler.sample(read_host(), host=host, at=now)
    if sample is not None:
        samples.append(sample)
    sampler.retain(seen)
    UsageSample.objects.bulk_create(samples)
    return len(samples)


# -- aggregation -------------------------------------------------------------------------------
def _weighted_sums() -> dict[str, Any]:
    """Sums for time-weighted means: each sample weighs the seconds it stands for (its resolution).

    With one resolution this is the plain mean; series() mixes MINUTE and RAW rows, where a minute
    average must count six times a raw sample. Numerator and weight are summed separately (and
    divided in Python) so nulls (VMs have no pids) drop out of both and no SQL division is needed.
    """
    weight = Cast("resolution", FloatField())
    sums: dict[str, Any] = {}
    for field in MEAN_FIELDS:
        sums[f"num_{field}"] = Sum(Cast(field, FloatField()) * weight)
        sums[f"den_{field}"] = Sum(weight, filter=Q(**{f"{field}__isnull": False}))
    # A bucket's peak: the highest peak, or the highest level where no peak is known (hosts, VMs).
    sums["mem_peak_bytes"] = Coalesce(Max("mem_peak_bytes"), Max("mem_bytes"))
    sums["n"] = Count("id")
    return sums


def _means(row: dict[str, Any]) -> dict[str, Any]:
    """UsageSample field values from one row of _weighted_sums()."""
    values: dict[str, Any] = {"mem_peak_bytes": row["mem_peak_bytes"]}
    for field in MEAN_FIELDS:
        num, den = row[f"num_{field}"], row[f"den_{field}"]
        mean = num / den if num is not None and den else None
        if field in INT_FIELDS and mean is not None:
            mean = round(mean)
        values[field] = mean
    if values["mem_bytes"] is None:  # a NOT NULL column; only possible on an empty bucket
        values["mem_bytes"] = 0
    if values["cpu_pct"] is None:
        values["cpu_pct"] = 0.0
    for field in RATE_FIELDS:
        values[field] = values[field] or 0.0
    return values


_KIND = {SampleResolution.MINUTE: "minute", SampleResolution.HOUR: "hour"}


def _buckets(rows: Any, resolution: SampleResolution) -> Any:
    """``rows`` (a UsageSample queryset) grouped by owner and ``resolution`` bucket, with weighted sums."""
    return (
        rows.annotate(bucket=Trunc("at", _KIND[resolution], tzinfo=UTC))
        .values("host_id", "instance_id", "bucket")
        .annotate(**_weighted_sums())
        .order_by("bucket")
    )


def _floor(moment: datetime, seconds: int) -> datetime:
    """``moment`` rounded down to a multiple of ``seconds`` since the epoch (a bucket boundary, UTC)."""
    stamp = int(moment.timestamp())
    return datetime.fromtimestamp(stamp - stamp % seconds, UTC)


class _Raced(Exception):
    """Another rollup consumed some of the same rows between this one's read and its delete."""


def _roll(source: SampleResolution, target: SampleResolution, before: datetime) -> tuple[int, int]:
    """Replace the ``source`` samples older than ``before`` (a ``target`` bucket boundary) by their
    ``target`` bucket means; (rows consumed, rows created). Call inside a transaction.

    Only whole buckets: ``before`` is a boundary and collectors write at the present, an hour or a
    day after it, so a bucket gets no new rows once it is rolled up.
    """
    old = UsageSample.objects.filter(resolution=source, at__lt=before)
    rows = list(_buckets(old, target))
    consumed = sum(row["n"] for row in rows)
    if not consumed:
        return 0, 0
    deleted, _ = old.delete()
    # A concurrent rollup may have read the same rows and committed first: then our DELETE waited for
    # its row locks and found fewer rows than we averaged. Inserting our means would duplicate its
    # buckets, so this attempt is rolled back and retried against what is committed now.
    if deleted != consumed:
        raise _Raced
    UsageSample.objects.bulk_create(
        [
            UsageSample(
                host_id=row["host_id"],
                instance_id=row["instance_id"],
                resolution=target,
                at=row["bucket"],
                **_means(row),
            )
            for row in rows
        ],
        batch_size=1000,
    )
    return consumed, len(rows)


def metrics_rollup(now: datetime | None = None) -> dict[str, int]:
    """Down-sample: RAW older than RAW_KEEP into MINUTE means, MINUTE older than MINUTE_KEEP into HOUR
    means (mem_peak is the maximum), HOUR older than HOUR_KEEP deleted. Idempotent, concurrency-safe.

    Returns counts: raw_rolled, minute_created, minute_rolled, hour_created, hour_deleted.
    """
    now = now or timezone.now()
    for attempt in range(5):
        try:
            with transaction.atomic():
                raw_rolled, minute_created = _roll(
                    SampleResolution.RAW, SampleResolution.MINUTE, _floor(now - RAW_KEEP, 60)
                )
                # In the same transaction, so minute means of old raw rows go on to hours at once.
                minute_rolled, hour_created = _roll(
                    SampleResolution.MINUTE, SampleResolution.HOUR, _floor(now - MINUTE_KEEP, 3600)
                )
                hour_deleted, _ = UsageSample.objects.filter(
                    resolution=SampleResolution.HOUR, at__lt=now - HOUR_KEEP
                ).delete()
        except _Raced:
            log.info("metrics rollup: raced with another rollup (attempt %d), retrying", attempt + 1)
            continue
        return {
            "raw_rolled": raw_rolled,
            "minute_created": minute_created,
            "minute_rolled": minute_rolled,
            "hour_created": hour_created,
            "hour_deleted": hour_deleted,
        }
    raise RuntimeError("metrics rollup: kept racing with concurrent rollups")


KEEP = {
    SampleResolution.RAW: RAW_KEEP,
    SampleResolution.MINUTE: MINUTE_KEEP,
    SampleResolution.HOUR: HOUR_KEEP,
}


def pick_resolution(since: datetime, now: datetime | None = None) -> SampleResolution:
    """The finest resolution whose retention still reaches back to ``since``."""
    age = (now or timezone.now()) - since
    for resolution in (SampleResolution.RAW, SampleResolution.MINUTE):
        if age <= KEEP[resolution]:
            return resolution
    return SampleResolution.HOUR


POINT_FIELDS = ("at", "resolution", "mem_peak_bytes", *MEAN_FIELDS)


def series(
    *,
    instance: Instance | None = None,
    host: Host | None = None,
    since: datetime,
    resolution: int | None = None,
) -> list[dict[str, Any]]:
    """Chart points of one instance or host from ``since`` on, oldest first, one per ``resolution`` step.

    Without ``resolution`` the finest one that still covers ``since`` is used. The newest stretch is
    not rolled up yet (RAW is kept an hour, MINUTE a day): finer rows after the last stored point of
    the chosen resolution are averaged into its buckets on the fly, so the chart reaches the present.
    Each point: at, resolution, cpu_pct, mem_bytes, mem_peak_bytes, pids and the four byte rates.
    """
    if (host is None) == (instance is None):
        raise ValueError("a series is of exactly one host or one instance")
    res = SampleResolution(resolution) if resolution is not None else pick_resolution(since)
    owned = (
        UsageSample.objects.filter(host=host)
        if host is not None
        else UsageSample.objects.filter(instance=instance)
    )
    points: list[dict[str, Any]] = list(
        owned.filter(resolution=res, at__gte=since).order_by("at").values(*POINT_FIELDS)
    )
    if res == SampleResolution.RAW:
        return points
    tail_from = points[-1]["at"] + timedelta(seconds=res) if points else since
    finer = owned.filter(resolution__lt=res, at__gte=tail_from)
    for row in _buckets(finer, res):
        points.append({"at": row["bucket"], "resolution": int(res), **_means(row)})
    return points


def host_load(host: Host) -> dict[str, Any] | None:
    """Mean usage of ``host`` over the last minute of RAW samples, for the scheduler; None without any.

    Keys: cpu_pct (of all CPUs), mem_bytes, blk_read_bps, blk_write_bps, net_rx_bps, net_tx_bps, samples.
    """
    fields = ("cpu_pct", "mem_bytes", *RATE_FIELDS)
    row = UsageSample.objects.filter(
        host=host, resolution=SampleResolution.RAW, at__gte=timezone.now() - HOST_LOAD_WINDOW
    ).aggregate(samples=Count("id"), **{field: Avg(field) for field in fields})
    if not row["samples"]:
        return None
    load: dict[str, Any] = {field: float(row[field]) for field in fields}
    load["mem_bytes"] = round(load["mem_bytes"])
    load["samples"] = row["samples"]
    return load


__all__ = [
    "HOUR_KEEP",
    "MINUTE_KEEP",
    "RAW_KEEP",
    "Counters",
    "Sampler",
    "host_load",
    "metrics_collect",
    "metrics_rollup",
    "pick_resolution",
    "rates",
    "read_container",
    "read_domains",
    "read_host",
    "series",
]
