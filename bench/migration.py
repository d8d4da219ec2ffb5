"""Benchmark: live migration through the portal against raw `virsh migrate`, on a lab of real hosts.

The world: a lab of three hosts on this machine (``manage.py lab up``: each host a set of
namespaces with its own libvirtd and compute agent, the instance store shared at the same path on
every host), a tenant with a member, a staff user with ``compute.change_host``, a private flavor
(1 vCPU, 256 MiB, 1 GiB, emulated CPU, virtio) and the ``nubis-tiny`` guest with a test shell on
TCP 2323 (kernel argument ``nubis.shell``, as the tests' ``shell_image``). TCG guests.

Two VMs move back and forth between the lab's first two hosts, alternating sample by sample:

- **Portal**: ``POST /api/v1/tenants/<slug>/instances/<id>/migrate/ {"host": <target>}`` by the
  staff user (DRF's in-process client, as the tests do), timed from just before the request until
  the Operation reads ``succeeded`` in the database (polled every 20 ms). The source host's agent
  has the target prepare, moves the guest peer to peer and records the destination's figures
  (``Operation.result``: ``total_ms``, ``downtime_ms``, ``agent_ms``, ...).
- **Raw**: a VM the portal does not know (``benchraw-...``), defined on the source host from the
  portal's own domain XML for its VM (``domain_xml(guest_spec(instance))``, a fresh name, UUID,
  qcow2 overlay and serial log on the shared store), moved with
  ``virsh -c <source> migrate --live --p2p --persistent --undefinesource --unsafe --auto-converge
  --abort-on-error NAME qemu+tcp://<target>/system``: the flags of the portal's driver, after the
  same downtime limit (NUBIS_MIGRATION_DOWNTIME_MS, set before the clock starts). Timed around the
  command; downtime and the hypervisor's total from the destination's record of the job
  (``jobStats(COMPLETED | KEEP_COMPLETED)``), as the portal's driver reads them.

Both VMs have the portal's interface for a VM without a tenant network (libvirt's ``default`` NAT
network, present on every lab host), so the XML is the same. After one unmeasured move each, N
moves per path with the guest idle, then N with a memory-dirtying load: before each such move a
loop of ``dd if=/dev/urandom of=/tmp/dirty bs=1M count=48`` (/tmp is RAM in the tiny guest) starts
inside the guest that is about to move, through its shell, reached from the namespace of the host
it runs on; it runs for a few seconds before the move and is stopped after it (only the moving
guest dirties memory, so the other one does not take CPU from the move).

Where the portal's time goes: the Operation's claim (``started``) and its steps as the agent
records them (``target ready`` after the target's agent prepared, ``moved`` after libvirt's move
and the read of its figures), each seen within one poll.

Guests that fail: on this QEMU (7.2, TCG), a guest that writes memory fast while it moves often
comes out with a corrupted kernel (bad page state, list corruption, soft lockups), whichever path
moved it. After every move the guest's console is checked for such a failure (and a dirty guest
must answer its shell); a failed guest is reset (the portal's through its API reboot, the raw one
through libvirt) and boots again before the next sample. The move itself is kept as a sample
(its figures are the hypervisor's, complete), and marked ``guest_crashed``.

Then evacuation: six VMs on the first host, which is put into maintenance
(``host_maintenance_set``); evacuation passes (``evacuate_all``) run here, right after each move
ends (as the agents' kick to the control worker would have one run) and at least every 0.5 s,
until the host is in maintenance. Time to empty, and each move's figures.

    .venv/bin/python bench/migration.py [--count 10] [--evacuate 6] [--output PATH]

Run as root with PostgreSQL (DATABASE_URL) and Redis (REDIS_URL) up, and no other live agent on
that database. It prints a table and writes every sample, the summary and the machine's facts to
bench/results/migration.json. It reports; it asserts nothing about timings.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import ipaddress
import itertools
import json
import math
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import libvirt

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.container_provision import wait_exactly  # noqa: E402 - needs the repository on sys.path first
from bench.vm_provision import (  # noqa: E402
    RAW_PREFIX,
    BenchError,
    Env,
    describe,
    domain_xml_of,
    machine_facts,
    make_overlay,
    percentile,
    run_main,
    undefine,
)
from compute.lab.spec import LabHost, LabSpec  # noqa: E402 - plain Python, no Django

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from rest_framework.test import APIClient

    from compute.models import Flavor, Host, Image, Instance
    from tenants.models import Tenant

DEFAULT_OUTPUT = ROOT / "bench" / "results" / "migration.json"
LAB_HOSTS = 3
POLL_SECONDS = 0.02  # the portal's Operation, polled in the database
SETTLE_SECONDS = 0.5  # between two moves
PASS_SECONDS = 0.5  # evacuation: a pass at least this often (and right after each move ends)
SHELL_PORT = 2323  # the test image's shell (compute/guest/init.sh, nubis.shell)
DIRTY_MIB = 48
DIRTY_WARM_SECONDS = 3.0  # the load runs this long before the move starts
GOAL_TOTAL_S = 0.5  # the goal: the portal adds at most 0.5 s of total time
JOB_DONE = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
RAW_FLAGS = (
    "--live",
    "--p2p",
    "--persistent",
    "--undefinesource",
    "--unsafe",  # the shared store is a bind mount: libvirt cannot tell it is shared
    "--auto-converge",
    "--abort-on-error",
)
# Inside the guest (busybox sh). The loop stops when /tmp/dirty.stop appears and its dd is killed.
DIRTY_START = (
    "rm -f /tmp/dirty.stop; (while [ ! -e /tmp/dirty.stop ]; do "
    f"dd if=/dev/urandom of=/tmp/dirty bs=1M count={DIRTY_MIB} 2>/dev/null; done) "
    "</dev/null >/dev/null 2>&1 & sleep 1; pidof dd >/dev/null && echo DIRTY-ON; exit"
)
DIRTY_STOP = (
    "pidof dd >/dev/null && echo DIRTY-WAS-ON; touch /tmp/dirty.stop; killall dd 2>/dev/null; "
    "sleep 1; rm -f /tmp/dirty; pidof dd >/dev/null || echo DIRTY-OFF; exit"
)
# The portal's move in four parts (compute.services.agent._migrate), between the moments seen here.
SEGMENTS = ("request->claim", "claim->target ready", "target ready->moved", "moved->succeeded")
_READY = re.compile(r"NUBIS-READY name=\S+ ip=(\S+)")
# What a guest kernel prints on its console when it failed (bad page state, list corruption,
# soft lockup, oops): checked after every move.
_CRASH = re.compile(r"BUG|Oops|Kernel panic|soft lockup|general protection|Call Trace")


# -- samples and statistics --------------------------------------------------------------------------
@dataclasses.dataclass
class Move:
    """One live migration, by either path."""

    path: str  # "portal" or "raw"
    load: str  # "idle" or "dirty"
    round: int
    source: str
    target: str
    total_s: float  # wall clock: request (or virsh's start) to done
    hv_total_ms: int  # the destination hypervisor's time for the job
    downtime_ms: int
    setup_ms: int
    data_bytes: int
    memory_bytes: int
    iterations: int
    dirty_rate: int  # pages/s the guest dirtied at the end, as QEMU measured it
    # Portal only (None for raw): the API call, the agent's claim and its end, from t0.
    post_s: float | None = None
    claimed_s: float | None = None
    finished_s: float | None = None
    agent_ms: int | None = None  # the agent's wall time of the move, target preparation included
    steps_s: dict[str, float] | None = None  # when each Operation.step was first seen, from t0
    load_seen: bool | None = None  # dirty: the loop still ran in the guest after the move
    guest_crashed: bool = False  # the guest's kernel failed after this move (it was reset)
    crash: str = ""  # the first line it printed about it, or how it was seen


def stats_fields(stats: dict[str, Any]) -> dict[str, int]:
    """The MigrationStats fields from a jobStats dict (the portal driver's _completed_stats)."""
    return {
        "hv_total_ms": int(stats.get("time_elapsed", 0)),
        "downtime_ms": int(stats.get("downtime", 0)),
        "setup_ms": int(stats.get("setup_time", 0)),
        "data_bytes": int(stats.get("data_processed", 0)),
        "memory_bytes": int(stats.get("memory_processed", 0)),
        "iterations": int(stats.get("memory_iteration", 0)),
        "dirty_rate": int(stats.get("memory_dirty_rate", 0)),
    }


def compare(portal: list[Move], raw: list[Move]) -> dict[str, Any]:
    """p50/p95 of both paths, the overhead, and whether the issue's goal holds for one load."""
    out: dict[str, Any] = {"portal": {}, "raw": {}}
    for label, moves in (("portal", portal), ("raw", raw)):
        out[label] = {
            "total_s": describe([m.total_s for m in moves]),
            "downtime_ms": describe([m.downtime_ms for m in moves]),
            "hv_total_ms": describe([m.hv_total_ms for m in moves]),
            "data_mib": describe([m.data_bytes / 2**20 for m in moves]),
            "iterations": describe([m.iterations for m in moves]),
        }
    for label, moves in (("portal", portal), ("raw", raw)):
        out[label]["guest_failures"] = sum(m.guest_crashed for m in moves)
    out["portal"]["post_s"] = describe([m.post_s or 0.0 for m in portal])
    out["portal"]["claimed_s"] = describe([m.claimed_s or 0.0 for m in portal])
    out["portal"]["agent_ms"] = describe([m.agent_ms or 0 for m in portal])
    # Where the portal's time goes, from the Operation's claim and steps (each seen within a poll).
    segments: dict[str, list[float]] = {k: [] for k in SEGMENTS}
    for m in portal:
        marks = {"claimed": m.claimed_s, **(m.steps_s or {})}
        moments = [0.0, *(marks.get(name) for name in ("claimed", "target ready", "moved")), m.total_s]
        for key, (a, b) in zip(SEGMENTS, itertools.pairwise(moments), strict=True):
            if a is not None and b is not None:
                segments[key].append(b - a)
    out["portal"]["segments_s"] = {k: describe(v) for k, v in segments.items() if v}
    # The portal's own part: its wall time beyond what the hypervisor counted for the same move.
    # (the hypervisor's own time for a move varies a lot here, and swamps a path's own cost)
    out["portal"]["beyond_hv_s"] = describe([m.total_s - m.hv_total_ms / 1000 for m in portal])
    out["raw"]["beyond_hv_s"] = describe([m.total_s - m.hv_total_ms / 1000 for m in raw])
    p, r = out["portal"], out["raw"]
    pairs_total = [a.total_s - b.total_s for a, b in zip(portal, raw, strict=True)]
    pairs_down = [a.downtime_ms - b.downtime_ms for a, b in zip(portal, raw, strict=True)]
    raw_down = [m.downtime_ms for m in raw]
    raw_iqr = percentile(raw_down, 75) - percentile(raw_down, 25)
    overhead = {
        "total_p50_s": p["total_s"]["p50"] - r["total_s"]["p50"],
        "total_p95_s": p["total_s"]["p95"] - r["total_s"]["p95"],
        "total_p50_ratio": p["total_s"]["p50"] / r["total_s"]["p50"],
        "total_p95_ratio": p["total_s"]["p95"] / r["total_s"]["p95"],
        "total_paired_p50_s": percentile(pairs_total, 50),
        "own_p50_s": p["beyond_hv_s"]["p50"] - r["beyond_hv_s"]["p50"],
        "own_p95_s": p["beyond_hv_s"]["p95"] - r["beyond_hv_s"]["p95"],
        "downtime_p50_ms": p["downtime_ms"]["p50"] - r["downtime_ms"]["p50"],
        "downtime_p95_ms": p["downtime_ms"]["p95"] - r["downtime_ms"]["p95"],
        "downtime_p50_ratio": p["downtime_ms"]["p50"] / max(r["downtime_ms"]["p50"], 1),
        "downtime_paired_p50_ms": percentile(pairs_down, 50),
        "raw_downtime_iqr_ms": raw_iqr,
    }
    out["overhead"] = overhead
    out["goal"] = {
        # At most 0.5 s more total time, at the median and at p95.
        "total_ok": overhead["total_p50_s"] <= GOAL_TOTAL_S and overhead["total_p95_s"] <= GOAL_TOTAL_S,
        # The same goal on each path's time beyond the hypervisor's own for the same move.
        "own_ok": overhead["own_p50_s"] <= GOAL_TOTAL_S and overhead["own_p95_s"] <= GOAL_TOTAL_S,
        # "Nothing added to downtime", read as: the medians differ by no more than the raw
        # samples' own interquartile range (at this N, a smaller difference is not a finding).
        "downtime_ok": overhead["downtime_p50_ms"] <= raw_iqr,
    }
    return out


def table(result: dict[str, Any]) -> str:
    def row(label: str, cells: Sequence[str]) -> str:
        return f"{label:<22}" + "".join(f"{c:>14}" for c in cells)

    machine, summary = result["machine"], result["summary"]
    lines = [
        f"Live migration, portal vs raw virsh migrate (same domain XML and flags): "
        f"{machine['accelerator'].upper()}, {result['flavor']['ram_mib']} MiB, "
        f"N={result['count']} per path and load, lab of {LAB_HOSTS} hosts on {machine['nproc']} CPUs",
        "",
        row("", ["total p50", "total p95", "downtime p50", "downtime p95", "hv total p50"]),
    ]
    verdicts = []
    for load in ("idle", "dirty"):
        if load not in summary:
            continue
        s = summary[load]
        for path, label in (("portal", "portal (API+agent)"), ("raw", "raw virsh migrate")):
            t, d, h = s[path]["total_s"], s[path]["downtime_ms"], s[path]["hv_total_ms"]
            lines.append(
                row(
                    f"{load:<6}{label}",
                    [
                        f"{t['p50']:.3f} s",
                        f"{t['p95']:.3f} s",
                        f"{d['p50']:.0f} ms",
                        f"{d['p95']:.0f} ms",
                        f"{h['p50']:.0f} ms",
                    ],
                )
            )
        o = s["overhead"]
        lines.append(
            row(
                f"{load:<6}portal - raw",
                [
                    f"{o['total_p50_s']:+.3f} s",
                    f"{o['total_p95_s']:+.3f} s",
                    f"{o['downtime_p50_ms']:+.0f} ms",
                    f"{o['downtime_p95_ms']:+.0f} ms",
                    "",
                ],
            )
        )
        lines.append(
            row(
                f"{load:<6}portal / raw",
                [
                    f"{o['total_p50_ratio']:.2f}x",
                    f"{o['total_p95_ratio']:.2f}x",
                    f"{o['downtime_p50_ratio']:.2f}x",
                    "",
                    "",
                ],
            )
        )
        p = s["portal"]
        parts = " | ".join(f"{name} {stats['p50'] * 1000:.0f}" for name, stats in p["segments_s"].items())
        lines += [
            f"{'':<6}portal, p50 ms: {parts}; POST {p['post_s']['p50'] * 1000:.0f}, "
            f"agent's own count {p['agent_ms']['p50']:.0f}",
            f"{'':<6}wall time beyond the hypervisor's total, p50: portal "
            f"{p['beyond_hv_s']['p50'] * 1000:.0f} ms, raw {s['raw']['beyond_hv_s']['p50'] * 1000:.0f} ms; "
            f"memory passes {p['iterations']['p50']:.0f} / {s['raw']['iterations']['p50']:.0f}, "
            f"MiB sent {p['data_mib']['p50']:.0f} / {s['raw']['data_mib']['p50']:.0f} (portal / raw)",
        ]
        lines.append(
            f"{'':<6}guest kernel failed after the move (then reset): portal "
            f"{p['guest_failures']}/{result['count']}, raw {s['raw']['guest_failures']}/{result['count']}"
        )
        lines.append("")
        g = s["goal"]
        verdicts.append(
            f"  {load}: total {o['total_p50_s']:+.3f} s at p50, {o['total_p95_s']:+.3f} s at p95 "
            f"-> {'HOLDS' if g['total_ok'] else 'MISSED'}; beyond the hypervisor's time for the same "
            f"move {o['own_p50_s']:+.3f} s at p50, {o['own_p95_s']:+.3f} s at p95 -> "
            f"{'HOLDS' if g['own_ok'] else 'MISSED'};\n{'':<9}downtime {o['downtime_p50_ms']:+.0f} ms at "
            f"p50 (raw's own IQR {o['raw_downtime_iqr_ms']:.0f} ms) -> "
            f"{'HOLDS' if g['downtime_ok'] else 'MISSED'}"
        )
    if verdicts:
        lines.append(f"Goal: the portal adds at most {GOAL_TOTAL_S} s of total time and nothing to downtime")
        lines.extend(verdicts)
    evac = result.get("evacuation")
    if evac:
        lines += [
            "",
            f"Evacuation of {evac['host']}: {evac['instances']} VMs, {evac['parallel']} moves at a time, "
            f"empty (state maintenance) in {evac['time_to_empty_s']:.2f} s",
            f"  moves: total p50 {evac['moves']['total_s']['p50']:.2f} s (request to done), hypervisor "
            f"p50 {evac['moves']['hv_total_ms']['p50']:.0f} ms, downtime p50 "
            f"{evac['moves']['downtime_ms']['p50']:.0f} / max {evac['moves']['downtime_ms']['max']:.0f} ms",
            f"  baseline from this run: ceil({evac['instances']}/{evac['parallel']}) x raw idle p50 = "
            f"{evac['baseline']['raw_waves_s']:.2f} s (x{evac['baseline']['ratio_to_raw_waves']:.2f}); "
            f"hypervisor-bound (sum of totals / {evac['parallel']}) = "
            f"{evac['baseline']['hv_bound_s']:.2f} s",
        ]
    return "\n".join(lines)


# -- the lab -----------------------------------------------------------------------------------------
def free_subnet() -> str:
    """A /24 in 10.77.0.0/16 that nothing on this machine routes (as tests/cluster/conftest.py)."""
    routes = subprocess.run(["ip", "-4", "-j", "route"], capture_output=True, text=True, check=True).stdout
    taken = [
        ipaddress.IPv4Network(r["dst"], strict=False) for r in json.loads(routes) if r["dst"] != "default"
    ]
    candidates = [ipaddress.IPv4Network(f"10.77.{i}.0/24") for i in range(1, 255)]
    free = [n for n in candidates if not any(n.overlaps(t) for t in taken)]
    if not free:
        raise BenchError("no free /24 in 10.77.0.0/16 for the lab")
    return str(random.choice(free))


class LabRun:
    """``manage.py lab`` on a lab of this run's own: its prefix, bridge, subnet and directory."""

    def __init__(self, directory: Path, tag: str) -> None:
        self.directory = directory
        self.spec = LabSpec(
            directory=directory,
            hosts=LAB_HOSTS,
            prefix=f"b{tag[:4]}h",
            bridge=f"b{tag[:4]}br",
            subnet=free_subnet(),
        )
        self.hosts: list[LabHost] = self.spec.host_list()
        self.started = False

    def command(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "manage.py", "lab", *args, "--dir", str(self.directory)]
        return subprocess.run(
            cmd, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=timeout, check=False
        )

    def up(self) -> None:
        self.started = True  # from here on, the cleanup runs `lab down`
        s = self.spec
        done = self.command(
            "up", "--hosts", str(s.hosts), "--prefix", s.prefix, "--bridge", s.bridge, "--subnet", s.subnet
        )
        if done.returncode != 0:
            raise BenchError(f"lab up failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def down(self) -> str:
        done = self.command("down", timeout=180)
        return "" if done.returncode == 0 else f"lab down ({done.returncode}): {done.stdout}{done.stderr}"

    def host(self, name: str) -> LabHost:
        return next(h for h in self.hosts if h.name == name)

    def agent_logs(self) -> str:
        parts = []
        for h in self.hosts:
            with contextlib.suppress(OSError):
                parts.append(f"[{h.name}]\n{h.agent_log.read_text(errors='replace')[-1000:]}")
        return "\n".join(parts)


# -- the run -----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Guest:
    """One of the two VMs that move back and forth."""

    name: str  # the portal's instance name, or the raw domain's
    path: str
    on: str  # the lab host it runs on now
    serial: Path
    uuid: str = ""  # the portal's instance
    ip: str = ""
    serial_mark: int = 0  # console output before this offset has been checked
    last: Move | None = None  # its latest move


class MigrationBench:
    def __init__(self, env: Env, args: argparse.Namespace) -> None:
        self.env = env
        self.args = args
        self.lab = LabRun(env.data_dir / f"lab-{env.tag}", env.tag)
        self.django_ready = False
        self.conns: dict[str, libvirt.virConnect] = {}
        self.member: APIClient | None = None
        self.staff: APIClient | None = None
        self.tenant: Tenant | None = None
        self.staff_user: User | None = None
        # Everything this run made, for the cleanup.
        self.portal_uuids: list[str] = []
        self.raw_guests: dict[str, str] = {}  # raw domain -> the lab host it is on
        self.disabled: set[int] = set()  # lab hosts' rows disabled to pin a placement
        self.in_maintenance: Host | None = None
        self.recoveries: list[dict[str, Any]] = []  # guests reset after their kernel failed

    def log(self, text: str) -> None:
        print(text, flush=True)

    # -- setup ---------------------------------------------------------------------------------------
    def setup(self) -> tuple[Flavor, Image, Image]:
        from django.conf import settings
        from django.contrib.auth.models import Permission, User
        from django.core.management import call_command
        from rest_framework.test import APIClient

        from compute.guest.builder import build_guest_image
        from compute.models import CpuMode, Flavor, Image, IoModel
        from compute.services.images import image_register
        from tenants.models import Membership, Quota, Role, Tenant

        engine = settings.DATABASES["default"]["ENGINE"]
        self.log(f"data dir {self.env.data_dir}, database {engine}, lab {self.lab.directory}")
        if "sqlite" in engine:
            raise BenchError(
                "needs PostgreSQL: three agents and this process write at once, which SQLite answers "
                "with 'database is locked'. Set DATABASE_URL=postgres://..."
            )
        call_command("migrate", verbosity=0, interactive=False)
        built = build_guest_image(self.env.image_dir, log=lambda line: self.log(f"image: {line}"))
        image = image_register(built)
        tag = self.env.tag
        n = 2 + self.args.evacuate
        tenant = Tenant.objects.create(name=f"Bench {tag}", slug=f"bench-{tag}")
        Quota.objects.for_tenant(tenant).update(
            max_instances=n, max_vcpus=n, max_ram_mib=n * 256, max_disk_gib=n
        )
        user = User.objects.create_user(f"bench-{tag}", password=None)
        Membership.objects.create(tenant=tenant, user=user, role=Role.MEMBER)
        staff = User.objects.create_user(f"bench-ops-{tag}", password=None, is_staff=True)
        staff.user_permissions.add(
            Permission.objects.get(content_type__app_label="compute", codename="change_host")
        )
        staff = User.objects.get(pk=staff.pk)  # a fresh object: no permission cache from before the grant
        flavor = Flavor.objects.create(
            name=f"mbench.{tag}",
            vcpus=1,
            ram_mib=256,
            disk_gib=1,
            cpu_mode=CpuMode.EMULATED,
            io_model=IoModel.VIRTIO,
            public=False,
            tenant=tenant,
        )
        # The test image's shell on TCP 2323 (as tests/compute/test_tenant_networks.py shell_image).
        shell = Image.objects.create(
            name=f"bench-shell-{tag}",
            kind=image.kind,
            os_name=image.os_name,
            kernel_path=image.kernel_path,
            initrd_path=image.initrd_path,
            disk_path=image.disk_path,
            cmdline=f"{image.cmdline} nubis.shell={SHELL_PORT}",
            sha256=image.sha256,
            size_bytes=image.size_bytes,
            public=False,
            tenant=tenant,
        )
        hostname = next((h for h in settings.ALLOWED_HOSTS if h not in ("*",) and h[0] != "."), "localhost")
        self.member = APIClient(SERVER_NAME=hostname)
        self.member.force_authenticate(user)
        self.staff = APIClient(SERVER_NAME=hostname)
        self.staff.force_authenticate(staff)
        self.tenant = tenant
        self.staff_user = staff
        return flavor, image, shell

    def check_alone(self) -> None:
        """Placement (an evacuation's target) could choose another live agent's host on this database."""
        from django.utils import timezone

        from compute.models import Host, HostState

        now = timezone.now()
        live = Host.objects.filter(state=HostState.ENABLED, simulated=False)
        others = [h.name for h in live if h.heartbeat_fresh(now)]
        if others:
            raise BenchError(
                f"other live agents use this database ({', '.join(others)}); placement could send this "
                "run's instances there. Stop them, wait for their heartbeat to go stale, or use another "
                "database."
            )

    def lab_up(self) -> dict[str, Host]:
        from compute.models import Host

        started = time.monotonic()
        self.lab.up()
        names = [h.name for h in self.lab.hosts]
        deadline = time.monotonic() + 120
        while True:
            rows = {h.name: h for h in Host.objects.filter(name__in=names)}
            if len(rows) == len(names) and all(h.heartbeat_fresh() for h in rows.values()):
                break
            if time.monotonic() > deadline:
                raise BenchError(f"lab hosts not registered: {sorted(set(names) - set(rows))}")
            time.sleep(0.2)
        for h in self.lab.hosts:
            self.conns[h.name] = libvirt.open(h.local_uri)
        self.log(
            f"lab up: {', '.join(f'{h.name} {h.address}' for h in self.lab.hosts)} on "
            f"{self.lab.spec.bridge} [{time.monotonic() - started:.1f} s]"
        )
        return rows

    # -- placement pinned to one host -----------------------------------------------------------------
    @contextlib.contextmanager
    def only_on(self, name: str) -> Iterator[None]:
        """Placement sees only lab host ``name`` meanwhile: the other lab hosts are disabled."""
        from compute.models import Host, HostState

        others = Host.objects.filter(
            name__in=[h.name for h in self.lab.hosts], state=HostState.ENABLED
        ).exclude(name=name)
        pks = set(others.values_list("pk", flat=True))
        Host.objects.filter(pk__in=pks).update(state=HostState.DISABLED)
        self.disabled |= pks
        try:
            yield
        finally:
            Host.objects.filter(pk__in=pks, state=HostState.DISABLED).update(state=HostState.ENABLED)
            self.disabled -= pks

    # -- portal VMs ----------------------------------------------------------------------------------
    def portal_create(self, name: str, flavor: Flavor, image: Image, on: str) -> Instance:
        from compute.models import Instance

        assert self.member is not None
        assert self.tenant is not None
        url = f"/api/v1/tenants/{self.tenant.slug}/instances/"
        with self.only_on(on):  # placement happens in the request
            response = self.member.post(
                url,
                {"name": name, "flavor": flavor.name, "image": image.name, "network": None},
                format="json",
            )
        if response.status_code != 202:
            raise BenchError(f"POST {url} answered {response.status_code}: {response.content[:500]!r}")
        uid = str(response.json()["instance_id"])
        self.portal_uuids.append(uid)
        instance = Instance.objects.unscoped().select_related("host").get(uuid=uid)
        if instance.host is None or instance.host.name != on:
            raise BenchError(f"{name} was placed on {instance.host}, not on {on} ({instance.fault})")
        return instance

    def wait_operation(self, op_uuid: str, what: str, timeout: float | None = None) -> Any:
        from compute.models import Operation, OperationState

        ops = Operation.objects.unscoped().filter(uuid=op_uuid)
        done = (OperationState.SUCCEEDED, OperationState.FAILED)
        deadline = time.monotonic() + (timeout or self.args.timeout)
        while ops.values_list("state", flat=True).get() not in done:
            if time.monotonic() > deadline:
                raise BenchError(f"timed out waiting for {what}")
            time.sleep(POLL_SECONDS)
        op = ops.get()
        if op.state != OperationState.SUCCEEDED:
            raise BenchError(f"{what} failed: {op.error}")
        return op

    def wait_created(self, uid: str, name: str) -> None:
        from compute.models import Operation

        op = Operation.objects.unscoped().filter(instance__uuid=uid, kind="create").get()
        self.wait_operation(str(op.uuid), f"the creation of {name}")

    def portal_delete(self, uids: list[str], timeout: float) -> list[str]:
        """Delete instances through the API and wait until they are gone; returns the problems."""
        from compute.models import Instance, InstanceState, Operation, OperationState

        assert self.member is not None
        assert self.tenant is not None
        problems = []
        asked = []
        for uid in uids:
            rows = Instance.objects.unscoped().filter(uuid=uid)
            if rows.values_list("state", flat=True).get() == InstanceState.DELETED:
                continue
            busy = Operation.objects.unscoped().filter(
                instance__uuid=uid, state__in=[OperationState.PENDING, OperationState.RUNNING]
            )
            deadline = time.monotonic() + 60
            while busy.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            response = self.member.delete(f"/api/v1/tenants/{self.tenant.slug}/instances/{uid}/")
            if response.status_code != 202:
                problems.append(f"DELETE {uid}: {response.status_code} {response.content[:200]!r}")
                continue
            asked.append(uid)
        deadline = time.monotonic() + timeout
        gone = (InstanceState.DELETED, InstanceState.ERROR)
        for uid in asked:
            rows = Instance.objects.unscoped().filter(uuid=uid)
            while rows.values_list("state", flat=True).get() not in gone and time.monotonic() < deadline:
                time.sleep(0.1)
            state = rows.values_list("state", flat=True).get()
            if state != InstanceState.DELETED:
                problems.append(f"instance {uid} is {state} after its deletion")
        return problems

    def portal_move(self, guest: Guest, target: str, load: str, rnd: int) -> Move:
        from compute.models import Operation, OperationState

        assert self.staff is not None
        assert self.tenant is not None
        url = f"/api/v1/tenants/{self.tenant.slug}/instances/{guest.uuid}/migrate/"
        source = guest.on
        t0_epoch = time.time()
        t0 = time.perf_counter()
        response = self.staff.post(url, {"host": target}, format="json")
        post_s = time.perf_counter() - t0
        if response.status_code != 202:
            raise BenchError(f"POST {url} answered {response.status_code}: {response.content[:500]!r}")
        ops = Operation.objects.unscoped().filter(uuid=response.json()["id"])
        done = (OperationState.SUCCEEDED, OperationState.FAILED)
        deadline = t0 + self.args.timeout
        steps: dict[str, float] = {}
        while True:
            state, step = ops.values_list("state", "step").get()
            if step and step not in steps:
                steps[step] = time.perf_counter() - t0
            if state in done:
                break
            if time.perf_counter() > deadline:
                raise BenchError(f"the move of {guest.name} to {target} took over {self.args.timeout:.0f} s")
            time.sleep(POLL_SECONDS)
        total_s = time.perf_counter() - t0
        op = ops.get()
        if op.state != OperationState.SUCCEEDED:
            raise BenchError(f"the move of {guest.name} to {target} failed: {op.error}")
        guest.on = target
        result = op.result
        return Move(
            path="portal",
            load=load,
            round=rnd,
            source=source,
            target=target,
            total_s=total_s,
            hv_total_ms=int(result.get("total_ms", 0)),
            downtime_ms=int(result.get("downtime_ms", 0)),
            setup_ms=int(result.get("setup_ms", 0)),
            data_bytes=int(result.get("data_bytes", 0)),
            memory_bytes=int(result.get("memory_bytes", 0)),
            iterations=int(result.get("iterations", 0)),
            dirty_rate=int(result.get("dirty_rate", 0)),
            post_s=post_s,
            claimed_s=op.started.timestamp() - t0_epoch if op.started else None,
            finished_s=op.finished.timestamp() - t0_epoch if op.finished else None,
            agent_ms=int(result.get("agent_ms", 0)),
            steps_s=steps,
        )

    # -- the raw VM ----------------------------------------------------------------------------------
    def raw_create(self, portal: Instance, on: str) -> Guest:
        from compute.services.guests import guest_spec

        vm_uuid = str(uuid.uuid4())
        name = f"{RAW_PREFIX}{vm_uuid[:8]}"
        workdir = self.env.raw_dir / vm_uuid
        workdir.mkdir(mode=0o755)
        template = guest_spec(portal)
        spec = dataclasses.replace(
            template,
            name=name,
            uuid=vm_uuid,
            disk_path=str(workdir / "disk.qcow2"),
            serial_log=str(workdir / "serial.log"),
            vnc_password=secrets.token_hex(4),
        )
        make_overlay(portal.image.disk_path, Path(spec.disk_path), portal.disk_gib)
        self.raw_guests[name] = on
        dom = self.conns[on].defineXML(domain_xml_of(spec))
        dom.create()
        return Guest(name=name, path="raw", on=on, serial=Path(spec.serial_log))

    def raw_move(self, guest: Guest, target: str, load: str, rnd: int) -> Move:
        from django.conf import settings

        source = guest.on
        dom = self.conns[source].lookupByName(guest.name)
        dom.migrateSetMaxDowntime(settings.NUBIS_MIGRATION_DOWNTIME_MS, 0)
        cmd = ["virsh", "-q", "-c", self.lab.host(source).local_uri, "migrate", *RAW_FLAGS]
        cmd += [guest.name, self.lab.host(target).peer_uri]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            t0 = time.perf_counter()
            status = wait_exactly(cmd, out, err, self.args.timeout)
            total_s = time.perf_counter() - t0
            err.seek(0)
            message = err.read().decode(errors="replace").strip()
        if status != 0:
            raise BenchError(f"virsh migrate {guest.name} {source} -> {target}: exit {status}: {message}")
        guest.on = target
        self.raw_guests[guest.name] = target
        fields = stats_fields(self.conns[target].lookupByName(guest.name).jobStats(JOB_DONE))
        return Move(
            path="raw",
            load=load,
            round=rnd,
            source=source,
            target=target,
            total_s=total_s,
            hv_total_ms=fields["hv_total_ms"],
            downtime_ms=fields["downtime_ms"],
            setup_ms=fields["setup_ms"],
            data_bytes=fields["data_bytes"],
            memory_bytes=fields["memory_bytes"],
            iterations=fields["iterations"],
            dirty_rate=fields["dirty_rate"],
        )

    # -- inside the guests ---------------------------------------------------------------------------
    def wait_ready(self, guest: Guest, timeout: float, *, address: bool = True, after: int = 0) -> str:
        """The guest's address from its ready marker (its DHCP lease on the host's NAT network),
        once more than ``after`` markers are on its console; with ``address``, none is an error."""
        deadline = time.monotonic() + timeout
        while True:
            text = guest.serial.read_text(errors="replace") if guest.serial.exists() else ""
            found = _READY.findall(text)
            if len(found) > after and found[-1] == "none" and address:
                raise BenchError(
                    f"{guest.name} got no address on {guest.on}'s NAT network (its DHCP failed), "
                    f"and the dirty load needs its shell: {text[-300:]}"
                )
            if len(found) > after:
                return str(found[-1])
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{guest.name} printed no ready marker within {timeout:.0f} s: {text[-500:]}"
                )
            time.sleep(0.2)

    def shell(self, guest: Guest, script: str, patience: float = 10.0) -> str:
        """Run ``script`` in the guest's test shell, from the network namespace of its host; a
        connection that fails (the guest may need a moment after a move) is tried again for up to
        ``patience`` seconds."""
        cmd = ["ip", "netns", "exec", guest.on, "busybox", "nc", "-w", "5", guest.ip, str(SHELL_PORT)]
        deadline = time.monotonic() + patience
        while True:
            try:
                done = subprocess.run(
                    cmd, input=script + "\n", capture_output=True, text=True, timeout=20, check=False
                )
                out = done.stdout + done.stderr
            except subprocess.TimeoutExpired:
                out = "nc: no answer within 20 s"
            if "nc:" not in out or time.monotonic() > deadline:
                return out
            time.sleep(0.5)

    def crash_text(self, guest: Guest) -> str:
        """The first line of a kernel failure on the guest's console since its mark, or ""."""
        data = guest.serial.read_bytes()[guest.serial_mark :] if guest.serial.exists() else b""
        for line in data.decode(errors="replace").splitlines():
            if _CRASH.search(line):
                return line.strip()[:200]
        return ""

    def crashed(self, sample: Move | None, how: str) -> None:
        if sample is not None and not sample.guest_crashed:
            sample.guest_crashed, sample.crash = True, how
            self.log(
                f"      {sample.path} guest failed after its move {sample.source}->{sample.target}: {how}"
            )

    def recover(self, guest: Guest) -> None:
        """Reset a guest whose kernel failed, and wait until it booted again: the portal's through
        the API (its reboot is a hard reset), the raw one through libvirt."""
        assert self.member is not None
        assert self.tenant is not None
        started = time.monotonic()
        text = guest.serial.read_text(errors="replace") if guest.serial.exists() else ""
        before = len(_READY.findall(text))
        if guest.path == "portal":
            url = f"/api/v1/tenants/{self.tenant.slug}/instances/{guest.uuid}/reboot/"
            response = self.member.post(url, {}, format="json")
            if response.status_code != 202:
                raise BenchError(f"POST {url} answered {response.status_code}: {response.content[:300]!r}")
            self.wait_operation(str(response.json()["id"]), f"the reboot of {guest.name}")
        else:
            self.conns[guest.on].lookupByName(guest.name).reset(0)
        guest.ip = self.wait_ready(guest, self.args.timeout, after=before)
        guest.serial_mark = guest.serial.stat().st_size
        self.recoveries.append(
            {"guest": guest.path, "on": guest.on, "s": round(time.monotonic() - started, 1)}
        )
        took = time.monotonic() - started
        self.log(f"      {guest.path} guest reset on {guest.on}: up again at {guest.ip} [{took:.1f} s]")
        time.sleep(1.0)

    def dirty_start(self, guest: Guest) -> None:
        """Start the guest's memory-dirtying loop; a guest found failed first is reset."""
        for attempt in range(2):
            late = self.crash_text(guest)
            if late:
                self.crashed(guest.last, f"{late} (seen before its next move)")
                self.recover(guest)
            out = self.shell(guest, DIRTY_START)
            if "DIRTY-ON" in out:
                return
            if attempt == 0:
                self.crashed(
                    guest.last, f"its shell did not answer before its next move: {out.strip()[:100]}"
                )
                self.recover(guest)
        raise BenchError(f"the dirtying loop did not start in {guest.name}: {out!r}")

    def dirty_stop(self, guest: Guest, sample: Move) -> None:
        """Stop the loop after the move; a guest that fails to answer, or printed a kernel failure
        since the move began, is recorded as failed and reset."""
        out = self.shell(guest, DIRTY_STOP)
        line = self.crash_text(guest)
        if "DIRTY-OFF" not in out or line:
            self.crashed(sample, line or f"its shell did not answer: {out.strip()[:100]}")
            self.recover(guest)
            return
        sample.load_seen = "DIRTY-WAS-ON" in out

    # -- the series ----------------------------------------------------------------------------------
    def move(self, guest: Guest, load: str, rnd: int, pair: tuple[str, str]) -> Move:
        target = pair[1] if guest.on == pair[0] else pair[0]
        if load == "dirty":
            self.dirty_start(guest)
            time.sleep(DIRTY_WARM_SECONDS)
        guest.serial_mark = guest.serial.stat().st_size
        if guest.path == "portal":
            sample = self.portal_move(guest, target, load, rnd)
        else:
            sample = self.raw_move(guest, target, load, rnd)
        guest.last = sample
        if load == "dirty":
            self.dirty_stop(guest, sample)
        else:
            time.sleep(SETTLE_SECONDS)
            line = self.crash_text(guest)
            if line:
                self.crashed(sample, line)
                self.recover(guest)
        time.sleep(SETTLE_SECONDS)
        return sample

    def series(self, portal: Guest, raw: Guest, pair: tuple[str, str]) -> dict[str, list[Move]]:
        moves: dict[str, list[Move]] = {"portal": [], "raw": []}
        for guest in (portal, raw):
            w = self.move(guest, "idle", 0, pair)
            self.log(
                f"warm-up {guest.path:<6} {w.source}->{w.target}: {w.total_s:.3f} s, downtime "
                f"{w.downtime_ms} ms (not counted)"
            )
        for load in ("idle", "dirty"):
            for i in range(self.args.count):
                order = (portal, raw) if i % 2 == 0 else (raw, portal)
                for guest in order:
                    m = self.move(guest, load, i + 1, pair)
                    moves[guest.path].append(m)
                    extra = (
                        f", agent {m.agent_ms} ms, claimed at {(m.claimed_s or 0) * 1000:.0f} ms"
                        if m.path == "portal"
                        else ""
                    )
                    self.log(
                        f"{load:<5} {i + 1:>2}/{self.args.count} {m.path:<6} {m.source}->{m.target}: "
                        f"{m.total_s:.3f} s, downtime {m.downtime_ms} ms, hypervisor {m.hv_total_ms} ms, "
                        f"{m.iterations} passes, {m.data_bytes / 2**20:.0f} MiB{extra}"
                        + (" (guest failed after it)" if m.guest_crashed else "")
                    )
        for guest in (portal, raw):  # a failure that surfaced after the last check
            late = self.crash_text(guest)
            if late:
                self.crashed(guest.last, f"{late} (seen at the end)")
        return moves

    # -- evacuation ----------------------------------------------------------------------------------
    def evacuation(self, flavor: Flavor, image: Image, host_name: str) -> dict[str, Any]:
        from django.conf import settings

        from compute.models import Host, HostState, Instance, Operation, OperationKind
        from compute.services.evacuation import evacuate_all
        from compute.services.hosts import host_maintenance_set
        from security.audit import Actor

        n = self.args.evacuate
        made = [self.portal_create(f"evac-{i + 1}", flavor, image, host_name) for i in range(n)]
        started = time.monotonic()
        for inst in made:
            self.wait_created(str(inst.uuid), inst.name)
        for inst in made:
            guest = Guest(
                inst.name, "portal", host_name, self.env.instance_dir / str(inst.uuid) / "serial.log"
            )
            self.wait_ready(guest, self.args.timeout, address=False)
        self.log(
            f"evacuation: {n} VMs running and booted on {host_name} [{time.monotonic() - started:.1f} s]"
        )
        time.sleep(2.0)  # let the boots' tails settle

        assert self.staff_user is not None
        actor = Actor(self.staff_user.username, "api", self.staff_user.pk)
        host = Host.objects.get(name=host_name)
        ops = Operation.objects.unscoped().filter(instance__in=made, kind=OperationKind.MIGRATE)
        t0_epoch = time.time()
        t0 = time.perf_counter()
        self.in_maintenance = host_maintenance_set(actor=actor, host=host, on=True)
        passes = 0
        ended = -1
        last_pass = 0.0
        deadline = t0 + self.args.timeout + 60 * n
        while True:
            now_ended = ops.filter(finished__isnull=False).count()
            if now_ended != ended or time.perf_counter() - last_pass >= PASS_SECONDS:
                evacuate_all()
                passes += 1
                ended, last_pass = now_ended, time.perf_counter()
            if Host.objects.filter(pk=host.pk).values_list("state", flat=True).get() == HostState.MAINTENANCE:
                break
            if time.perf_counter() > deadline:
                status = Host.objects.get(pk=host.pk).evacuation
                raise BenchError(f"{host_name} did not empty within {deadline - t0:.0f} s: {status}")
            time.sleep(POLL_SECONDS * 2.5)
        empty_s = time.perf_counter() - t0
        host_maintenance_set(actor=actor, host=host, on=False)
        self.in_maintenance = None

        records = []
        for op in ops.select_related("instance").order_by("created"):
            if op.state != "succeeded":
                raise BenchError(f"the evacuation's move of {op.instance.name} ended {op.state}: {op.error}")
            r = op.result
            records.append(
                {
                    "name": op.instance.name,
                    "target": op.params.get("target"),
                    "requested_s": op.created.timestamp() - t0_epoch,
                    "claimed_s": op.started.timestamp() - t0_epoch if op.started else None,
                    "finished_s": op.finished.timestamp() - t0_epoch if op.finished else None,
                    "total_s": (op.finished - op.created).total_seconds() if op.finished else None,
                    "hv_total_ms": int(r.get("total_ms", 0)),
                    "downtime_ms": int(r.get("downtime_ms", 0)),
                    "agent_ms": int(r.get("agent_ms", 0)),
                    "data_bytes": int(r.get("data_bytes", 0)),
                }
            )
        left = Instance.objects.unscoped().filter(host__name=host_name).exclude(state="deleted").count()
        where = {r["target"]: sum(1 for x in records if x["target"] == r["target"]) for r in records}
        self.log(
            f"evacuation: {host_name} empty in {empty_s:.2f} s ({len(records)} moves, {passes} passes, "
            f"to {where}, {left} left)"
        )
        problems = self.portal_delete([str(i.uuid) for i in made], timeout=90)
        if problems:
            raise BenchError("; ".join(problems))
        return {
            "host": host_name,
            "instances": n,
            "kind": "vm",
            "parallel": settings.NUBIS_EVACUATE_PARALLEL,
            "pass_seconds": PASS_SECONDS,
            "passes": passes,
            "time_to_empty_s": empty_s,
            "targets": where,
            "moves": {
                "total_s": describe([r["total_s"] or 0.0 for r in records]),
                "hv_total_ms": describe([r["hv_total_ms"] for r in records]),
                "downtime_ms": describe([r["downtime_ms"] for r in records]),
                "agent_ms": describe([r["agent_ms"] for r in records]),
            },
            "samples": records,
        }

    # -- the whole run -------------------------------------------------------------------------------
    def run(self) -> None:
        import django

        django.setup()
        self.django_ready = True
        from django.conf import settings

        load_start = os.getloadavg()
        began = time.monotonic()
        flavor, image, shell = self.setup()
        self.check_alone()
        rows = self.lab_up()
        h1, h2, _h3 = (h.name for h in self.lab.hosts)

        vm = self.portal_create("mover", flavor, shell, h1)
        portal = Guest(
            vm.name, "portal", h1, self.env.instance_dir / str(vm.uuid) / "serial.log", str(vm.uuid)
        )
        self.wait_created(portal.uuid, vm.name)
        vm.refresh_from_db()
        # One boot after the other: two tiny guests whose DHCP runs at the same moment on one host
        # can leave the first without an address (seen with two raw domains too, no portal).
        portal.ip = self.wait_ready(portal, self.args.timeout)
        raw = self.raw_create(vm, h1)
        raw.ip = self.wait_ready(raw, self.args.timeout)
        xml = self.conns[raw.on].lookupByName(raw.name).XMLDesc(0)
        domain_type = ET.fromstring(xml).get("type")  # noqa: S314 (our own XML)
        self.log(f"two VMs on {h1}: portal {vm.name} at {portal.ip}, raw {raw.name} at {raw.ip}")
        time.sleep(2.0)

        moves = self.series(portal, raw, (h1, h2))
        summary: dict[str, Any] = {}
        for load in ("idle", "dirty"):
            summary[load] = compare(
                [m for m in moves["portal"] if m.load == load], [m for m in moves["raw"] if m.load == load]
            )
        # The two VMs go before the evacuation's six arrive.
        undefine(self.conns[raw.on].lookupByName(raw.name))
        del self.raw_guests[raw.name]
        problems = self.portal_delete([portal.uuid], timeout=60)
        if problems:
            raise BenchError("; ".join(problems))

        evacuation: dict[str, Any] | None = None
        if self.args.evacuate:
            evacuation = self.evacuation(flavor, image, h1)
            raw_waves = (
                math.ceil(evacuation["instances"] / evacuation["parallel"])
                * (summary["idle"]["raw"]["total_s"]["p50"])
            )
            hv_bound = sum(r["hv_total_ms"] for r in evacuation["samples"]) / 1000 / evacuation["parallel"]
            evacuation["baseline"] = {
                "raw_waves_s": raw_waves,
                "ratio_to_raw_waves": evacuation["time_to_empty_s"] / raw_waves,
                "hv_bound_s": hv_bound,
            }

        host = rows[h1]
        host.refresh_from_db()
        machine = machine_facts(host, domain_type, load_start)
        result: dict[str, Any] = {
            "benchmark": "migration",
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "duration_s": round(time.monotonic() - began, 1),
            "count": self.args.count,
            "poll_seconds": POLL_SECONDS,
            "goal": {"total_added_s": GOAL_TOTAL_S, "downtime_added": "none"},
            "lab": {"hosts": LAB_HOSTS, "moves_between": [h1, h2], "subnet": self.lab.spec.subnet},
            "flavor": {
                field: getattr(flavor, field)
                for field in ("vcpus", "ram_mib", "disk_gib", "cpu_mode", "io_model")
            },
            "image": {"name": shell.name, "cmdline": shell.cmdline, "sha256": shell.sha256},
            "network": "libvirt's default NAT network on each host (a VM without a tenant network)",
            "raw_command": f"virsh -c <source> migrate {' '.join(RAW_FLAGS)} NAME qemu+tcp://<target>/system",
            "max_downtime_ms": settings.NUBIS_MIGRATION_DOWNTIME_MS,
            "dirty_load": f"dd if=/dev/urandom of=/tmp/dirty bs=1M count={DIRTY_MIB} in a loop, "
            f"started {DIRTY_WARM_SECONDS:g} s before the move in the moving guest only",
            "machine": machine,
            "summary": summary,
            "guest_resets": self.recoveries,
            "evacuation": evacuation,
            "samples": {path: [dataclasses.asdict(m) for m in ms] for path, ms in moves.items()},
        }
        output: Path = self.args.output
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2) + "\n")
        self.log("")
        self.log(table(result))
        self.log(f"\nsamples and summary: {output} ({result['duration_s']} s)")

    # -- cleanup -------------------------------------------------------------------------------------
    def agent_output(self) -> str | None:
        return self.lab.agent_logs() if self.lab.started else None

    def cleanup(self) -> list[str]:
        """Remove what this run made, also after a failure; returns what could not be removed."""
        problems: list[str] = []
        if self.django_ready:
            self.forget_in_database(problems)
        for name, on in list(self.raw_guests.items()):
            conn = self.conns.get(on)
            if conn is None:
                continue
            with contextlib.suppress(libvirt.libvirtError):  # the lab going down takes it anyway
                undefine(conn.lookupByName(name))
        for conn in self.conns.values():
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
        if self.lab.started:
            try:
                problem = self.lab.down()
                if problem:
                    problems.append(problem)
            except subprocess.TimeoutExpired:
                problems.append("lab down timed out")
            if self.django_ready:
                # Their agents are gone: say so now (a heartbeat until the very end would have
                # brought a row marked down earlier back), so a run right after this one starts.
                from compute.models import Host, HostState

                names = [h.name for h in self.lab.hosts]
                try:
                    Host.objects.filter(name__in=names).update(state=HostState.DOWN)
                except Exception as exc:
                    problems.append(f"marking the lab's hosts down: {exc}")
        for path in [self.env.instance_dir / u for u in self.portal_uuids] + [
            self.env.raw_dir,
            self.lab.directory,
        ]:
            shutil.rmtree(path, ignore_errors=True)
            if path.exists():
                problems.append(f"could not remove {path}")
        self.forget_in_redis(problems)
        if self.django_ready:
            from django.db import connections

            connections.close_all()
        return problems

    def forget_in_database(self, problems: list[str]) -> None:
        """Leave maintenance, re-enable pinned hosts, delete live instances (while the agents run)."""
        from compute.models import Host, HostState, Instance

        try:
            Host.objects.filter(pk__in=self.disabled, state=HostState.DISABLED).update(
                state=HostState.ENABLED
            )
            if self.in_maintenance is not None:
                Host.objects.filter(pk=self.in_maintenance.pk).update(state=HostState.ENABLED)
            live = list(
                Instance.objects.unscoped()
                .filter(uuid__in=self.portal_uuids)
                .exclude(state="deleted")
                .values_list("uuid", flat=True)
            )
            if live and self.lab.started and self.member is not None:
                problems += self.portal_delete([str(u) for u in live], timeout=60)
        except Exception as exc:
            problems.append(f"deleting this run's instances: {type(exc).__name__}: {exc}")

    def forget_in_redis(self, problems: list[str]) -> None:
        """Drop the lab agents' keys (queue bindings, notes: all carry the lab's host prefix) and
        the evacuation kicks this run left on the control queue, which no worker here consumes
        (sent by this process or by a lab agent, as their ``origin`` says)."""
        import redis

        from core.queues import CONTROL_QUEUE

        origins = {f"gen{os.getpid()}@{socket.gethostname()}"}
        try:
            client = redis.Redis.from_url(os.environ["REDIS_URL"])
            keys = list(client.scan_iter(match=f"*{self.lab.spec.prefix}*", count=1000))
            if keys:
                client.delete(*keys)
            for raw in cast("list[bytes]", client.lrange(CONTROL_QUEUE, 0, -1)):
                try:
                    message = raw.decode()
                    headers = json.loads(message)["headers"]
                except (ValueError, KeyError, TypeError):
                    continue
                origin = str(headers.get("origin", ""))
                ours = origin in origins or origin.split("@")[-1].startswith(self.lab.spec.prefix)
                if headers.get("task") == "compute.evacuate" and ours:
                    client.lrem(CONTROL_QUEUE, 1, message)
        except redis.RedisError as exc:
            problems.append(f"redis: {exc}")


# -- entry point -------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=10, help="moves per path, idle and again dirty (10)")
    parser.add_argument("--evacuate", type=int, default=6, help="VMs on the host to evacuate (6; 0: skip)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds allowed per wait (180)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    args = parser.parse_args(argv)
    if args.count < 1 or args.evacuate < 0:
        parser.error("--count must be at least 1 and --evacuate at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main("migration", lambda env: MigrationBench(env, args))


if __name__ == "__main__":
    sys.exit(main())
