"""Usage metrics against real components: runc containers and their cgroups, a QEMU domain of the real
libvirt daemon, /proc of this host (each read through its driver), and the real database for
collection, rollups and charts.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import libvirt
import pytest
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from compute.containers.oci_spec import oci_config
from compute.drivers.base import Counters
from compute.drivers.host import host_usage
from compute.drivers.libvirt import LibvirtDriver
from compute.drivers.oci import RUNC, OciDriver
from compute.metrics import HOUR_KEEP, host_load, metrics_rollup, pick_resolution, series
from compute.models import (
    Flavor,
    Host,
    Image,
    ImageKind,
    Instance,
    InstanceKind,
    InstanceState,
    SampleResolution,
    UsageSample,
)
from compute.services.containers import container_driver
from compute.services.metrics import Sampler, container_usage, metrics_collect, rates
from tests.factories import make_tenant

assert Path(RUNC).exists(), f"{RUNC} is missing: run scripts/bootstrap-host"

MIB = 1 << 20
RAW, MINUTE, HOUR = SampleResolution.RAW, SampleResolution.MINUTE, SampleResolution.HOUR
# 30 MiB into the container's tmpfs /tmp (charged to its memory cgroup), then two sleepers, then
# the shell itself burns CPU: three processes, as `pids` counts them, once the sleepers exist.
BUSY = (
    "dd if=/dev/zero of=/tmp/fill bs=1M count=30 2>/dev/null; sleep 1000 & sleep 1000 & while :; do :; done"
)


# -- real containers ---------------------------------------------------------------------------
Start = Callable[..., str]


def read_container(name: str, port: str | None) -> Counters | None:
    """What the collector reads of a container: its cgroup (container driver), its port's traffic."""
    return container_usage(container_driver(), name, port)


@pytest.fixture
def start(driver: OciDriver, rootfs: Path, workdir: Path) -> Iterator[Start]:
    """Start a container running ``script`` under a 50% CPU quota; each one is deleted afterwards."""
    names: list[str] = []

    def _start(script: str, name: str | None = None) -> str:
        name = name or f"{settings.NUBIS_DOMAIN_PREFIX}m-{uuid.uuid4().hex[:10]}"
        names.append(name)
        config = oci_config(
            name=name,
            hostname="metrics",
            args=["sh", "-c", script],
            memory_bytes=128 * MIB,
            cpu_quota=50_000,
            cpu_period=100_000,
            pids_max=64,
            user_namespace=False,
        )
        driver.create(name, workdir / name, rootfs, config)
        return name

    yield _start
    for name in names:
        driver.delete(name, workdir / name)


def wait_busy(name: str) -> Counters:
    """The container's counters once its memory is filled and its sleepers run."""
    deadline = time.monotonic() + 10
    while True:
        counters = read_container(name, None)
        assert counters is not None
        if (counters.pids or 0) >= 3 and counters.mem_bytes >= 30 * MIB:
            return counters
        assert time.monotonic() < deadline, f"container never got busy: {counters}"
        time.sleep(0.05)


def test_container_counters(start: Start, driver: OciDriver) -> None:
    name = start(BUSY)
    first = wait_busy(name)
    time.sleep(1.0)
    second = read_container(name, None)
    assert second is not None
    values = rates(first, second)
    assert values is not None
    # The shell spins at full speed but the CFS quota lets it have half a CPU.
    assert 30 <= values["cpu_pct"] <= 60, values
    assert second.mem_bytes >= 30 * MIB
    assert second.mem_peak_bytes is not None
    assert second.mem_peak_bytes >= second.mem_bytes
    assert second.pids is not None
    assert second.pids >= 3
    assert (second.net_rx_bytes, second.net_tx_bytes) == (0, 0)  # no port: no network
    assert second.blk_read_bytes >= 0
    assert second.blk_write_bytes >= 0

    driver.delete(name)
    assert read_container(name, None) is None  # the cgroup went with the container
    assert read_container(f"{settings.NUBIS_DOMAIN_PREFIX}no-such", None) is None


def test_container_network_is_seen_from_inside(start: Start) -> None:
    """The host end's tx is what the instance received: rx and tx are swapped."""
    name = start("sleep 1000")
    iface = next(p.name for p in Path("/sys/class/net").iterdir() if p.name != "lo")
    stats = Path("/sys/class/net") / iface / "statistics"
    tx_before, rx_before = (int((stats / f).read_text()) for f in ("tx_bytes", "rx_bytes"))
    counters = read_container(name, iface)
    tx_after, rx_after = (int((stats / f).read_text()) for f in ("tx_bytes", "rx_bytes"))
    assert counters is not None
    assert tx_before <= counters.net_rx_bytes <= tx_after
    assert rx_before <= counters.net_tx_bytes <= rx_after
    missing = read_container(name, "nvdoesnotexist")
    assert missing is not None
    assert (missing.net_rx_bytes, missing.net_tx_bytes) == (0, 0)


# -- host and domains ---------------------------------------------------------------------------
def test_host_usage() -> None:
    first = host_usage()
    spin_until = time.monotonic() + 0.3
    while time.monotonic() < spin_until:  # burn a little so busy time must grow
        pass
    second = host_usage()
    assert 0 < first.cpu_ns < second.cpu_ns
    total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    assert 0 < second.mem_bytes < total
    assert second.mem_peak_bytes is None
    assert second.pids is not None
    assert second.pids > 10
    for field in ("blk_read_bytes", "blk_write_bytes", "net_rx_bytes", "net_tx_bytes"):
        assert getattr(second, field) >= getattr(first, field) >= 0
    values = rates(first, second, cpus=Sampler().host_cpus, ceiling=100.0)
    assert values is not None
    assert 0 < values["cpu_pct"] <= 100.0  # busy time counts in ticks: it may read high, and is capped


@pytest.fixture
def conn() -> Iterator[libvirt.virConnect]:
    conn = libvirt.open(settings.LIBVIRT_URI)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def tiny_domain(conn: libvirt.virConnect) -> Iterator[str]:
    """A transient 32 MiB guest with no disk: it sits in its BIOS, but it runs and uses CPU time."""
    name = f"{settings.NUBIS_DOMAIN_PREFIX}{uuid.uuid4()}"
    xml = f"""<domain type='qemu'>
      <name>{name}</name>
      <memory unit='MiB'>32</memory>
      <vcpu>1</vcpu>
      <os><type arch='x86_64' machine='pc'>hvm</type></os>
      <devices><memballoon model='virtio'/></devices>
    </domain>"""
    dom = conn.createXML(xml, 0)
    try:
        yield name
    finally:
        if dom.isActive():
            dom.destroy()


def test_guest_usage_of_domains(tiny_domain: str) -> None:
    vms = LibvirtDriver(settings.LIBVIRT_URI, read_only=True)  # as the agent's sampler reads them
    first = vms.guest_usage()[tiny_domain]
    time.sleep(0.5)
    stats = vms.guest_usage()
    second = stats[tiny_domain]
    assert 0 < first.cpu_ns < second.cpu_ns
    # balloon.rss: QEMU's resident memory, more than nothing and less than a few times the guest.
    assert 1 * MIB < second.mem_bytes < 512 * MIB
    assert (second.blk_read_bytes, second.blk_write_bytes) == (0, 0)  # no disk
    assert (second.net_rx_bytes, second.net_tx_bytes) == (0, 0)  # no interface
    assert second.pids is None
    assert all(isinstance(c, Counters) for c in stats.values())
    values = rates(first, second)
    assert values is not None
    assert values["cpu_pct"] > 0


# -- rates (pure logic) ----------------------------------------------------------------------
def counters(taken: float, **fields: Any) -> Counters:
    base: dict[str, Any] = {
        "cpu_ns": 0,
        "mem_bytes": 100,
        "mem_peak_bytes": None,
        "pids": None,
        "blk_read_bytes": 0,
        "blk_write_bytes": 0,
        "net_rx_bytes": 0,
        "net_tx_bytes": 0,
    }
    return Counters(taken=taken, **{**base, **fields})


def test_rates() -> None:
    prev = counters(10.0, cpu_ns=1_000_000_000, blk_read_bytes=1000, net_tx_bytes=50)
    cur = counters(
        12.0,
        cpu_ns=2_000_000_000,
        mem_bytes=4096,
        mem_peak_bytes=8192,
        pids=7,
        blk_read_bytes=5000,
        blk_write_bytes=2000,
        net_rx_bytes=600,
        net_tx_bytes=250,
    )
    assert rates(prev, cur) == {
        "cpu_pct": 50.0,  # 1 s of CPU in 2 s
        "mem_bytes": 4096,
        "mem_peak_bytes": 8192,
        "pids": 7,
        "blk_read_bps": 2000.0,
        "blk_write_bps": 1000.0,
        "net_rx_bps": 300.0,
        "net_tx_bps": 100.0,
    }
    assert rates(prev, cur, cpus=4)["cpu_pct"] == 12.5  # type: ignore[index]
    assert rates(cur, cur) is None  # no time passed
    busy = counters(11.5, cpu_ns=10**10, blk_read_bytes=1000, net_tx_bytes=50)  # 9 s of CPU in 1.5 s
    assert rates(prev, busy)["cpu_pct"] == 600.0  # type: ignore[index]  # six CPUs' worth: uncapped
    assert rates(prev, busy, ceiling=100.0)["cpu_pct"] == 100.0  # type: ignore[index]
    for field in ("cpu_ns", "blk_read_bytes", "net_tx_bytes"):
        assert rates(prev, counters(13.0, **{field: 0})) is None, field


def test_sampler_skips_first_reading_and_resets() -> None:
    sampler = Sampler(host_cpus=2)
    instance, host = Instance(pk=7), Host(pk=3)
    at = datetime(2030, 1, 1, tzinfo=UTC)
    assert sampler.sample(counters(0.0, cpu_ns=0), instance=instance) is None  # first: nothing to rate
    sample = sampler.sample(counters(1.0, cpu_ns=500_000_000, pids=2), instance=instance, at=at)
    assert sample is not None
    assert sample.pk is None  # unsaved
    assert (sample.instance_id, sample.host_id, sample.resolution, sample.at) == (7, None, RAW, at)
    assert sample.cpu_pct == pytest.approx(50.0)
    assert sample.pids == 2
    # The container restarted: its counters start again from zero. No sample, and no negative rate...
    assert sampler.sample(counters(2.0, cpu_ns=100_000_000), instance=instance) is None
    # ...and the next interval is rated against the new life.
    sample = sampler.sample(counters(3.0, cpu_ns=400_000_000), instance=instance)
    assert sample is not None
    assert sample.cpu_pct == pytest.approx(30.0)

    # A host's percent is of all its CPUs; host and instance keys never mix.
    assert sampler.sample(counters(0.0, cpu_ns=0), host=host) is None
    sample = sampler.sample(counters(1.0, cpu_ns=1_000_000_000), host=host)
    assert sample is not None
    assert sample.cpu_pct == pytest.approx(50.0)
    assert sample.host_id == 3

    assert len(sampler) == 2
    sampler.retain([("host", 3)])
    assert len(sampler) == 1
    assert sampler.sample(counters(5.0, cpu_ns=9), instance=instance) is None  # forgotten: first again
    with pytest.raises(ValueError, match="exactly one"):
        sampler.sample(counters(6.0), host=host, instance=instance)


# -- database: rollups, series, host load -------------------------------------------------------
_names = iter(range(1_000_000))


def make_host() -> Host:
    return Host.objects.create(name=f"metrics-{uuid.uuid4().hex[:8]}", uri="qemu:///system")


def make_instance(
    host: Host, kind: str = InstanceKind.CONTAINER, state: str = InstanceState.RUNNING
) -> Instance:
    tenant = make_tenant()
    n = next(_names)
    flavor = Flavor.objects.create(
        name=f"m.flavor{n}-{uuid.uuid4().hex[:6]}", vcpus=1, ram_mib=128, disk_gib=1
    )
    image = Image.objects.create(
        name=f"m.image{n}-{uuid.uuid4().hex[:6]}",
        kind=ImageKind.ROOTFS,
        os_name="busybox",
        disk_path="/nonexistent",
        sha256="0" * 64,
    )
    return Instance.objects.create(
        tenant=tenant, name=f"m{n}", kind=kind, state=state, flavor=flavor, image=image, host=host
    )


def add(at: datetime, resolution: int = RAW, **fields: Any) -> UsageSample:
    values: dict[str, Any] = {"cpu_pct": 0.0, "mem_bytes": 0}
    values.update(fields)
    return UsageSample.objects.create(at=at, resolution=resolution, **values)


def snapshot() -> list[tuple[Any, ...]]:
    return sorted(
        UsageSample.objects.values_list(
            "host_id", "instance_id", "resolution", "at", "cpu_pct", "mem_bytes", "mem_peak_bytes", "pids"
        ),
        key=repr,
    )


NOW = datetime(2000, 1, 10, 12, 0, 30, tzinfo=UTC)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.django_db
def test_rollup() -> None:
    host = make_host()
    inst = make_instance(host)
    # Host, minute 10:00 (whole and over an hour old at NOW): no peaks, so the peak is the top level.
    for second, cpu, mem in ((5, 10.0, 100), (15, 20.0, 200), (25, 60.0, 300)):
        add(at(f"2000-01-10T10:00:{second:02}"), host=host, cpu_pct=cpu, mem_bytes=mem, net_rx_bps=float(mem))
    # Instance, minute 10:59: peaks and pids.
    add(at("2000-01-10T10:59:45"), instance=inst, cpu_pct=40.0, mem_bytes=10, mem_peak_bytes=500, pids=3)
    add(at("2000-01-10T10:59:55"), instance=inst, cpu_pct=50.0, mem_bytes=20, mem_peak_bytes=700, pids=6)
    # Older than an hour, but its minute (11:00) is not: it waits for the next run, as does the recent one.
    add(at("2000-01-10T11:00:10"), instance=inst, cpu_pct=1.0, mem_bytes=1)
    add(at("2000-01-10T11:59:50"), instance=inst, cpu_pct=2.0, mem_bytes=2)
    # Minutes of hour 09-01-10 (older than a day): one hour mean; the minute of 12:00 the day before stays.
    add(at("2000-01-09T10:00:00"), MINUTE, host=host, cpu_pct=10.0, mem_bytes=1000, mem_peak_bytes=1500)
    add(at("2000-01-09T10:30:00"), MINUTE, host=host, cpu_pct=30.0, mem_bytes=3000, mem_peak_bytes=3500)
    add(at("2000-01-09T12:00:00"), MINUTE, host=host, cpu_pct=99.0, mem_bytes=9)
    # Raw samples two days old go all the way to an hour in one run.
    add(at("2000-01-08T05:00:10"), host=host, cpu_pct=4.0, mem_bytes=40)
    add(at("2000-01-08T05:00:20"), host=host, cpu_pct=8.0, mem_bytes=80)
    # Hours: past the 30 days and within them.
    add(NOW - HOUR_KEEP - timedelta(hours=1), HOUR, host=host, cpu_pct=1.0, mem_bytes=1)
    add(NOW - HOUR_KEEP + timedelta(hours=1), HOUR, host=host, cpu_pct=2.0, mem_bytes=2)

    assert metrics_rollup(NOW) == {
        "raw_rolled": 7,
        "minute_created": 3,
        "minute_rolled": 3,  # the two of 09-01-10 10:xx and the one just made from 08-01
        "hour_created": 2,
        "hour_deleted": 1,
    }

    rows = {(s.host_id, s.instance_id, s.resolution, s.at): s for s in UsageSample.objects.all()}
    minute = rows[(host.pk, None, MINUTE, at("2000-01-10T10:00:00"))]
    assert (minute.cpu_pct, minute.mem_bytes, minute.mem_peak_bytes) == (pytest.approx(30.0), 200, 300)
    assert minute.net_rx_bps == pytest.approx(200.0)
    minute = rows[(None, inst.pk, MINUTE, at("2000-01-10T10:59:00"))]
    assert (minute.cpu_pct, minute.mem_bytes, minute.mem_peak_bytes) == (pytest.approx(45.0), 15, 700)
    assert minute.pids in (4, 5)  # 4.5, rounded
    hour = rows[(host.pk, None, HOUR, at("2000-01-09T10:00:00"))]
    assert (hour.cpu_pct, hour.mem_bytes, hour.mem_peak_bytes) == (pytest.approx(20.0), 2000, 3500)
    hour = rows[(host.pk, None, HOUR, at("2000-01-08T05:00:00"))]
    assert (hour.cpu_pct, hour.mem_bytes, hour.mem_peak_bytes) == (pytest.approx(6.0), 60, 80)
    assert {k for k in rows if k[2] == RAW} == {
        (None, inst.pk, RAW, at("2000-01-10T11:00:10")),
        (None, inst.pk, RAW, at("2000-01-10T11:59:50")),
    }
    assert (host.pk, None, MINUTE, at("2000-01-09T12:00:00")) in rows
    assert not any(k[2] == MINUTE and k[3] < at("2000-01-09T12:00:00") for k in rows)
    assert [k[3] for k in rows if k[2] == HOUR and k[3] < NOW - timedelta(days=3)] == [
        NOW - HOUR_KEEP + timedelta(hours=1)
    ]

    # A second run finds nothing to do and changes nothing.
    before = snapshot()
    assert set(metrics_rollup(NOW).values()) == {0}
    assert snapshot() == before


@pytest.mark.django_db(transaction=True)
def test_concurrent_rollups_make_no_duplicates() -> None:
    """Run B reads the raw rows while run A, which already deleted them, has not committed yet."""
    # The test command always runs PostgreSQL: a missing one fails here, it does not skip.
    assert connection.vendor == "postgresql", "needs row locks held across connections (PostgreSQL)"
    host = make_host()
    for minute in range(3):
        for second in (0, 20, 40):
            add(at(f"2000-01-10T10:0{minute}:{second:02}"), host=host, cpu_pct=float(minute), mem_bytes=1)
    result_b: dict[str, int] = {}

    def run_b() -> None:
        try:
            result_b.update(metrics_rollup(NOW))
        finally:
            connection.close()

    with transaction.atomic():
        result_a = metrics_rollup(NOW)
        thread = threading.Thread(target=run_b)
        thread.start()
        # B's DELETE waits for A's row locks: only then is the race really on.
        deadline = time.monotonic() + 10
        with connection.cursor() as cursor:
            while True:
                # pg_stat_activity is read once per transaction unless its snapshot is dropped.
                cursor.execute("SELECT pg_stat_clear_snapshot()")
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
                if cursor.fetchone()[0]:
                    break
                assert thread.is_alive(), "the second rollup ended without waiting for the first"
                assert time.monotonic() < deadline, "the second rollup never waited for the first"
                time.sleep(0.02)
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert result_a["minute_created"] == 3
    assert result_b == dict.fromkeys(result_a, 0)  # B retried against the committed state
    minutes = list(UsageSample.objects.filter(resolution=MINUTE).order_by("at").values_list("at", "cpu_pct"))
    assert minutes == [(at(f"2000-01-10T10:0{m}:00"), float(m)) for m in range(3)]
    assert not UsageSample.objects.filter(resolution=RAW).exists()


@pytest.mark.django_db
def test_series_picks_resolution() -> None:
    now = timezone.now()
    host = make_host()
    other = make_host()
    add(now - timedelta(days=5), HOUR, host=host, cpu_pct=5.0, mem_bytes=5)
    add(now - timedelta(hours=3), MINUTE, host=host, cpu_pct=3.0, mem_bytes=3)
    add(now - timedelta(hours=2), MINUTE, host=host, cpu_pct=2.0, mem_bytes=2)
    for ago in (30, 20, 5):
        add(now - timedelta(minutes=ago), host=host, cpu_pct=float(ago), mem_bytes=ago)
    add(now - timedelta(minutes=5), host=other, cpu_pct=77.0, mem_bytes=77)

    assert pick_resolution(now - timedelta(minutes=40), now) == RAW
    assert pick_resolution(now - timedelta(hours=4), now) == MINUTE
    assert pick_resolution(now - timedelta(days=10), now) == HOUR

    raw = series(host=host, since=now - timedelta(minutes=40))
    assert [(p["resolution"], p["cpu_pct"]) for p in raw] == [(RAW, 30.0), (RAW, 20.0), (RAW, 5.0)]
    assert set(raw[0]) >= {"at", "mem_bytes", "mem_peak_bytes", "pids", "net_rx_bps", "blk_write_bps"}

    # Stored minutes, then the raw tail (not rolled up yet) as minute means: the chart reaches now.
    minutes = series(host=host, since=now - timedelta(hours=4))
    assert {p["resolution"] for p in minutes} == {MINUTE}
    assert [p["cpu_pct"] for p in minutes] == [3.0, 2.0, 30.0, 20.0, 5.0]
    assert [p["at"] for p in minutes] == sorted(p["at"] for p in minutes)

    # Hours: one stored, and the minutes and raw samples of the last day averaged per hour.
    hours = series(host=host, since=now - timedelta(days=10))
    assert {p["resolution"] for p in hours} == {HOUR}
    assert hours[0]["cpu_pct"] == 5.0
    # The stored hour, the minutes of 3 h and 2 h ago, and the last half hour (which may straddle two).
    assert len(hours) in (4, 5)
    assert series(host=host, since=now - timedelta(days=10), resolution=RAW) == raw
    assert series(host=other, since=now - timedelta(hours=1))[0]["cpu_pct"] == 77.0
    with pytest.raises(ValueError, match="exactly one"):
        series(since=now)


@pytest.mark.django_db
def test_series_weighs_by_resolution() -> None:
    """A minute mean stands for six raw samples when both fall into one chart bucket."""
    host = make_host()
    hour = at("2030-01-01T10:00:00")
    add(hour + timedelta(minutes=1), MINUTE, host=host, cpu_pct=70.0, mem_bytes=700, mem_peak_bytes=900)
    add(hour + timedelta(minutes=2), host=host, cpu_pct=0.0, mem_bytes=0)
    (point,) = series(host=host, since=hour, resolution=HOUR)
    assert point["at"] == hour
    assert point["cpu_pct"] == pytest.approx(60.0)  # (70*60 + 0*10) / 70
    assert point["mem_bytes"] == 600
    assert point["mem_peak_bytes"] == 900


@pytest.mark.django_db
def test_host_load() -> None:
    now = timezone.now()
    host = make_host()
    assert host_load(host) is None
    add(now - timedelta(seconds=10), host=host, cpu_pct=20.0, mem_bytes=100, net_tx_bps=10.0)
    add(now - timedelta(seconds=20), host=host, cpu_pct=40.0, mem_bytes=300, net_tx_bps=30.0)
    add(now - timedelta(seconds=90), host=host, cpu_pct=99.0, mem_bytes=999)  # too old
    add(now - timedelta(seconds=5), MINUTE, host=host, cpu_pct=99.0, mem_bytes=999)  # not raw
    load = host_load(host)
    assert load == {
        "cpu_pct": pytest.approx(30.0),
        "mem_bytes": 200,
        "blk_read_bps": 0.0,
        "blk_write_bps": 0.0,
        "net_rx_bps": 0.0,
        "net_tx_bps": pytest.approx(20.0),
        "samples": 2,
    }


# -- collection ---------------------------------------------------------------------------------
@pytest.mark.django_db
def test_metrics_collect(start: Start, django_assert_num_queries: Any) -> None:
    host = make_host()
    running = make_instance(host)
    make_instance(host, state=InstanceState.STOPPED)  # not read
    make_instance(host, kind=InstanceKind.VM)  # no VM driver given: skipped
    make_instance(make_host())  # another host's
    start("while :; do :; done", name=running.domain_name)
    sampler = Sampler()

    with django_assert_num_queries(1):  # the instances; nothing to insert on the first round
        assert metrics_collect(host, sampler, None) == 0
    time.sleep(0.5)
    with django_assert_num_queries(2):  # the instances, one bulk insert
        assert metrics_collect(host, sampler, None) == 2

    inst_sample = UsageSample.objects.get(instance=running)
    host_sample = UsageSample.objects.get(host=host)
    assert inst_sample.resolution == host_sample.resolution == RAW
    assert inst_sample.at == host_sample.at
    assert 20 <= inst_sample.cpu_pct <= 60  # the burner, under its 50% quota
    assert inst_sample.pids is not None
    assert inst_sample.pids >= 1
    assert 0 < host_sample.cpu_pct <= 100.5
    assert host_sample.mem_bytes > 0
    assert UsageSample.objects.count() == 2
    assert len(sampler) == 2  # the host and the one container
