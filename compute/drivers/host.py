"""The host itself: the usage counters of the whole machine (from /proc and /sys), and what its
instance store holds."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from compute.drivers.base import Counters

SYS_BLOCK = Path("/sys/block")
SYS_VIRTUAL_NET = Path("/sys/devices/virtual/net")
PROC = Path("/proc")
SECTOR = 512  # /proc/diskstats counts 512-byte sectors whatever the device's own sector size
# Block devices that are not disks (loop, RAM-backed) or that sit on top of disks whose I/O is
# already counted (device-mapper, md RAID): counting them too would count the same bytes twice.
NOT_A_DISK = re.compile(r"^(loop|ram|zram|dm-|md)\d+$")


def _is_disk(name: str) -> bool:
    return NOT_A_DISK.match(name) is None


def host_usage() -> Counters:
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
        if (SYS_VIRTUAL_NET / iface.strip()).exists():
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


@dataclass(frozen=True)
class StoreEntry:
    """One entry of the instance store: its name, whether it is a directory, its age in seconds."""

    name: str
    is_dir: bool
    age_s: float


def store_entries(root: str) -> list[StoreEntry]:
    """The entries of the instance store ``root`` (none if it does not exist), sorted by name."""
    base = Path(root)
    if not base.exists():
        return []
    now = time.time()
    entries = []
    for path in sorted(base.iterdir()):
        try:
            st = path.lstat()
        except FileNotFoundError:  # removed meanwhile
            continue
        entries.append(StoreEntry(path.name, path.is_dir() and not path.is_symlink(), now - st.st_mtime))
    return entries
