"""Usage metrics once stored: roll the samples up, chart them, and the host load the scheduler reads.

The samples are written by each host's agent (compute.services.metrics, which reads the drivers);
:func:`metrics_rollup` runs periodically anywhere and down-samples RAW -> MINUTE -> HOUR. Nothing
here touches a host, so the web process can chart without loading a driver.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Avg, Count, FloatField, Max, Q, Sum
from django.db.models.functions import Cast, Coalesce, Trunc
from django.utils import timezone

from compute.models import Host, Instance, SampleResolution, UsageSample

log = logging.getLogger(__name__)

RAW_KEEP = timedelta(hours=1)  # RAW samples older than this become MINUTE samples
MINUTE_KEEP = timedelta(days=1)  # MINUTE samples older than this become HOUR samples
HOUR_KEEP = timedelta(days=30)  # HOUR samples older than this are deleted
HOST_LOAD_WINDOW = timedelta(seconds=60)

# The rate fields of a sample and the gauges, as aggregated by rollups, series and host_load.
RATE_FIELDS = ("blk_read_bps", "blk_write_bps", "net_rx_bps", "net_tx_bps")
MEAN_FIELDS = ("cpu_pct", "mem_bytes", "pids", *RATE_FIELDS)
INT_FIELDS = frozenset({"mem_bytes", "mem_peak_bytes", "pids"})


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
    "host_load",
    "metrics_rollup",
    "pick_resolution",
    "series",
]
